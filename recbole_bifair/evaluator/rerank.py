r"""Post-processing re-ranker: re-orders each top-K list to meet a target exposure of the item
groups, at evaluation time, for any trained model (a fairness baseline).

Config block (``rerank: ~`` = off; keys left out take these defaults)::

    rerank:
      method: exposure     # the only method
      target: train_share  # train_share (each group's share of training interactions) |
                           # uniform (1/G each) | [t_0, ..., t_{G-1}] (normalised to sum 1)
      candidates: 50       # each row is re-ranked from its top-`candidates` items by score
      k: ~                 # length of the re-ranked list; ~ = max(topk)
      lambda: 0.0          # 0: quotas only, in score order; 1: most-below-target group first

Algorithm, per evaluated row (a greedy with group quotas in the style of FA*IR [Zehlike et
al., CIKM 2017] and DetGreedy [Geyik et al., KDD 2019]):

1. Candidates :math:`C`: the row's top-`candidates` items by score; items scored -inf
   (history, padding, outside a sampled candidate set) are never candidates.
2. Quotas :math:`n_g`: integer slots per group summing to :math:`K' = \min(K, |C|)`, the
   largest-remainder rounding of :math:`t_g K'` (ties to the lower group id). A group with
   fewer candidates :math:`a_g` than its quota keeps :math:`a_g` and the freed slots are shared
   by the other groups in proportion to :math:`t` (repeated until every slot is assigned).
3. Slots :math:`s = 1..K'` are filled greedily. Among the candidates of groups still below
   their quota (:math:`c_g < n_g`), the one with the largest

   .. math:: (1 - \lambda)\, r_i + \lambda\, (s\, n_g / K' - c_g), \quad g = g(i)

   is placed, :math:`r_i` being the score min-max normalised over :math:`C`, ties to the higher
   score. :math:`\lambda = 0` keeps score order inside the quotas; :math:`\lambda = 1` takes
   the best item of the group furthest below its target share of the slots filled so far.

The output has :math:`K'` distinct candidates with exactly :math:`n_g` of group :math:`g`, so
the exposure at K is the target (as far as the candidates allow). With :math:`\lambda = 0`, a
top-K list whose group counts already equal the quotas is returned unchanged, order included.
In the collector, the re-ranked items get the K highest scores in their new order, so every
metric (RecBole's and the fairness metrics) sees the re-ranked lists; value-based evaluation
(one score per interaction) is left as it is.
"""
import logging

import torch

from recbole_bifair.config_values import config_value
from recbole_bifair.errors import BiFairInputError

DEFAULTS = {"method": "exposure", "target": "train_share", "candidates": 50, "k": None, "lambda": 0.0}
METHODS = ("exposure",)
NAMED_TARGETS = ("train_share", "uniform")


def rerank_config(config):
    """The ``rerank`` block with defaults filled in and validated, or None when off."""
    given = config_value(config, "rerank")
    if given is None or given is False:
        return None
    if not isinstance(given, dict):
        raise BiFairInputError(
            f"rerank must be a mapping such as {{method: exposure, target: train_share, candidates: 50}} "
            f"or ~ (off), got {given!r}.")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise BiFairInputError(f"Unknown rerank key(s) {unknown}: the keys are {sorted(DEFAULTS)}.")
    block = {**DEFAULTS, **{key: value for key, value in given.items() if value is not None}}
    _validate(block)
    return block


