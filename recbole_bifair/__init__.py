"""recbole-bifair: BiFair (fairness-aware bi-level training of LLM-enhanced recommenders)
as RecBole components. Importing the package applies the RecBole compatibility fixes and
registers the item-group fairness metrics with RecBole's evaluator, and lets
``valid_metric`` be a trade-off of metrics for every RecBole trainer."""
from recbole_bifair import compat
from recbole_bifair.evaluator import register_fairness_metrics
from recbole_bifair.trainer.valid_score import install_valid_score

compat.apply_all()
register_fairness_metrics()
install_valid_score()

__version__ = "0.2.0"
