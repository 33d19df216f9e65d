"""Item-group fairness metrics for RecBole: item groups from the training split, a collector that
gathers per-row group data, and the metrics (see ``metrics.py`` for the formulas)."""
from recbole_bifair.evaluator.collector import FairnessCollector
from recbole_bifair.evaluator.groups import ItemGroups, build_item_groups, item_group_config
from recbole_bifair.evaluator.metrics import FAIRNESS_METRICS
from recbole_bifair.evaluator.register import register_fairness_metrics

__all__ = [
    "FAIRNESS_METRICS", "FairnessCollector", "ItemGroups", "build_item_groups",
    "item_group_config", "register_fairness_metrics",
]
