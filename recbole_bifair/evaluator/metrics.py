r"""Item-group fairness metrics for RecBole's evaluator (ranking metrics, one value per ``topk``).

Notation: users (evaluated rows) :math:`u`, item groups :math:`g = 0..G-1`, :math:`P_{ug}` the
positives of :math:`u` in group :math:`g`, :math:`H_{ug}(K)` the hit ranks :math:`i \le K`
whose item is in :math:`g`, :math:`U_g = \{u : P_{ug} > 0\}`.

Per-group utility at K (mean over :math:`U_g`; NaN when :math:`U_g` is empty):

- NDCG: :math:`\sum_{i \in H_{ug}} 1/\log_2(i+1) \,/\, \sum_{i=1}^{\min(P_{ug}, K)} 1/\log_2(i+1)`
- Recall: :math:`|H_{ug}| / P_{ug}`
- Hit: :math:`[|H_{ug}| > 0]`

Disparities over the groups with positives (:math:`G'` of them, values :math:`v_g`):
gap :math:`\max v - \min v`, worst :math:`\min v`, CV :math:`\sigma(v)/\bar v` (population
std; 0 when :math:`\bar v = 0`), worst quarter :math:`\mathrm{mean}(\text{lowest}
\lceil G'/4 \rceil) / \bar v` (1 when :math:`\bar v = 0`). All are NaN when no group has positives.

Result keys are RecBole style: ``ndcggap@10``; per-group metrics add the group id:
``groupndcg@10_g0`` (group names and ids are logged when the groups are built).
"""
import math

import numpy as np
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType

GROUP_TOPK = "rec.group_topk"
GROUP_HITS = "rec.group_hits"
GROUP_POS = "rec.group_pos"
GROUP_TRAIN_SHARE = "data.group_train_share"


def group_utility(group_topk, group_hits, group_pos, k, utility) -> np.ndarray:
    """Utility per group at cut-off ``k``: mean over users with positives in the group (NaN if none).

    ``group_topk`` [n x maxK] group id per slot (-1: no group), ``group_hits`` [n x maxK] bool,
    ``group_pos`` [n x G] positives per group.
    """
    per_user = user_group_utility(group_topk, group_hits, group_pos, k, utility)
    has_positives = group_pos > 0
    users = has_positives.sum(axis=0)
    total = np.where(has_positives, per_user, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(users > 0, total / np.maximum(users, 1), np.nan)


def user_group_utility(group_topk, group_hits, group_pos, k, utility) -> np.ndarray:
    """[n x G] per-user utility inside each group (meaningful where ``group_pos > 0``)."""
    n, n_groups = group_pos.shape
    slot_groups = group_topk[:, :k]
    hit = group_hits[:, :k] & (slot_groups >= 0)
    rows, ranks = np.nonzero(hit)
    cell = rows * n_groups + slot_groups[rows, ranks]
    positives = np.maximum(group_pos, 1).astype(np.float64)
    if utility == "ndcg":
        dcg = _cells_sum(cell, 1.0 / np.log2(ranks + 2.0), n, n_groups)
        ideal = np.concatenate([[1.0], np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1.0))])
        return dcg / ideal[np.minimum(group_pos, k)]
    hits = _cells_sum(cell, np.ones(len(cell)), n, n_groups)
    if utility == "recall":
        return hits / positives
    if utility == "hit":
        return (hits > 0).astype(np.float64)
    raise ValueError(f"unknown utility {utility!r}")


def _cells_sum(cell, weights, n, n_groups):
    return np.bincount(cell, weights=weights, minlength=n * n_groups).reshape(n, n_groups)


def disparity(values: np.ndarray, aggregate: str) -> float:
    """``gap`` | ``worst`` | ``cv`` | ``worstquarter`` of the non-NaN entries of ``values``."""
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return float("nan")
    mean = v.mean()
    if aggregate == "gap":
        return float(v.max() - v.min())
    if aggregate == "worst":
        return float(v.min())
    if aggregate == "cv":
        return float(v.std() / mean) if mean > 0 else 0.0
    if aggregate == "worstquarter":
        worst = np.sort(v)[: max(1, math.ceil(len(v) / 4))]
        return float(worst.mean() / mean) if mean > 0 else 1.0
    raise ValueError(f"unknown aggregate {aggregate!r}")


