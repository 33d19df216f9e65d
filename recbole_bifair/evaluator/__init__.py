"""Item-group fairness metrics for RecBole: item groups from the training split, a collector that
gathers per-row group data, the metrics (see ``metrics.py`` for the formulas), and the
prior-fairness report of the LLM item tables (``prior.py``)."""
from recbole_bifair.evaluator.collector import FairnessCollector
from recbole_bifair.evaluator.groups import ItemGroups, build_item_groups, item_group_config
from recbole_bifair.evaluator.metrics import FAIRNESS_METRICS
from recbole_bifair.evaluator.prior import CosineRecommender, format_prior_fairness, prior_fairness
from recbole_bifair.evaluator.register import register_fairness_metrics

__all__ = [
    "FAIRNESS_METRICS", "CosineRecommender", "FairnessCollector", "ItemGroups", "build_item_groups",
    "format_prior_fairness", "item_group_config", "prior_fairness", "register_fairness_metrics",
]
