"""The training loss of the group-aware trainers: per-example losses, per-group means and
per-group gradients, and :class:`LossPolicy`, which turns them into one loss (group weights,
IPS or the plain mean, plus the spread term). BiFair's two levels (and the fairness baselines'
inner level) take the same policy object, so both levels see the same inner loss.

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


def example_losses(model, interaction):
    """``(losses [M], items [M])``: one training loss per example of ``model`` on
    ``interaction``, and the item each example is about (its group decides the example's
    weight). A backbone names its own examples with a method
    ``calculate_example_losses(interaction)`` returning both (``BiFairBERT4Rec``: one example per
    masked position, see :func:`masked_item_losses`); otherwise an example is a training row and
    its item the row's ``ITEM_ID`` (a sequence's target, a pairwise triple's positive item, a
    pointwise row's own item). A scalar regulariser the backbone adds to its loss (LightGCN,
    Caser, NextItNet) broadcasts onto every example in full, so the mean of the returned losses
    is the backbone's own loss."""
    own_examples = getattr(model, "calculate_example_losses", None)
    if own_examples is not None:
        losses, items = own_examples(interaction)
    else:
        with unreduced_losses(model):
            losses = model.calculate_loss(interaction)
        if isinstance(losses, tuple):
            losses = sum(losses)
        items = interaction[model.ITEM_ID]
    if losses.dim() != 1 or losses.shape != items.shape:
        raise BiFairInputError(
            f"{type(model).__name__}: its loss cannot be split per training example "
            f"(got shape {tuple(losses.shape)} for {items.shape[0]} examples), so the group-aware "
            "families cannot weight item groups; give the backbone a calculate_example_losses("
            "interaction) method returning (losses, items), or use a backbone listed as supported "
            "in docs/models.md."
        )
    return losses, items


def masked_item_losses(model, interaction):
    """BERT4Rec's examples: one loss per masked position, about the item masked there
    (``POS_ITEMS``); padding positions are dropped. Their mean is BERT4Rec's loss. The body
    follows RecBole 1.2.1's ``BERT4Rec.calculate_loss`` up to its final mean, which it leaves
    out (RecBole builds its loss module inside that method, so it cannot be unreduced from
    outside)."""
    masked_sequence = interaction[model.MASK_ITEM_SEQ]
    positive_items = interaction[model.POS_ITEMS]
    masked_index = interaction[model.MASK_INDEX]
    position_map = model.multi_hot_embed(masked_index, masked_sequence.size(-1))
    position_map = position_map.view(masked_index.size(0), masked_index.size(1), -1)
    outputs = torch.bmm(position_map, model.forward(masked_sequence))  # [B, mask_len, H]
    if model.loss_type == "BPR":
        negative_items = interaction[model.NEG_ITEMS]

        def score(items):
            return (outputs * model.item_embedding(items)).sum(-1) + model.output_bias[items]

        losses = -torch.log(1e-14 + torch.sigmoid(score(positive_items) - score(negative_items)))
    elif model.loss_type == "CE":
        item_table = model.item_embedding.weight[: model.n_items]
        logits = torch.matmul(outputs, item_table.transpose(0, 1)) + model.output_bias
        losses = nn.functional.cross_entropy(
            logits.view(-1, item_table.size(0)), positive_items.view(-1), reduction="none"
        ).view_as(positive_items)
    else:
        raise BiFairInputError(f"{type(model).__name__}: loss_type must be BPR or CE, got {model.loss_type!r}.")
    masked = masked_index > 0
    return losses[masked], positive_items[masked]


def group_mean_losses(losses, groups, n_groups):
    """Mean loss of each group over the examples of a batch, and each group's example count.

    ``L_g = sum_{i: group(i) = g} l_i / n_g``; groups without examples get ``L_g = 0`` and
    ``n_g = 0`` (callers weight only groups with ``n_g > 0``)."""
    sums = losses.new_zeros(n_groups).index_add(0, groups, losses)
    # counted by index_add, not bincount: its output size depends on the data, a host sync on a GPU
    counts = losses.new_zeros(n_groups).index_add(0, groups, torch.ones_like(losses))
    return sums / counts.clamp(min=1), counts


def weighted_group_loss(group_losses, counts, weights):
    """``sum_g w_g L_g / sum_g w_g`` over the groups present in the batch."""
    weights = weights.to(group_losses.dtype)
    effective = weights * (counts > 0).to(weights.dtype)
    return (effective * group_losses).sum() / effective.sum().clamp(min=1e-12)


