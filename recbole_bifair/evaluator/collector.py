"""RecBole's Collector, extended with what the item-group fairness metrics need.

Unless a fairness metric is named in ``metrics`` it behaves exactly like RecBole's Collector.
Otherwise it builds the item groups from the training split in ``data_collect`` and, for each
evaluated batch (full ranking or sampled, one or several positives per row), adds:

- ``rec.group_topk`` [n x maxK]: group id of each top-K item (-1 for slots whose score is -inf,
  i.e. items outside a sampled candidate set or already seen);
- ``rec.group_hits`` [n x maxK]: whether that slot holds a positive;
- ``rec.group_pos`` [n x G]: positives of the row in each group;
- ``data.group_train_share`` [G]: each group's share of training interactions (once).

With a ``rerank`` block in the config, each batch's scores are first re-ranked
(``rerank.py``), so that every metric, RecBole's included, sees the re-ranked lists.

In a multi-process run every rank collects its share of the rows; ``get_data_struct`` gathers
the rows of all ranks (without ``DistributedSampler``'s repeated ones, counted for it in
``distributed_padding``), so each metric is computed once over the whole split.
"""
import logging

import torch
from recbole.evaluator.collector import Collector

from recbole_bifair import distributed
from recbole_bifair.evaluator.groups import build_item_groups
from recbole_bifair.evaluator.metrics import (
    FAIRNESS_NEEDS, GROUP_HITS, GROUP_POS, GROUP_TOPK, GROUP_TRAIN_SHARE)
from recbole_bifair.evaluator.rerank import build_reranker

PER_EVALUATION_KEYS = (GROUP_TOPK, GROUP_HITS, GROUP_POS)
ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label") + PER_EVALUATION_KEYS


class FairnessCollector(Collector):
    """RecBole's Collector plus the per-row group data of the fairness metrics."""

    def __init__(self, config):
        super().__init__(config)
        self.fairness_needed = any(self.register.need(key) for key in FAIRNESS_NEEDS)
        self.item_groups = None
        self._item_group_on_device = None
        self._logged_evaluations = set()
        self.reranker = build_reranker(config)  # post-processing re-ranker (rerank.py); None = off
        self.distributed_padding = 0
        self._trainer = None

    def listen(self, trainer):
        """Report each evaluated batch and each struct to ``trainer``'s callbacks
        (``trainer.hooks``: ``on_evaluation_batch``, ``on_evaluation_struct``)."""
        self._trainer = trainer

    def data_collect(self, train_data):
        super().data_collect(train_data)
        if self.reranker is None and not self.fairness_needed:
            return
        self.item_groups = build_item_groups(self.config, train_data.dataset)
        self._item_group_on_device = None
        if self.reranker is not None:
            self.reranker.fit(self.item_groups)
        if self.fairness_needed:
            self._logged_evaluations = {_signature(p) for p in self.item_groups.eval_positives.values()}
            self.data_struct.set(GROUP_TRAIN_SHARE, self.item_groups.train_share.float())

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        if self._trainer is not None:
            self._trainer.emit("on_evaluation_batch", scores_tensor, interaction)
        if self.reranker is not None:
            item_group = self._item_group_for(scores_tensor.device)
            scores_tensor = self.reranker.rerank_scores(scores_tensor, item_group)
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if not self.fairness_needed:
            return
        device = scores_tensor.device
        item_group = self._item_group_for(device)
        positive_u, positive_i = positive_u.to(device), positive_i.to(device)
        topk_scores, topk_idx = torch.topk(scores_tensor, max(self.topk), dim=-1)
        self.data_struct.update_tensor(
            GROUP_TOPK, item_group[topk_idx].masked_fill(torch.isneginf(topk_scores), -1))
        hits = _slots_holding_positives(topk_idx, positive_u, positive_i, scores_tensor.shape[1])
        self.data_struct.update_tensor(GROUP_HITS, hits)
        group_pos = torch.zeros(
            len(scores_tensor), self.item_groups.n_groups, dtype=torch.long, device=device)
        group_pos.index_put_(
            (positive_u, item_group[positive_i]), torch.ones_like(positive_u), accumulate=True)
        self.data_struct.update_tensor(GROUP_POS, group_pos)

    def get_data_struct(self):
        if distributed.is_distributed():
            self._gather_rows_of_all_ranks()
        if self.fairness_needed and GROUP_POS in self.data_struct:
            self._log_evaluation_positives(self.data_struct[GROUP_POS].sum(dim=0).cpu())
        returned = super().get_data_struct()
        for key in PER_EVALUATION_KEYS:
            if key in self.data_struct:
                del self.data_struct[key]
        if self._trainer is not None:
            self._trainer.emit("on_evaluation_struct", returned)
        return returned

    def _gather_rows_of_all_ranks(self):
        padding, self.distributed_padding = self.distributed_padding, 0
        for key in ROW_KEYS:
            if key in self.data_struct:
                rows = self.data_struct[key]
                self.data_struct.set(key, distributed.gather_rows(rows[: len(rows) - padding]))

    def _item_group_for(self, device):
        if self.item_groups is None:
            raise RuntimeError(
                "The fairness metrics and the re-ranker need the item groups of the training split: call "
                "trainer.eval_collector.data_collect(train_data) (trainer.fit does) before evaluating.")
        if self._item_group_on_device is None or self._item_group_on_device.device != device:
            self._item_group_on_device = self.item_groups.item_group.to(device)
        return self._item_group_on_device

    def _log_evaluation_positives(self, positives):
        """Once per distinct evaluated split (one not already logged by build_item_groups)."""
        signature = _signature(positives)
        if signature in self._logged_evaluations:
            return
        self._logged_evaluations.add(signature)
        groups = self.item_groups
        counts = ", ".join(
            f"g{g} {name}: {int(c)}" for g, (name, c) in enumerate(zip(groups.names, positives)))
        logger = logging.getLogger()
        logger.info(f"Item groups: positives per group in the evaluated split: {counts}")
        for message in groups.sparse_group_warnings("evaluation", positives):
            logger.warning(message)


def _slots_holding_positives(topk_idx, positive_u, positive_i, n_items):
    """[n x k] bool: whether each top-k item is a positive of its row (without an n x items matrix)."""
    rows = torch.arange(len(topk_idx), device=topk_idx.device).unsqueeze(1)
    return torch.isin(rows * n_items + topk_idx, positive_u * n_items + positive_i)


def _signature(positives):
    return tuple(int(c) for c in positives)


def use_in_recbole_trainers():
    """RecBole's trainers build their collector through the name ``Collector`` in
    ``recbole.trainer.trainer``; the fairness metrics need :class:`FairnessCollector` (a
    subclass that also collects each ranked item's group), so that name points to it
    (idempotent)."""
    import recbole.trainer.trainer as trainer_module

    trainer_module.Collector = FairnessCollector
