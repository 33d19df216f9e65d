"""Adaptive inter-group balancing: the weights BiFair puts on each item group's loss.

The paper's abstract says only that the balancing "leverages multi-objective optimization
principles"; every strategy below is our reconstruction [ours]. Each group's loss is one
objective; a strategy turns the group losses of a batch into weights over the groups.

- ``softmax``: entropy-regularised worst-group weighting, ``w = softmax(Lbar / tau)`` over
  exponential moving averages ``Lbar_g`` of the group losses. With a *contrast* ``c``, ``tau``
  follows the spread of the group losses, ``tau = (max_g Lbar_g - min_g Lbar_g) / c``, so the
  largest weight is always ``e^c`` times the smallest, whatever the loss's scale (a BPR loss
  spreads over groups far less than a full-softmax cross-entropy).
- ``mgda``: the min-norm point of the group gradients over the simplex (multiple-gradient
  descent), with an entropy term so the weights do not collapse:
  ``w = argmin_{w in simplex} ||sum_g w_g grad_g||^2 / max_g ||grad_g||^2 - mu * H(w)``
  (the gradients' scale divided out, so ``mu`` means the same at any loss scale), solved by
  exponentiated gradient (mirror descent), which handles the entropy term directly.
- ``dro``: GroupDRO's exponentiated-gradient ascent, ``q_g <- q_g * exp(eta * L_g)``, normalised.
- ``uniform``: ``w_g = 1 / K`` (the ablation without adaptive weights).
- ``inverse_frequency``: ``w_g`` proportional to ``1 / share_g``, the group's share of training
  interactions (an IPS-like baseline).
- ``fixed``: user-given weights (``fixed_group_weights``).
- ``learned`` (``BiFair<Backbone>`` with a meta split only): ``w = softmax(phi)``, ``phi``
  learned by the outer level from the hypergradient of its objective on the meta split
  (``bilevel.group_weight_hypergradient``: learning to reweight at the level of item groups).

Weights are over all K groups and sum to 1; groups absent from a batch are skipped by the
loss (``losses.weighted_group_loss``) and do not update a strategy's state. The strategies'
parameters are checked in ``trainer.settings``.
"""
import math

import torch

from recbole_bifair.errors import BiFairInputError


class Balancer:
    """Turns group losses into group weights; ``update`` once per batch, then ``weights``."""

    needs_gradients = False

    def __init__(self, n_groups):
        self.n_groups = n_groups

    def update(self, group_losses, counts, group_gradients=None):
        """Take in one batch's detached group losses ``[K]`` and example counts ``[K]``."""

    def weights(self):
        raise NotImplementedError

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value.cpu() if isinstance(value, torch.Tensor) else value)


class UniformBalancer(Balancer):
    def weights(self):
        return torch.full((self.n_groups,), 1.0 / self.n_groups)


class FixedBalancer(Balancer):
    def __init__(self, n_groups, fixed_weights):
        super().__init__(n_groups)
        if len(fixed_weights) != n_groups:  # the values are checked in trainer.settings
            raise BiFairInputError(
                f"balancer 'fixed' needs fixed_group_weights: {n_groups} non-negative numbers "
                f"(one per item group), got {list(fixed_weights)!r}."
            )
        weights = torch.as_tensor(fixed_weights, dtype=torch.float32)
        self._weights = weights / weights.sum()

    def weights(self):
        return self._weights.clone()


class InverseFrequencyBalancer(Balancer):
    def __init__(self, n_groups, train_share):
        super().__init__(n_groups)
        share = torch.as_tensor(train_share, dtype=torch.float32).clamp(min=1e-12)
        inverse = 1.0 / share
        self._weights = inverse / inverse.sum()

    def weights(self):
        return self._weights.clone()


class SoftmaxBalancer(Balancer):
    """``w = softmax(Lbar / temperature)``, ``Lbar_g <- decay * Lbar_g + (1 - decay) * L_g``
    for the groups present in the batch (``Lbar_g`` starts at its first observation). With
    ``contrast``, the temperature is ``spread(Lbar) / contrast`` instead (uniform weights while
    the losses do not spread)."""

    def __init__(self, n_groups, temperature=1.0, ema_decay=0.9, contrast=None):
        super().__init__(n_groups)
        self.temperature = temperature
        self.contrast = contrast
        self.ema_decay = ema_decay
        self.smoothed_losses = torch.zeros(n_groups)
        self.seen = torch.zeros(n_groups, dtype=torch.bool)

    def update(self, group_losses, counts, group_gradients=None):
        losses, present = group_losses.detach().float(), counts > 0
        smoothed, seen = self.smoothed_losses.to(losses.device), self.seen.to(losses.device)
        moved = torch.where(seen, self.ema_decay * smoothed + (1 - self.ema_decay) * losses, losses)
        self.smoothed_losses = torch.where(present, moved, smoothed)
        self.seen = seen | present

    def weights(self):
        # uniform before any group is seen (every filled loss is then 0); no host synchronisation
        seen_total = torch.where(self.seen, self.smoothed_losses, 0.0).sum()
        mean_seen = seen_total / self.seen.sum().clamp(min=1)
        filled = torch.where(self.seen, self.smoothed_losses, mean_seen)
        return torch.softmax(filled / self.current_temperature(filled), dim=0)

    def current_temperature(self, filled_losses):
        if self.contrast is None:
            return self.temperature
        spread = (filled_losses.max() - filled_losses.min()).double()
        return torch.where(spread > 0, spread / self.contrast, math.inf).float()

    def state_dict(self):
        return {"smoothed_losses": self.smoothed_losses.clone(), "seen": self.seen.clone()}


