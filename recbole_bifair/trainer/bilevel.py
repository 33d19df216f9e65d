"""BiFair's outer level: the hypergradient of the fairness-aware objective with respect to the
LLM item table ``E``, through a one-step look-ahead of the inner update.

This is our reconstruction [ours] of the nested update the abstract describes (the paper's
text and code are not public), in the style of DARTS / MAML:

    theta'  = theta - xi * grad_theta L_in(E, theta; B_train)
    F(E)    = sum_g lambda_g L_g(E, theta'; B_meta) / sum_g lambda_g  +  beta * ||E - E0||^2
    dF/dE   = d_E F(E, theta')  -  xi * (d^2 L_in / dE dtheta) . d_theta' F(E, theta')

``L_in`` is the inner level's group-weighted loss, ``lambda`` the outer balancer's weights and
``B_meta`` a batch the inner step has not used. Three ways to get ``dF/dE``:
- ``first_order``: drops the second term (the Hessian-vector product);
- ``finite_difference``: the Hessian-vector product by central differences,
  ``[grad_E L_in(E, theta + eps v) - grad_E L_in(E, theta - eps v)] / (2 eps)``,
  ``v = d_theta' F``, ``eps = 0.01 / ||v||``;
- ``exact``: autograd through the look-ahead (``torch.func.functional_call``).
"""
import torch
from torch import nn
from torch.func import functional_call

from recbole_bifair.trainer.losses import group_mean_losses, per_example_loss, weighted_group_loss

HYPERGRADIENT_MODES = ("first_order", "finite_difference", "exact")


class _PerExampleLossModule(nn.Module):
    """``model``'s per-example loss as a module's forward, for ``functional_call``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, interaction):
        return per_example_loss(self.model, interaction)


class LookAheadObjective:
    """Evaluates BiFair's losses of ``model`` at parameter values given as tensors, so the
    look-ahead ``theta'`` and perturbed ``theta +- eps v`` never touch the model's own weights.

    ``inner_names`` are theta's parameter names, ``llm_names`` E's, as in
    ``model.named_parameters()``; ``item_group`` maps internal item ids to groups;
    ``combine_losses(losses, items)`` turns per-example losses into the inner level's loss
    (``GroupFairTrainer.combine_losses``)."""

    def __init__(self, model, inner_names, llm_names, item_group, n_groups, combine_losses):
        self.module = _PerExampleLossModule(model)
        self.model = model
        self.inner_names = list(inner_names)
        self.llm_names = list(llm_names)
        self.item_group = item_group
        self.n_groups = n_groups
        self.combine_losses = combine_losses

    def example_losses(self, theta, llm, interaction):
        """Per-example losses on ``interaction`` with ``theta`` and ``E`` given as lists."""
        params = {"model." + n: t for n, t in zip(self.inner_names, theta)}
        params.update({"model." + n: t for n, t in zip(self.llm_names, llm)})
        return functional_call(self.module, params, (interaction,))

    def group_losses(self, theta, llm, interaction):
        """``(L_g [K], n_g [K])`` on ``interaction``."""
        losses = self.example_losses(theta, llm, interaction)
        return group_mean_losses(losses, self.item_group[interaction[self.model.ITEM_ID]], self.n_groups)

    def inner_loss(self, theta, llm, interaction):
        """``L_in``: the inner level's loss, exactly as the inner step computes it."""
        losses = self.example_losses(theta, llm, interaction)
        return self.combine_losses(losses, interaction[self.model.ITEM_ID])


def proximity(llm, llm_init, beta):
    """``beta * ||E - E0||^2``: the pull of the LLM tables towards the LLM's own vectors."""
    return beta * sum((e - e0).pow(2).sum() for e, e0 in zip(llm, llm_init))


def outer_hypergradient(objective, theta, llm, llm_init, train_batch, meta_batch,
                        outer_balancer, xi, beta, mode="first_order", shared=()):
    """``(dF/dE for each E, F)``.

    ``theta`` and ``llm`` are the current parameter tensors (not modified); ``outer_balancer``
    is updated with the meta batch's group losses before its weights ``lambda`` are read (an
    MGDA balancer gets their gradients over the entries ``shared`` of ``theta'``)."""
    if mode not in HYPERGRADIENT_MODES:
        raise ValueError(f"hypergradient must be one of {HYPERGRADIENT_MODES}, got {mode!r}")
    theta = [t.detach().requires_grad_() for t in theta]
    llm = [e.detach().requires_grad_() for e in llm]
    exact = mode == "exact"
    lookahead_random_state = _random_state()

    inner = objective.inner_loss(theta, llm, train_batch)
    inner_grads = _grad(inner, theta, create_graph=exact)
    theta_prime = [t - xi * g for t, g in zip(theta, inner_grads)]
    if not exact:
        theta_prime = [t.detach().requires_grad_() for t in theta_prime]

    meta_losses, meta_counts = objective.group_losses(theta_prime, llm, meta_batch)
    group_gradients = (
        group_gradients_over(meta_losses, meta_counts, [theta_prime[i] for i in shared])
        if outer_balancer.needs_gradients
        else None
    )
    outer_balancer.update(meta_losses.detach(), meta_counts, group_gradients)
    lambdas = outer_balancer.weights().to(meta_losses.device)
    objective_value = weighted_group_loss(meta_losses, meta_counts, lambdas) + proximity(llm, llm_init, beta)

    if mode == "finite_difference":
        direct = _grad(objective_value, llm + theta_prime)
        direct_llm, v = direct[: len(llm)], direct[len(llm):]
        hvp = finite_difference_mixed_hvp(objective, theta, llm, train_batch, v, lookahead_random_state)
        grads = [d - xi * h for d, h in zip(direct_llm, hvp)]
    else:
        grads = _grad(objective_value, llm)
    return [g.detach() for g in grads], objective_value.detach()


def group_gradients_over(group_losses, counts, params):
    """``[K, P]``: each present group's loss gradient over ``params``, flattened; zeros for
    groups without examples. (What the ``mgda`` balancer compares.)"""
    size = sum(p.numel() for p in params)
    rows = []
    for g in range(len(group_losses)):
        if counts[g] > 0:
            grads = _grad(group_losses[g], params, retain_graph=True)
            rows.append(torch.cat([x.flatten() for x in grads]))
        else:
            rows.append(group_losses.new_zeros(size))
    return torch.stack(rows).detach()


def finite_difference_mixed_hvp(objective, theta, llm, batch, v, random_state):
    """``(d^2 L_in / dE dtheta) . v`` by central differences along ``v`` (``eps = 0.01/||v||``).
    Both evaluations replay ``random_state``, the one the look-ahead's inner loss was computed
    with, so all three share their dropout masks."""
    norm = torch.sqrt(sum((t.detach() ** 2).sum() for t in v))
    eps = 0.01 / norm.clamp(min=1e-12)
    after = _random_state()

    def grad_llm_at(sign):
        _set_random_state(random_state)
        shifted = [(t + sign * eps * d).detach() for t, d in zip(theta, v)]
        loss = objective.inner_loss(shifted, llm, batch)
        return _grad(loss, llm)

    plus, minus = grad_llm_at(1.0), grad_llm_at(-1.0)
    _set_random_state(after)
    return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]


def _grad(output, inputs, **kwargs):
    """``torch.autograd.grad`` with zeros for inputs the output does not depend on: a backbone
    need not use every parameter in its loss (BPR scores items through ``item_embedding(ids)``
    only, so the layer's empty extra rows never enter the graph)."""
    grads = torch.autograd.grad(output, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _random_state():
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_random_state(state):
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