def present_variance(values, present):
    """The population variance of ``values`` where ``present``: on the CPU by ``Tensor.var``
    over the present values (the computation of the recorded runs), on a GPU by
    :func:`masked_variance`, since a boolean index is a host synchronisation there."""
    if values.device.type == "cpu":
        return values[present].var(unbiased=False)
    return masked_variance(values, present)


def masked_variance(values, present):
    """The population variance of ``values`` where ``present``, with masks only (equal to the
    boolean-index variance within float rounding; 0 when nothing is present)."""
    weights = present.to(values.dtype)
    n_present = weights.sum().clamp(min=1)
    mean = (weights * values).sum() / n_present
    return (weights * (values - mean) ** 2).sum() / n_present


def group_gradients_over(group_losses, params):
    """``[K, P]``: each group's loss gradient over ``params``, flattened; zeros for groups
    without examples (their loss does not depend on any example). (What the ``mgda`` balancer
    compares.) Every group is differentiated, so that no count is read on the host."""
    rows = []
    for g in range(len(group_losses)):
        grads = gradients(group_losses[g], params, retain_graph=True)
        rows.append(torch.cat([x.flatten() for x in grads]))
    return torch.stack(rows).detach()


def gradients(output, inputs, **kwargs):
    """``torch.autograd.grad`` with zeros for inputs the output does not depend on: a backbone
    need not use every parameter in its loss (BPR scores items through ``item_embedding(ids)``
    only, so the layer's empty extra rows never enter the graph). ``output`` may be a list
    (then ``grad_outputs`` weights it)."""
    outputs = output if isinstance(output, (list, tuple)) else [output]
    kept = [i for i, o in enumerate(outputs) if o.requires_grad]
    if "grad_outputs" in kwargs:
        kwargs["grad_outputs"] = [kwargs["grad_outputs"][i] for i in kept]
    if not kept:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad([outputs[i] for i in kept], inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


class LossPolicy:
    """The inner level's loss of a batch, from its per-example losses ``l_i`` of target items
    ``i`` (``settings``: ``trainer.settings.GroupFairSettings``):

    - ``inner_weighting: group``: ``sum_g w_g L_g / sum_g w_g`` with the ``balancer``'s weights
      ``w`` (updated with the batch's group losses first, when the caller says so; an MGDA
      balancer also gets the group gradients over ``shared_parameters``);
    - ``item_ips``: ``sum_i v_i l_i / sum_i v_i`` with ``v_i = item_ips[i]``;
    - ``none``: the mean of ``l_i``;

    plus ``loss_spread_weight * Var_g(L_g)`` over the groups present in the batch.
    ``item_group`` maps internal item ids to groups ``0 .. n_groups - 1``."""

    def __init__(self, settings, item_group, n_groups, balancer, item_ips=None, shared_parameters=()):
        self.settings = settings
        self.item_group = item_group
        self.n_groups = n_groups
        self.balancer = balancer
        self.item_ips = item_ips
        self.shared_parameters = list(shared_parameters)

    def group_losses(self, losses, items):
        """``(L_g [K], n_g [K])`` of per-example ``losses`` of target ``items``."""
        return group_mean_losses(losses, self.item_group[items], self.n_groups)

    def combine(self, losses, items, update_balancer=False):
        """One training loss from per-example ``losses`` of target ``items``; with
        ``update_balancer`` the balancer first takes in this batch's group losses (the inner
        step does; BiFair's look-ahead, which evaluates the same loss again, does not)."""
        group_losses, counts = self.group_losses(losses, items)
        weighting = self.settings.inner_weighting
        if weighting == "group":
            if update_balancer:
                gradients_ = (group_gradients_over(group_losses, self.shared_parameters)
                              if self.balancer.needs_gradients else None)
                self.balancer.update(group_losses.detach(), counts, gradients_)
            loss = weighted_group_loss(group_losses, counts, self.balancer.weights().to(losses.device))
        elif weighting == "item_ips":
            weights = self.item_ips[items]
            loss = (weights * losses).sum() / weights.sum()
        else:
            loss = losses.mean()
        if self.settings.loss_spread_weight:
            loss = loss + self.settings.loss_spread_weight * present_variance(group_losses, counts > 0)
        return loss

    def loss(self, model, interaction, update_balancer=True):
        """The inner level's loss of ``model`` on ``interaction`` (updates the balancer)."""
        losses, items = example_losses(model, interaction)
        return self.combine(losses, items, update_balancer=update_balancer)

    @property
    def uses_balancer(self):
        """Whether the balancer's weights enter the loss (logged each epoch)."""
        return self.settings.inner_weighting == "group"
