"""recbole-bifair: BiFair (fairness-aware bi-level training of LLM-enhanced recommenders)
as RecBole components. Importing the package applies the RecBole compatibility fixes and
registers the item-group fairness metrics with RecBole's evaluator."""
from recbole_bifair import compat
from recbole_bifair.evaluator import register_fairness_metrics

compat.apply_all()
register_fairness_metrics()

__version__ = "0.1.0"
