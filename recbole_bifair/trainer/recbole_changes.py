"""Everything the plugin changes in RecBole, applied together and once: ``compat``'s fixes of
RecBole 1.2.1, then the plugin's two features in RecBole's trainers, each kept with the module
that owns it: the fairness collector (``evaluator.collector.use_in_recbole_trainers``) and
trade-off ``valid_metric`` expressions (``trainer.valid_score.allow_in_recbole_trainers``).

The plugin's ``Config``, trainers and ``load_data_and_model`` call :func:`apply`; a script that
uses RecBole's own ``Config``, trainers or quick start with the plugin's metrics calls it
first."""
from recbole_bifair import compat
from recbole_bifair.evaluator.collector import use_in_recbole_trainers
from recbole_bifair.trainer.valid_score import allow_in_recbole_trainers

_applied = False


def apply():
    """``compat.apply()`` and the plugin's features in RecBole's trainers (idempotent)."""
    global _applied
    compat.apply()
    if _applied:
        return
    use_in_recbole_trainers()
    allow_in_recbole_trainers()
    _applied = True