def exposure_share(group_topk, k, n_groups) -> np.ndarray:
    """Share of the top-``k`` slots (slots with a group) that recommend items of each group."""
    slots = group_topk[:, :k]
    counts = np.bincount(slots[slots >= 0], minlength=n_groups).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


class _GroupTopkMetric(AbstractMetric):
    metric_type = EvaluatorType.RANKING
    metric_need = [GROUP_TOPK, GROUP_HITS, GROUP_POS]

    def __init__(self, config):
        super().__init__(config)
        self.topk = config["topk"]

    def _round(self, value):
        return round(float(value), self.decimal_place)

    def used_info(self, dataobject):
        return (dataobject.get(GROUP_TOPK).numpy(), dataobject.get(GROUP_HITS).numpy().astype(bool),
                dataobject.get(GROUP_POS).numpy())

    def utilities_at(self, dataobject):
        """{k: per-group utility [G]} for every k in ``topk``, computed once per evaluation for
        all the metrics of one utility: kept on ``dataobject``, the ``DataStruct`` RecBole
        copies afresh for each evaluation."""
        computed = dataobject.__dict__.setdefault("_group_utilities", {})
        key = (self.utility, tuple(self.topk))
        if key not in computed:
            group_topk, group_hits, group_pos = self.used_info(dataobject)
            computed[key] = {k: group_utility(group_topk, group_hits, group_pos, k, self.utility) for k in self.topk}
        return computed[key]


class _PerGroupMetric(_GroupTopkMetric):
    utility = None

    def calculate_metric(self, dataobject):
        name = type(self).__name__.lower()
        return {f"{name}@{k}_g{g}": self._round(v)
                for k, values in self.utilities_at(dataobject).items() for g, v in enumerate(values)}


class _DisparityMetric(_GroupTopkMetric):
    utility = None
    aggregate = None

    def calculate_metric(self, dataobject):
        name = type(self).__name__.lower()
        return {f"{name}@{k}": self._round(disparity(values, self.aggregate))
                for k, values in self.utilities_at(dataobject).items()}


class GroupNDCG(_PerGroupMetric):
    r"""Per-group NDCG@K, key ``groupndcg@K_g<id>``: mean over :math:`u \in U_g` of
    :math:`\mathrm{DCG}_{ug}(K) / \mathrm{IDCG}(\min(P_{ug}, K))`; NaN for a group without positives."""
    utility = "ndcg"


class GroupRecall(_PerGroupMetric):
    r"""Per-group Recall@K, key ``grouprecall@K_g<id>``: mean over :math:`u \in U_g` of
    :math:`|H_{ug}(K)| / P_{ug}`; NaN for a group without positives."""
    utility = "recall"


class GroupHit(_PerGroupMetric):
    r"""Per-group Hit@K, key ``grouphit@K_g<id>``: share of :math:`u \in U_g` with
    :math:`|H_{ug}(K)| > 0`; NaN for a group without positives."""
    utility = "hit"


class NDCGGap(_DisparityMetric):
    r""":math:`\max_g \mathrm{NDCG}_g@K - \min_g \mathrm{NDCG}_g@K` (smaller is better)."""
    utility, aggregate, smaller = "ndcg", "gap", True


class NDCGWorst(_DisparityMetric):
    r""":math:`\min_g \mathrm{NDCG}_g@K`, the worst group's NDCG (bigger is better)."""
    utility, aggregate = "ndcg", "worst"


class NDCGCV(_DisparityMetric):
    r""":math:`\sigma_g(\mathrm{NDCG}_g@K) / \mathrm{mean}_g(\mathrm{NDCG}_g@K)` (population std;
    smaller is better)."""
    utility, aggregate, smaller = "ndcg", "cv", True


class NDCGWorstQuarter(_DisparityMetric):
    r"""Mean NDCG@K of the :math:`\lceil G'/4 \rceil` worst groups / mean over all groups
    (bigger is better, 1 = equal)."""
    utility, aggregate = "ndcg", "worstquarter"


class RecallGap(_DisparityMetric):
    r""":math:`\max_g \mathrm{Recall}_g@K - \min_g \mathrm{Recall}_g@K` (smaller is better)."""
    utility, aggregate, smaller = "recall", "gap", True