class GroupDROBalancer(Balancer):
    """GroupDRO (Sagawa et al., 2020): ``q_g <- q_g * exp(step_size * L_g)``, renormalised."""

    def __init__(self, n_groups, step_size=0.01):
        super().__init__(n_groups)
        self.step_size = step_size
        self.q = torch.full((n_groups,), 1.0 / n_groups)

    def update(self, group_losses, counts, group_gradients=None):
        present = (counts > 0).float()
        q = self.q.to(present.device)
        self.q = q * torch.exp(self.step_size * group_losses.detach().float() * present)
        self.q = self.q / self.q.sum()

    def weights(self):
        return self.q.clone()

    def state_dict(self):
        return {"q": self.q.clone()}


def min_norm_weights(gram, entropy_weight=0.0, iterations=500, step_size=1.0):
    """``argmin_{w in simplex} w^T G w / max_g G_gg - mu * H(w)`` for the Gram matrix ``G`` of
    the group gradients (``G_gh = <grad_g, grad_h>``), by exponentiated gradient from uniform
    weights. Dividing by the largest squared gradient norm makes the result independent of the
    gradients' scale (``mu`` keeps its meaning) and lets ``step_size`` need no tuning; with
    ``mu = 0`` it is the plain min-norm point."""
    gram = gram.double()
    scale = gram.diagonal().max().clamp(min=1e-30)
    gram = gram / scale
    k = gram.shape[0]
    log_w = torch.full((k,), -math.log(k), dtype=torch.float64)
    for _ in range(iterations):
        w = torch.softmax(log_w, dim=0)
        gradient = 2 * gram @ w + entropy_weight * (torch.log(w) + 1)
        log_w = log_w - step_size * gradient
    return torch.softmax(log_w, dim=0).float()


class MGDABalancer(Balancer):
    """Min-norm weights of the present groups' gradients (see ``min_norm_weights``); absent
    groups keep their last weight. The trainer chooses the parameters the gradients are taken
    over (``GroupFairTrainer._mgda_shared_parameters``)."""

    needs_gradients = True

    def __init__(self, n_groups, entropy_weight=0.1):
        super().__init__(n_groups)
        self.entropy_weight = entropy_weight
        self._weights = torch.full((n_groups,), 1.0 / n_groups)

    def update(self, group_losses, counts, group_gradients=None):
        grads = group_gradients.detach().double()
        # the K x K Gram matrix and the counts are all that go to the host (the solver runs there)
        gram, counts = (grads @ grads.T).cpu(), counts.cpu()
        present = (counts > 0).nonzero().flatten()
        if len(present) == 0:
            return
        solution = min_norm_weights(gram[present][:, present], self.entropy_weight)
        mass = self._weights[present].sum()
        self._weights[present] = solution * mass

    def weights(self):
        return self._weights.clone()

    def state_dict(self):
        return {"_weights": self._weights.clone()}


class LearnedBalancer(Balancer):
    """``w = softmax(phi)`` with ``phi`` (``log_weights``, zeros at the start: uniform weights)
    moved by :meth:`step`, an Adam step of ``learning_rate`` on the gradient the outer level
    computes (:meth:`set_gradient`); ``update`` takes nothing in. Learning to reweight (Ren et
    al., 2018) at the level of item groups [ours]. ``phi`` moves to the gradient's device at the
    first step."""

    def __init__(self, n_groups, learning_rate):
        super().__init__(n_groups)
        self.learning_rate = learning_rate
        self._set_log_weights(torch.zeros(n_groups))

    def _set_log_weights(self, values):
        self.log_weights = values.detach().clone().requires_grad_()
        self.optimizer = torch.optim.Adam([self.log_weights], lr=self.learning_rate)

    def weights(self):
        return torch.softmax(self.log_weights.detach(), dim=0)

    def set_gradient(self, gradient):
        """``dF/dphi`` for the next :meth:`step`."""
        if self.log_weights.device != gradient.device and not self.optimizer.state:
            self._set_log_weights(self.log_weights.to(gradient.device))
        self.log_weights.grad = gradient.detach().to(self.log_weights.dtype)

    def step(self):
        """One Adam step of ``phi`` along minus its gradient."""
        self.optimizer.step()

    def state_dict(self):
        return {"log_weights": self.log_weights.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self._set_log_weights(state["log_weights"])
        self.optimizer.load_state_dict(state["optimizer"])


def build_balancer(settings, n_groups, train_share):
    """The balancer of ``settings`` (``trainer.settings.BalancerSettings``) over ``n_groups``."""
    strategy = settings.strategy
    if strategy == "softmax":
        return SoftmaxBalancer(n_groups, settings.temperature, settings.ema_decay, settings.contrast)
    if strategy == "mgda":
        return MGDABalancer(n_groups, settings.mgda_entropy_weight)
    if strategy == "dro":
        return GroupDROBalancer(n_groups, settings.dro_step_size)
    if strategy == "uniform":
        return UniformBalancer(n_groups)
    if strategy == "inverse_frequency":
        return InverseFrequencyBalancer(n_groups, train_share)
    if strategy == "learned":
        return LearnedBalancer(n_groups, settings.learned_weight_learning_rate)
    return FixedBalancer(n_groups, settings.fixed_group_weights)
