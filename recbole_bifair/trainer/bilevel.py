"""BiFair's outer level: the hypergradient of the fairness-aware objective with respect to the
LLM item table ``E``, through the inner level's response to ``E``.

This is our reconstruction [ours] of the nested update the abstract describes (the paper's
code is not public; this project was built from its abstract and public summaries). With ``L_in`` the inner level's group-weighted loss, ``lambda``
the outer balancer's weights and ``B_meta`` a batch the inner level has not used:

    F(E)    = sum_g lambda_g L_g(E, theta*(E); B_meta) / sum_g lambda_g  +  beta * ||E - E0||^2
              [+ mu * sum_g lambda_g L^prior_g(E; B_meta) / sum_g lambda_g]   (outer_prior_weight mu)
    dF/dE   = d_E F  +  (d theta* / dE)^T . d_theta F          (direct part + second-order part)

``L^prior`` (:class:`PriorTerm`, off by default) is the loss of the prior-fairness report's
cosine recommender over ``E`` alone, so ``F`` can also target the prior unfairness of ``E``.

``theta*(E)`` is the inner level's answer to ``E``, approximated in one of two ways:
- a look-ahead (DARTS / MAML style): ``theta_k`` after ``lookahead_steps`` inner updates of
  ``theta`` on the look-ahead batch, each either plain SGD with step ``xi``
  (``lookahead_update: sgd``) or the inner optimiser's own update rule with its live state
  (``lookahead_update: optimizer``: Adam's step with the optimiser's current moments).
  ``hypergradient`` says how the second-order part is had:
  ``first_order`` drops it; ``finite_difference`` (one SGD step only) takes the mixed
  Hessian-vector product by central differences, ``eps = 0.01 / ||v||``; ``exact``
  differentiates through the unrolled steps (``torch.func.functional_call``), through the last
  ``lookahead_truncate`` of them when set;
- ``implicit`` (implicit function theorem at the current inner iterate, as Lorraine et al.,
  2020): ``dF/dE = d_E F - (d^2 L_in / dE dtheta) H^-1 d_theta F``, ``H`` the Hessian of
  ``L_in`` in ``theta``, ``H^-1 v`` by a Neumann series (``implicit_solver: neumann``,
  ``implicit_steps + 1`` terms, step ``implicit_lr``) or conjugate gradients (``cg``,
  ``implicit_steps`` iterations, damping ``implicit_damping``).

Every call also returns the split of the hypergradient into its direct part and second-order
part (:class:`Hypergradient`), BiFair's diagnostic of whether the nesting does anything.
:func:`group_weight_hypergradient` is the outer level's gradient for the inner group weights
when they are outer variables too (``balancer: learned``).
"""
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn
from torch.func import functional_call, jvp

from recbole_bifair.trainer.losses import (
    example_losses, gradients, group_gradients_over, group_mean_losses, weighted_group_loss,
)
from recbole_bifair.trainer.resume import capture_random_state, restore_random_state
from recbole_bifair.trainer.settings import (  # noqa: F401  (HypergradientSettings is read here)
    HYPERGRADIENT_MODES, IMPLICIT_SOLVERS, LOOKAHEAD_LEARNERS, LOOKAHEAD_UPDATES, HypergradientSettings,
)

@dataclass
class Hypergradient:
    """``grads`` (dF/dE for each E), the objective's value, and the diagnostic split of the
    hypergradient: ``direct`` (d_E F at the inner answer) and ``second_order`` (grads - direct;
    None for ``first_order``, which does not compute it)."""

    grads: List[torch.Tensor]
    value: torch.Tensor
    direct: List[torch.Tensor] = field(default_factory=list)
    second_order: Optional[List[torch.Tensor]] = None

    def second_order_share(self):
        """``||second-order part|| / ||direct part||`` (None when not computed)."""
        if self.second_order is None:
            return None
        return (_norm(self.second_order) / _norm(self.direct).clamp(min=1e-30)).item()

    def cosine_to_direct(self):
        """Cosine between the full hypergradient and its direct part."""
        full, direct = _flat(self.grads), _flat(self.direct)
        cosine = torch.nn.functional.cosine_similarity(full.double(), direct.double(), dim=0, eps=1e-30)
        return float(cosine.clamp(-1.0, 1.0))


