"""Per-example losses and per-group means, the quantities both BiFair levels weight.

RecBole's models return the batch-mean loss. ``unreduced_losses`` makes their loss modules
return one value per example for the duration of a call, without touching the models' code.
"""
import contextlib

import torch
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_bifair.errors import BiFairInputError


class PerExampleBPRLoss(nn.Module):
    """RecBole's ``BPRLoss`` without the mean: ``-log(gamma + sigmoid(pos - neg))``."""

    def __init__(self, gamma=1e-10):
        super().__init__()
        self.gamma = gamma

    def forward(self, pos_score, neg_score):
        return -torch.log(self.gamma + torch.sigmoid(pos_score - neg_score))


def _loss_modules(model):
    return [(name, module) for name, module in model.named_children() if isinstance(module, (nn.modules.loss._Loss, BPRLoss))]


@contextlib.contextmanager
def unreduced_losses(model):
    """Within the block, ``model.calculate_loss`` returns per-example losses."""
    swapped, reductions = [], []
    for name, module in _loss_modules(model):
        if isinstance(module, BPRLoss):
            setattr(model, name, PerExampleBPRLoss(module.gamma))
            swapped.append((name, module))
        else:
            reductions.append((module, module.reduction))
            module.reduction = "none"
    try:
        yield
    finally:
        for name, module in swapped:
            setattr(model, name, module)
        for module, reduction in reductions:
            module.reduction = reduction


def per_example_loss(model, interaction):
    """``[B]`` losses of ``model`` on ``interaction``, one per training row (its group is the
    group of the row's ``ITEM_ID``: a sequence's target, a pairwise triple's positive item, a
    pointwise row's own item). A scalar regulariser the backbone adds to its loss (LightGCN,
    Caser, NextItNet) broadcasts onto every example in full, so the mean of the returned losses
    is the backbone's own loss."""
    with unreduced_losses(model):
        losses = model.calculate_loss(interaction)
    if isinstance(losses, tuple):
        losses = sum(losses)
    n_examples = len(interaction[model.ITEM_ID])
    if losses.dim() != 1 or losses.shape[0] != n_examples:
        raise BiFairInputError(
            f"{type(model).__name__}: its loss cannot be split per training example "
            f"(got shape {tuple(losses.shape)} for {n_examples} examples), so BiFair cannot weight "
            "item groups; use a backbone listed as supported in the README."
        )
    return losses


def group_mean_losses(losses, groups, n_groups):
    """Mean loss of each group over the examples of a batch, and each group's example count.

    ``L_g = sum_{i: group(i) = g} l_i / n_g``; groups without examples get ``L_g = 0`` and
    ``n_g = 0`` (callers weight only groups with ``n_g > 0``)."""
    sums = losses.new_zeros(n_groups).index_add(0, groups, losses)
    counts = torch.bincount(groups, minlength=n_groups).to(losses.dtype)
    return sums / counts.clamp(min=1), counts


def weighted_group_loss(group_losses, counts, weights):
    """``sum_g w_g L_g / sum_g w_g`` over the groups present in the batch."""
    weights = weights.to(group_losses.dtype)
    effective = weights * (counts > 0).to(weights.dtype)
    return (effective * group_losses).sum() / effective.sum().clamp(min=1e-12)
