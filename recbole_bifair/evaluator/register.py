"""Registers the fairness metrics with RecBole 1.2.1, which has no plugin hook for metrics.

RecBole keeps its metric registry in module-level objects of ``recbole.evaluator.register``
(``metrics_dict``, ``metric_information``, ``metric_types``, ``smaller_metrics``), read by
``Register`` and ``Evaluator`` and imported by name into ``recbole.evaluator`` and
``recbole.config.configurator`` (metric validation, ``valid_metric_bigger``). All of these names
point at the same dict / list objects, so the metrics are inserted in place. This only adds
names; the collector that computes what they need is installed by ``trainer.recbole_changes.apply``.
"""
import recbole.evaluator.register as recbole_register

from recbole_bifair.evaluator.metrics import FAIRNESS_METRICS


def metric_is_smaller_better(metric):
    """Whether a smaller value of ``metric`` (``name@k``, any case) is better, by RecBole's
    registry, which holds the fairness metrics once ``recbole_bifair`` is imported."""
    return metric.split("@")[0].lower() in recbole_register.smaller_metrics


def register_fairness_metrics():
    """Make the fairness metrics' names known to RecBole (idempotent; importing
    ``recbole_bifair`` calls it)."""
    for metric_cls in FAIRNESS_METRICS:
        name = metric_cls.__name__.lower()
        recbole_register.metrics_dict[name] = metric_cls
        recbole_register.metric_information[name] = metric_cls.metric_need
        recbole_register.metric_types[name] = metric_cls.metric_type
        if metric_cls.smaller and name not in recbole_register.smaller_metrics:
            recbole_register.smaller_metrics.append(name)