class _ExampleLossModule(nn.Module):
    """``model``'s per-example losses and their items as a module's forward, for ``functional_call``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, interaction):
        return example_losses(self.model, interaction)


class LookAheadObjective:
    """Evaluates BiFair's losses of ``model`` at parameter values given as tensors, so the
    look-ahead ``theta'`` and perturbed ``theta +- eps v`` never touch the model's own weights.

    ``inner_names`` are theta's parameter names, ``llm_names`` E's, as in
    ``model.named_parameters()``; ``policy`` (``losses.LossPolicy``, the one the inner step
    uses) groups per-example losses and turns them into the inner level's loss."""

    def __init__(self, model, inner_names, llm_names, policy):
        self.module = _ExampleLossModule(model)
        self.inner_names = list(inner_names)
        self.llm_names = list(llm_names)
        self.policy = policy

    def example_losses(self, theta, llm, interaction):
        """``(losses, items)`` of the examples of ``interaction`` with ``theta`` and ``E`` given
        as lists."""
        params = {"model." + n: t for n, t in zip(self.inner_names, theta)}
        params.update({"model." + n: t for n, t in zip(self.llm_names, llm)})
        return functional_call(self.module, params, (interaction,))

    def group_losses(self, theta, llm, interaction):
        """``(L_g [K], n_g [K])`` on ``interaction``."""
        return self.policy.group_losses(*self.example_losses(theta, llm, interaction))

    def inner_loss(self, theta, llm, interaction):
        """``L_in``: the inner level's loss, exactly as the inner step computes it (the
        balancer is not updated here)."""
        return self.policy.combine(*self.example_losses(theta, llm, interaction))


def proximity(llm, llm_init, beta):
    """``beta * ||E - E0||^2``: the pull of the LLM tables towards the LLM's own vectors
    (``llm_init`` is None for an outer parameter that is no LLM table, a popularity gate)."""
    return beta * sum((e - e0).pow(2).sum() for e, e0 in zip(llm, llm_init) if e0 is not None)


class SGDUpdate:
    """The look-ahead's inner update ``theta - xi * (g + weight_decay * theta)``."""

    def __init__(self, xi, weight_decay=0.0):
        self.xi, self.weight_decay = xi, weight_decay

    def __call__(self, theta, grads):
        return [t - self.xi * (g + self.weight_decay * t if self.weight_decay else g) for t, g in zip(theta, grads)]


class AdamUpdate:
    """Adam's update rule as a differentiable function, started from an ``torch.optim.Adam``'s
    live state (its moments and each parameter's own step count; zeros before its first step),
    so the look-ahead follows the step the inner optimiser would take, AdamW's decoupled weight
    decay included. The optimiser itself is not changed."""

    def __init__(self, optimizer, params):
        group = optimizer.param_groups[0]
        self.lr, (self.beta1, self.beta2) = group["lr"], group["betas"]
        self.eps, self.weight_decay = group["eps"], group["weight_decay"]
        self.decoupled = bool(group.get("decoupled_weight_decay", False))
        states = [optimizer.state.get(p, {}) for p in params]
        self.exp_avg = [s["exp_avg"].detach() if "exp_avg" in s else torch.zeros_like(p) for s, p in zip(states, params)]
        self.exp_avg_sq = [s["exp_avg_sq"].detach() if "exp_avg_sq" in s else torch.zeros_like(p)
                           for s, p in zip(states, params)]
        # per parameter, as Adam counts: one that never had a gradient has no state (step 0)
        self.steps = [int(float(s["step"])) if "step" in s else 0 for s in states]

    def __call__(self, theta, grads):
        updated = []
        for i, (t, g) in enumerate(zip(theta, grads)):
            self.steps[i] += 1
            correction1, correction2 = 1 - self.beta1 ** self.steps[i], 1 - self.beta2 ** self.steps[i]
            if self.weight_decay and self.decoupled:
                t = t * (1 - self.lr * self.weight_decay)
            elif self.weight_decay:
                g = g + self.weight_decay * t
            self.exp_avg[i] = self.beta1 * self.exp_avg[i] + (1 - self.beta1) * g
            self.exp_avg_sq[i] = self.beta2 * self.exp_avg_sq[i] + (1 - self.beta2) * g * g
            # sqrt(v + tiny): differentiable where a parameter has had no gradient yet (v = 0)
            denominator = torch.sqrt(self.exp_avg_sq[i] / correction2 + 1e-30) + self.eps
            updated.append(t - self.lr * (self.exp_avg[i] / correction1) / denominator)
        return updated


