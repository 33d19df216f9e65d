"""recbole-bifair: BiFair (fairness-aware bi-level training of LLM-enhanced recommenders)
as RecBole components. Importing the package only registers the item-group fairness metrics'
names with RecBole's evaluator; every change to RecBole itself is applied by the plugin's
``Config`` (or by ``recbole_bifair.trainer.recbole_changes.apply()`` in a script that uses
RecBole's own ``Config``): ``recbole_bifair.compat``'s fixes and the plugin's collector and
trade-off ``valid_metric`` in RecBole's trainers."""
from recbole_bifair.evaluator import register_fairness_metrics

register_fairness_metrics()

__version__ = "0.2.0"