def _validate(block):
    if block["method"] not in METHODS:
        raise BiFairInputError(f"rerank.method is {block['method']!r}: use one of {list(METHODS)}.")
    target = block["target"]
    if isinstance(target, str) and target not in NAMED_TARGETS:
        raise BiFairInputError(
            f"rerank.target is {target!r}: use {' or '.join(NAMED_TARGETS)}, or a list of shares per group.")
    if not isinstance(target, str) and not _non_negative_numbers(target):
        raise BiFairInputError(
            f"rerank.target {target!r} must be train_share, uniform, or a list of non-negative "
            f"shares per group (not all zero).")
    for key in ("candidates", "k"):
        value = block[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BiFairInputError(f"rerank.{key} must be a positive integer, got {value!r}.")
    lam = block["lambda"]
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
        raise BiFairInputError(f"rerank.lambda must be a number in [0, 1], got {lam!r}.")
    if block["k"] is not None and block["candidates"] < block["k"]:
        raise BiFairInputError(
            f"rerank.candidates ({block['candidates']}) is smaller than rerank.k ({block['k']}): "
            f"the re-ranker needs at least k candidates.")


def _non_negative_numbers(values):
    if not isinstance(values, (list, tuple)) or not values:
        return False
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return numbers and all(v >= 0 for v in values) and sum(values) > 0


def build_reranker(config):
    """An :class:`ExposureReranker` for the config's ``rerank`` block, or None when it is off."""
    block = rerank_config(config)
    if block is None:
        return None
    k = block["k"] or max(_as_list(config_value(config, "topk") or [10]))
    if block["candidates"] < k:
        raise BiFairInputError(
            f"rerank.candidates ({block['candidates']}) is smaller than the list length K = {k} "
            f"(max topk): raise rerank.candidates to at least {k}.")
    return ExposureReranker(k=k, candidates=block["candidates"], target=block["target"], lam=block["lambda"])


class ExposureReranker:
    """Greedy group-quota re-ranking of top-K lists (see the module docstring)."""

    def __init__(self, k, candidates=50, target="train_share", lam=0.0):
        self.k = k
        self.candidates = candidates
        self.target_spec = target
        self.lam = float(lam)
        self.item_group = None
        self.target = None

    def fit(self, item_groups):
        """Take the item -> group table and the target shares from :class:`ItemGroups`."""
        self.item_group = item_groups.item_group.long()
        self.target = target_shares(self.target_spec, item_groups)
        shares = ", ".join(f"g{g} {share:.3f}" for g, share in enumerate(self.target.tolist()))
        logging.getLogger().info(
            f"Re-ranking: top-{self.k} lists re-ordered from the top-{self.candidates} candidates "
            f"towards the group exposure target ({self.target_spec}: {shares}), lambda {self.lam}.")
        return self

    def rerank(self, scores, item_group=None):
        """[n x K] re-ranked item ids for a [n x items] score matrix; -1 where a row has fewer
        than K candidates. ``item_group``: the fitted table already on ``scores.device``
        (a caller's cached copy; default: copied there)."""
        if self.item_group is None:
            raise RuntimeError(
                "The re-ranker needs the item groups of the training split: call "
                "trainer.eval_collector.data_collect(train_data) (trainer.fit does) before evaluating.")
        cand_scores, cand_items = torch.topk(scores, min(self.candidates, scores.shape[1]), dim=1)
        if item_group is None:
            item_group = self.item_group.to(scores.device)
        cand_groups = item_group[cand_items]
        valid = ~torch.isneginf(cand_scores) & ~torch.isnan(cand_scores) & (cand_groups >= 0)
        n_groups = len(self.target)
        available = group_counts(cand_groups, valid, n_groups)
        k_row = torch.clamp(available.sum(dim=1), max=self.k)
        quota = slot_quotas(self.target.to(scores.device), available, k_row)
        positions = greedy_fill(cand_scores, cand_groups, valid, quota, k_row, self.k, self.lam)
        items = cand_items.gather(1, positions.clamp(min=0))
        return items.masked_fill(positions < 0, -1)

    def rerank_scores(self, scores, item_group=None):
        """``scores`` with each row's re-ranked items given the K highest scores, in order
        (other scores unchanged); 1-D scores (value-based evaluation) are returned as they are.
        ``item_group`` as in :meth:`rerank`."""
        if scores.dim() != 2:
            return scores
        items = self.rerank(scores, item_group)
        finite = scores.masked_fill(~torch.isfinite(scores), float("-inf"))
        row_max = finite.max(dim=1).values
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        scale = row_max.abs().clamp(min=1.0)
        rank_steps = torch.arange(items.shape[1], 0, -1, device=scores.device, dtype=scores.dtype)
        boosted = row_max.unsqueeze(1) + scale.unsqueeze(1) * rank_steps
        rows, slots = torch.nonzero(items >= 0, as_tuple=True)
        reranked = scores.clone()
        reranked[rows, items[rows, slots]] = boosted[rows, slots].to(scores.dtype)
        return reranked


def target_shares(target, item_groups):
    """The target share per group (sums to 1) for ``train_share``, ``uniform`` or a list."""
    n_groups = item_groups.n_groups
    if target == "train_share":
        shares = item_groups.train_share.double()
    elif target == "uniform":
        shares = torch.full((n_groups,), 1.0 / n_groups, dtype=torch.float64)
    else:
        if len(target) != n_groups:
            raise BiFairInputError(
                f"rerank.target has {len(target)} shares but there are {n_groups} item groups: "
                f"give one share per group.")
        shares = torch.tensor([float(t) for t in target], dtype=torch.float64)
    return shares / shares.sum()


def group_counts(cand_groups, valid, n_groups):
    """[n x G] valid candidates per group."""
    one_hot = torch.nn.functional.one_hot(cand_groups.clamp(min=0), n_groups) * valid.unsqueeze(2)
    return one_hot.sum(dim=1)


def largest_remainder(ideal, total):
    """Integers per column summing to ``total`` per row: floor(ideal) plus one for the largest
    fractional parts (ties to the lower column)."""
    base = torch.floor(ideal)
    extra = total - base.sum(dim=1).round().long()
    order = torch.sort(ideal - base, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(ideal.shape[1], device=ideal.device)
                                            .expand_as(order).contiguous())
    return base.long() + (rank < extra.unsqueeze(1)).long()


def slot_quotas(target, available, k_row):
    """[n x G] slots per group: largest-remainder shares of ``k_row`` by ``target``, each capped
    by the group's candidates, with freed slots shared again among the groups with room."""
    quota = torch.zeros_like(available)
    for _ in range(available.shape[1] + 1):
        room = available - quota
        left = k_row - quota.sum(dim=1)
        has_room = room > 0
        active = (left > 0) & has_room.any(dim=1)
        if not active.any():
            break
        weight = target.unsqueeze(0) * has_room
        weightless = weight.sum(dim=1, keepdim=True) == 0
        weight = torch.where(weightless, has_room.double(), weight)
        ideal = weight / weight.sum(dim=1, keepdim=True).clamp(min=1e-12) * left.unsqueeze(1)
        share = torch.minimum(largest_remainder(ideal, left), room)
        quota = quota + share * active.unsqueeze(1)
    return quota


def greedy_fill(cand_scores, cand_groups, valid, quota, k_row, k, lam):
    """[n x K] candidate positions, slot by slot (see the module docstring); -1 for slots
    beyond a row's ``k_row``."""
    n = cand_scores.shape[0]
    groups = cand_groups.clamp(min=0)
    relevance = min_max_normalised(cand_scores, valid)
    share = quota.double() / k_row.clamp(min=1).unsqueeze(1)
    counts = torch.zeros_like(quota)
    taken = ~valid
    positions = torch.full((n, k), -1, dtype=torch.long, device=cand_scores.device)
    rows = torch.arange(n, device=cand_scores.device)
    for slot in range(k):
        deficit = share * (slot + 1) - counts
        eligible = ~taken & (counts < quota).gather(1, groups)
        key = (1.0 - lam) * relevance + lam * deficit.gather(1, groups)
        key = key.masked_fill(~eligible, float("-inf"))
        best = key.argmax(dim=1)
        filled = eligible.any(dim=1)
        positions[filled, slot] = best[filled]
        taken[rows[filled], best[filled]] = True
        counts[rows[filled], groups[rows[filled], best[filled]]] += 1
    return positions


def min_max_normalised(cand_scores, valid):
    """Scores scaled to [0, 1] over each row's valid candidates (1 where they are all equal)."""
    scores = cand_scores.double()
    low = scores.masked_fill(~valid, float("inf")).min(dim=1, keepdim=True).values
    high = scores.masked_fill(~valid, float("-inf")).max(dim=1, keepdim=True).values
    spread = high - low
    normalised = (scores - low) / torch.where(spread > 0, spread, torch.ones_like(spread))
    normalised = torch.where(spread > 0, normalised, torch.ones_like(normalised))
    return normalised.masked_fill(~valid, 0.0)


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]