def lookahead_update(settings, optimizer=None, params=()):
    """The update rule of the look-ahead: SGD with ``xi``, or the inner optimiser's (Adam)."""
    if settings.update == "optimizer" and isinstance(optimizer, torch.optim.Adam):
        return AdamUpdate(optimizer, list(params))
    if settings.update == "optimizer" and optimizer is not None and not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(f"lookahead_update: optimizer supports Adam and SGD inner optimisers, got "
                         f"{type(optimizer).__name__}; use lookahead_update: sgd.")
    if settings.update == "optimizer" and optimizer is not None:
        group = optimizer.param_groups[0]
        return SGDUpdate(group["lr"], group["weight_decay"])
    return SGDUpdate(settings.xi)


def unrolled_lookahead(objective, theta, llm, batch, settings, update):
    """``theta_k``: ``settings.steps`` inner updates from ``theta`` on ``batch``. With ``exact``,
    the graph runs through the last ``truncate`` steps (all when unset); otherwise ``theta_k``
    is a constant."""
    differentiable = settings.mode == "exact"
    kept = settings.steps if settings.truncate is None else min(settings.truncate, settings.steps)
    current = list(theta)
    for step in range(settings.steps):
        in_graph = differentiable and step >= settings.steps - kept
        if not in_graph:
            current = [t.detach().requires_grad_() for t in current]
        grads = gradients(objective.inner_loss(current, llm, batch), current, create_graph=in_graph)
        if not in_graph:
            grads = [g.detach() for g in grads]
        current = update(current, grads)
    if not differentiable:
        current = [t.detach().requires_grad_() for t in current]
    return current


@dataclass
class OuterProblem:
    """What an outer step works on: the ``objective``; ``theta`` (projector and backbone) and
    ``llm`` (the outer parameters: ``E``, and popularity gates where the model has them), the
    current parameter tensors, which it does not modify; ``llm_init`` (``E0`` of each table,
    None for a gate); the outer ``balancer``; the hypergradient ``settings``; the inner ``optimizer``,
    whose live state ``lookahead_update: optimizer`` follows; ``shared``, the entries of
    ``theta`` an MGDA balancer compares the group gradients over; and ``prior``, the optional
    prior-unfairness term of ``F``."""

    objective: LookAheadObjective
    theta: List[torch.Tensor]
    llm: List[torch.Tensor]
    llm_init: List[torch.Tensor]
    balancer: object
    settings: HypergradientSettings
    optimizer: Optional[torch.optim.Optimizer] = None
    shared: tuple = ()
    prior: Optional["PriorTerm"] = None


def outer_hypergradient(problem, *, lookahead_batch, meta_batch):
    """:class:`Hypergradient` of ``F`` with respect to ``E``, in the method's order: the
    look-ahead ``theta_k`` on ``lookahead_batch``; the group losses on ``meta_batch`` at
    ``theta_k``; the outer balancer's update and weights; ``F``; its hypergradient (direct part
    plus the second-order part through ``theta_k``); with ``xi = 0`` there is no look-ahead
    (``HypergradientSettings.lookahead_is_identity``). ``implicit`` replaces the look-ahead by the
    current ``theta`` and the second-order part by the implicit-function-theorem term, with its
    Hessian on ``lookahead_batch``."""
    settings = problem.settings
    theta = [t.detach().requires_grad_() for t in problem.theta]
    llm = [e.detach().requires_grad_() for e in problem.llm]
    if settings.mode == "implicit":
        return _implicit_hypergradient(problem, theta, llm, lookahead_batch, meta_batch)
    if settings.lookahead_is_identity:
        theta_k = theta
    else:
        lookahead_random_state = capture_random_state()
        update = lookahead_update(settings, problem.optimizer, problem.theta)  # its state is keyed by theta
        theta_k = unrolled_lookahead(problem.objective, theta, llm, lookahead_batch, settings, update)
    theta_at = [t.detach().requires_grad_() for t in theta_k]  # F's own partials, at theta_k
    value = outer_objective(problem, theta_at, llm, meta_batch)
    if settings.mode == "first_order" or settings.lookahead_is_identity:
        direct = _detached(gradients(value, llm))
        second = None if settings.mode == "first_order" else [torch.zeros_like(d) for d in direct]
        return Hypergradient(direct, value.detach(), direct, second)
    grads_at = gradients(value, llm + theta_at)
    direct, v = grads_at[: len(llm)], grads_at[len(llm):]
    if settings.mode == "exact":
        second = gradients(theta_k, llm, grad_outputs=v)
    else:
        hvp = finite_difference_mixed_hvp(problem.objective, theta, llm, lookahead_batch, v, lookahead_random_state)
        second = [-settings.xi * h for h in hvp]
    return _split(direct, second, value)