class RecallWorst(_DisparityMetric):
    r""":math:`\min_g \mathrm{Recall}_g@K` (bigger is better)."""
    utility, aggregate = "recall", "worst"


class RecallCV(_DisparityMetric):
    r""":math:`\sigma_g(\mathrm{Recall}_g@K) / \mathrm{mean}_g(\mathrm{Recall}_g@K)` (smaller is better)."""
    utility, aggregate, smaller = "recall", "cv", True


class RecallWorstQuarter(_DisparityMetric):
    r"""Mean Recall@K of the :math:`\lceil G'/4 \rceil` worst groups / mean over all groups
    (bigger is better)."""
    utility, aggregate = "recall", "worstquarter"


class HitGap(_DisparityMetric):
    r""":math:`\max_g \mathrm{Hit}_g@K - \min_g \mathrm{Hit}_g@K` (smaller is better)."""
    utility, aggregate, smaller = "hit", "gap", True


class HitWorst(_DisparityMetric):
    r""":math:`\min_g \mathrm{Hit}_g@K` (bigger is better)."""
    utility, aggregate = "hit", "worst"


class HitCV(_DisparityMetric):
    r""":math:`\sigma_g(\mathrm{Hit}_g@K) / \mathrm{mean}_g(\mathrm{Hit}_g@K)` (smaller is better)."""
    utility, aggregate, smaller = "hit", "cv", True


class HitWorstQuarter(_DisparityMetric):
    r"""Mean Hit@K of the :math:`\lceil G'/4 \rceil` worst groups / mean over all groups
    (bigger is better)."""
    utility, aggregate = "hit", "worstquarter"


class _ExposureMetric(_GroupTopkMetric):
    metric_need = [GROUP_TOPK, GROUP_TRAIN_SHARE]

    def exposure_gaps_at(self, dataobject):
        r"""{k: :math:`d_g = E_g@K - T_g`} with :math:`E_g@K` the share of all top-K slots that
        recommend group g and :math:`T_g` its share of training interactions."""
        group_topk = dataobject.get(GROUP_TOPK).numpy()
        train_share = dataobject.get(GROUP_TRAIN_SHARE).numpy().astype(np.float64)
        return {k: exposure_share(group_topk, k, len(train_share)) - train_share for k in self.topk}


class GroupExposure(_ExposureMetric):
    r"""Per-group exposure, key ``groupexposure@K_g<id>``: :math:`E_g@K`, the share of all top-K
    slots that recommend items of group g (compare with the training share in the group log)."""

    def calculate_metric(self, dataobject):
        group_topk = dataobject.get(GROUP_TOPK).numpy()
        n_groups = len(dataobject.get(GROUP_TRAIN_SHARE))
        return {f"groupexposure@{k}_g{g}": self._round(v)
                for k in self.topk for g, v in enumerate(exposure_share(group_topk, k, n_groups))}


class ExposureDisparity(_ExposureMetric):
    r""":math:`\frac{1}{G}\sum_g |E_g@K - T_g|`, mean absolute gap between a group's share of
    top-K slots and its share of training interactions (smaller is better)."""
    smaller = True

    def calculate_metric(self, dataobject):
        return {f"exposuredisparity@{k}": self._round(np.abs(d).mean())
                for k, d in self.exposure_gaps_at(dataobject).items()}


class ExposureGap(_ExposureMetric):
    r""":math:`\max_g (E_g@K - T_g) - \min_g (E_g@K - T_g)` (smaller is better)."""
    smaller = True

    def calculate_metric(self, dataobject):
        return {f"exposuregap@{k}": self._round(d.max() - d.min())
                for k, d in self.exposure_gaps_at(dataobject).items()}


FAIRNESS_METRICS = [
    GroupNDCG, GroupRecall, GroupHit,
    NDCGGap, NDCGWorst, NDCGCV, NDCGWorstQuarter,
    RecallGap, RecallWorst, RecallCV, RecallWorstQuarter,
    HitGap, HitWorst, HitCV, HitWorstQuarter,
    GroupExposure, ExposureDisparity, ExposureGap,
]
FAIRNESS_NEEDS = {GROUP_TOPK, GROUP_HITS, GROUP_POS, GROUP_TRAIN_SHARE}