def outer_objective(problem, theta, llm, meta_batch, update_balancer=True):
    """``F`` at ``(E, theta)`` on ``meta_batch``: the group losses there update the outer
    balancer (an MGDA balancer also gets their gradients over ``problem.shared``; not with
    ``update_balancer=False``), whose weights ``lambda`` then weight them, plus the proximity
    term."""
    meta_losses, meta_counts = problem.objective.group_losses(theta, llm, meta_batch)
    if update_balancer:
        group_gradients = (
            group_gradients_over(meta_losses, [theta[i] for i in problem.shared])
            if problem.balancer.needs_gradients
            else None
        )
        problem.balancer.update(meta_losses.detach(), meta_counts, group_gradients)
    lambdas = problem.balancer.weights().to(meta_losses.device)
    value = weighted_group_loss(meta_losses, meta_counts, lambdas) + proximity(llm, problem.llm_init, problem.settings.beta)
    if problem.prior is not None:
        tables = [e for e, e0 in zip(llm, problem.llm_init) if e0 is not None]
        value = value + problem.prior(tables, meta_batch, lambdas)
    return value


@dataclass
class GroupWeightGradient:
    """``dF/dphi / xi`` for the inner group weights' logits ``phi`` (``gradient`` [K]), and
    ``F``'s value at the look-ahead."""

    gradient: torch.Tensor
    value: torch.Tensor


def group_weight_hypergradient(problem, log_weights, batch, meta_batch, update_balancer=True):
    """The outer level's hypergradient for the inner level's group weights ``w = softmax(phi)``
    (``balancer: learned``): learning to reweight (Ren et al., 2018) with item groups in place of
    examples [ours]. With ``L_in = sum_g c_g L_g + spread`` on ``batch`` (``c_g = w_g [n_g > 0]
    / sum_h w_h [n_h > 0]``), the SGD look-ahead ``theta' = theta - xi grad_theta L_in`` and ``F``
    on ``meta_batch`` at ``theta'`` (``E`` held):

        dF/dphi = -xi * d/dphi sum_g c_g(phi) a_g,    a_g = <grad_theta L_g(theta), grad_theta F(theta')>

    exactly, for one SGD step (the spread term does not depend on ``phi``). Returned divided by
    ``xi`` (``lookahead_lr``; at ``xi = 0`` the limit, ``theta' = theta``), since the Adam step
    of :class:`~recbole_bifair.trainer.balancer.LearnedBalancer` does not see the scale. A group
    whose training gradient points where ``F`` falls gains weight."""
    objective = problem.objective
    theta = [t.detach() for t in problem.theta]
    llm = [e.detach() for e in problem.llm]
    theta_next = theta
    if problem.settings.xi:
        theta_grad = [t.requires_grad_() for t in theta]
        inner_grads = gradients(objective.inner_loss(theta_grad, llm, batch), theta_grad)
        theta_next = SGDUpdate(problem.settings.xi)(theta, inner_grads)
    theta_at = [t.detach().requires_grad_() for t in theta_next]
    value = outer_objective(problem, theta_at, llm, meta_batch, update_balancer)
    direction = tuple(g.detach() for g in gradients(value, theta_at))

    def group_losses_at(*values):
        return objective.group_losses(list(values), llm, batch)

    # a_g for every group at once: the group losses' derivative along grad F (forward mode)
    _, alignment, counts = jvp(group_losses_at, tuple(t.detach() for t in theta), direction, has_aux=True)
    phi = log_weights.detach().requires_grad_()
    present = (counts > 0).to(phi.dtype)
    weights = torch.softmax(phi, dim=0) * present
    shares = weights / weights.sum().clamp(min=1e-30)
    (gradient,) = torch.autograd.grad(-(shares * alignment.to(phi.dtype)).sum(), phi)
    return GroupWeightGradient(gradient, value.detach())


@dataclass
class PriorTerm:
    """``weight * sum_tables sum_g w_g L^prior_g(E)``: the outer objective's prior-unfairness
    term [ours]. ``loss`` gives per-example losses of a table on a batch
    (``evaluator.prior.PriorLoss``: the prior-fairness report's cosine recommender); they are
    grouped by ``item_group`` and weighted by ``balancer``'s weights, a balancer of the term's
    own that follows its group losses, or, without one, by the outer balancer's ``lambda``
    (from the model's group losses). It depends on ``E`` only, so it adds to the
    hypergradient's direct part."""

    loss: object
    weight: float
    item_group: torch.Tensor
    n_groups: int
    balancer: object = None

    def __call__(self, llm, batch, lambdas):
        grouped = [self._group_losses(table, batch) for table in llm]
        if self.balancer is not None:
            mean_losses = torch.stack([losses.detach() for losses, _ in grouped]).mean(dim=0)
            self.balancer.update(mean_losses, grouped[0][1])
            lambdas = self.balancer.weights().to(mean_losses.device)
        return self.weight * sum(weighted_group_loss(losses, counts, lambdas) for losses, counts in grouped)

    def _group_losses(self, table, batch):
        losses, items = self.loss.example_losses(table, batch)
        return group_mean_losses(losses, self.item_group[items], self.n_groups)


def _implicit_hypergradient(problem, theta, llm, hessian_batch, meta_batch):
    """The implicit-function-theorem hypergradient at the current ``theta``."""
    objective = problem.objective
    value = outer_objective(problem, theta, llm, meta_batch)
    grads_at = gradients(value, llm + theta)
    direct, v = grads_at[: len(llm)], grads_at[len(llm):]
    inner_grads = gradients(objective.inner_loss(theta, llm, hessian_batch), theta, create_graph=True)

    def hessian_vector_product(vector):
        return gradients(inner_grads, theta, grad_outputs=vector, retain_graph=True)

    solve = neumann_inverse_hvp if problem.settings.implicit_solver == "neumann" else conjugate_gradient_inverse_hvp
    x = solve(hessian_vector_product, v, problem.settings)
    mixed = gradients(inner_grads, llm, grad_outputs=[xi.detach() for xi in x])
    return _split(direct, [-m for m in mixed], value)


def neumann_inverse_hvp(hvp, v, settings):
    """``H^-1 v ~ alpha * sum_{j=0..J} (I - alpha H)^j v`` (``alpha = implicit_lr``,
    ``J = implicit_steps``): Lorraine et al.'s approximation; converges when
    ``alpha * ||H|| < 1``."""
    alpha = settings.implicit_lr
    term = [t.detach() for t in v]
    total = [t.clone() for t in term]
    for _ in range(settings.implicit_steps):
        h_term = hvp(term)
        term = [t - alpha * h.detach() for t, h in zip(term, h_term)]
        total = [s + t for s, t in zip(total, term)]
    return [alpha * s for s in total]


def conjugate_gradient_inverse_hvp(hvp, v, settings):
    """``(H + damping I)^-1 v`` by ``implicit_steps`` conjugate-gradient iterations."""
    damping = settings.implicit_damping

    def apply(vector):
        return [h.detach() + damping * x for h, x in zip(hvp(vector), vector)]

    x = [torch.zeros_like(t) for t in v]
    residual = [t.detach().clone() for t in v]
    direction = [r.clone() for r in residual]
    residual_norm = _dot(residual, residual)
    for _ in range(settings.implicit_steps):
        if residual_norm.item() < 1e-20:
            break
        applied = apply(direction)
        curvature = _dot(direction, applied)
        if curvature.item() <= 0:  # H not positive definite along this direction: stop here
            break
        step = residual_norm / curvature
        x = [xi + step * d for xi, d in zip(x, direction)]
        residual = [r - step * a for r, a in zip(residual, applied)]
        new_norm = _dot(residual, residual)
        direction = [r + (new_norm / residual_norm) * d for r, d in zip(residual, direction)]
        residual_norm = new_norm
    return x


def _split(direct, second, value):
    direct, second = _detached(direct), _detached(second)
    grads = [d + s for d, s in zip(direct, second)]
    return Hypergradient(grads, value.detach(), direct, second)


def _detached(tensors):
    return [t.detach() for t in tensors]


def _dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def _flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def _norm(tensors):
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))


def finite_difference_mixed_hvp(objective, theta, llm, batch, v, random_state):
    """``(d^2 L_in / dE dtheta) . v`` by central differences along ``v`` (``eps = 0.01/||v||``).
    Both evaluations replay ``random_state``, the one the look-ahead's inner loss was computed
    with, so all three share their dropout masks."""
    norm = torch.sqrt(sum((t.detach() ** 2).sum() for t in v))
    eps = 0.01 / norm.clamp(min=1e-12)
    after = capture_random_state()

    def grad_llm_at(sign):
        restore_random_state(random_state)
        shifted = [(t + sign * eps * d).detach() for t, d in zip(theta, v)]
        loss = objective.inner_loss(shifted, llm, batch)
        return gradients(loss, llm)

    plus, minus = grad_llm_at(1.0), grad_llm_at(-1.0)
    restore_random_state(after)
    return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
