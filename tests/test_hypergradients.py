"""The hypergradients that carry the inner level's response to E, on small float64 problems
with a known answer: the unrolled look-ahead through Adam's live state against numerical
differentiation, the implicit (IFT) hypergradient against the derivative of the inner level's
exact solution, and the diagnostic split into direct and second-order parts."""
import pytest
import torch

from recbole_bifair.trainer.balancer import UniformBalancer
from recbole_bifair.trainer.bilevel import AdamUpdate, HypergradientSettings, OuterProblem, outer_hypergradient

N_THETA, N_LLM, RIDGE = 6, 4, 0.5


@pytest.fixture(autouse=True)
def float64():
    """These problems are checked in float64; other tests keep torch's default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class RidgeObjective:
    """Inner loss ``||A theta - B E||^2 + ridge ||theta||^2`` (strongly convex in theta, so
    ``theta*(E)`` has a closed form); two "groups" on the meta batch, ``||C_g theta - d_g||^2``
    plus a direct term ``0.1 ||E||^2``. ``E`` is one ``[N_LLM]`` table."""

    def __init__(self, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.a = torch.randn(8, N_THETA, generator=generator, dtype=torch.float64)
        self.b = torch.randn(8, N_LLM, generator=generator, dtype=torch.float64)
        self.c = torch.randn(2, 3, N_THETA, generator=generator, dtype=torch.float64)
        self.d = torch.randn(2, 3, generator=generator, dtype=torch.float64)

    def inner_loss(self, theta, llm, batch):
        (t,), (e,) = theta, llm
        return (self.a @ t - self.b @ e).pow(2).sum() + RIDGE * t.pow(2).sum()

    def group_losses(self, theta, llm, batch):
        (t,), (e,) = theta, llm
        losses = (torch.einsum("gij,j->gi", self.c, t) - self.d).pow(2).sum(dim=1) + 0.1 * e.pow(2).sum()
        return losses, torch.tensor([3, 3])

    def solution(self, e):
        hessian = self.a.T @ self.a + RIDGE * torch.eye(N_THETA)
        return torch.linalg.solve(hessian, self.a.T @ (self.b @ e))

    def outer_value(self, theta, e):
        losses, _ = self.group_losses([theta], [e], None)
        return losses.mean()


def numerical_gradient(function, e, h=1e-6):
    grad = torch.zeros_like(e)
    for i in range(e.numel()):
        step = torch.zeros_like(e)
        step[i] = h
        grad[i] = (function(e + step) - function(e - step)) / (2 * h)
    return grad


def hypergradient(objective, theta, e, settings, optimizer=None):
    problem = OuterProblem(objective, [theta], [e], [torch.zeros_like(e)], UniformBalancer(2), settings,
                           optimizer=optimizer)
    return outer_hypergradient(problem, lookahead_batch=None, meta_batch=None)


def adam_with_history(theta, steps=3, lr=0.05):
    """An Adam optimiser over a copy of ``theta`` that has taken ``steps`` real steps."""
    param = torch.nn.Parameter(theta.clone())
    optimizer = torch.optim.Adam([param], lr=lr)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        param.grad = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        optimizer.step()
    return param, optimizer


def test_differentiable_adam_step_is_the_optimisers_own_step():
    theta = torch.randn(N_THETA)
    param, optimizer = adam_with_history(theta)
    grad = torch.randn(N_THETA)
    (predicted,) = AdamUpdate(optimizer, [param])([param.detach()], [grad])
    param.grad = grad.clone()
    optimizer.step()
    assert torch.allclose(predicted, param.detach(), rtol=1e-10, atol=1e-12)


def test_adam_step_follows_each_parameters_own_step_count():
    """A parameter that never had a gradient (a backbone's empty extra rows, first in theta)
    has no optimiser state: the others' step counts must still set their bias corrections."""
    unused = torch.nn.Parameter(torch.zeros(0, 3))
    param = torch.nn.Parameter(torch.randn(N_THETA))
    optimizer = torch.optim.Adam([unused, param], lr=0.05)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        param.grad = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        optimizer.step()
    grad = torch.randn(N_THETA)
    _, predicted = AdamUpdate(optimizer, [unused, param])([unused.detach(), param.detach()], [torch.zeros(0, 3), grad])
    param.grad = grad.clone()
    optimizer.step()
    assert torch.allclose(predicted, param.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_step_applies_the_optimisers_own_weight_decay(optimizer_class):
    theta = torch.randn(N_THETA)
    param = torch.nn.Parameter(theta.clone())
    optimizer = optimizer_class([param], lr=0.05, weight_decay=0.1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        param.grad = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        optimizer.step()
    grad = torch.randn(N_THETA)
    (predicted,) = AdamUpdate(optimizer, [param])([param.detach()], [grad])
    param.grad = grad.clone()
    optimizer.step()
    assert torch.allclose(predicted, param.detach(), rtol=1e-10, atol=1e-12)


def test_sgd_optimizer_step_applies_its_weight_decay():
    from recbole_bifair.trainer.bilevel import lookahead_update

    param = torch.nn.Parameter(torch.randn(N_THETA))
    optimizer = torch.optim.SGD([param], lr=0.05, weight_decay=0.1)
    grad = torch.randn(N_THETA)
    rule = lookahead_update(HypergradientSettings(mode="exact", update="optimizer", xi=1e-3, beta=0.0), optimizer, [param])
    (predicted,) = rule([param.detach()], [grad])
    param.grad = grad.clone()
    optimizer.step()
    assert torch.allclose(predicted, param.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("key, value", [("update", "adam"), ("implicit_solver", "CG")])
def test_settings_refuse_unknown_update_rules_and_solvers(key, value):
    with pytest.raises(ValueError, match=key.replace("update", "lookahead_update")):
        HypergradientSettings(**{key: value})


@pytest.mark.parametrize("update", ["sgd", "optimizer"])
def test_unrolled_exact_hypergradient_matches_numerical_differentiation(update):
    objective = RidgeObjective()
    theta, e = torch.randn(N_THETA), torch.randn(N_LLM)
    param, optimizer = adam_with_history(theta)
    settings = HypergradientSettings(mode="exact", xi=0.01, steps=3, update=update, beta=0.0)
    result = hypergradient(objective, param, e, settings, optimizer)

    def unrolled_value(table):
        rule = AdamUpdate(optimizer, [param]) if update == "optimizer" else None
        t = param.detach().clone().requires_grad_()
        for _ in range(3):
            (g,) = torch.autograd.grad(objective.inner_loss([t], [table], None), [t])
            t = rule([t], [g])[0] if rule else t - 0.01 * g
            t = t.detach().requires_grad_()
        return objective.outer_value(t.detach(), table)

    assert torch.allclose(result.grads[0], numerical_gradient(unrolled_value, e), rtol=1e-5, atol=1e-7)
    assert torch.allclose(result.grads[0], result.direct[0] + result.second_order[0])
    assert result.second_order_share() > 1e-3


def test_truncated_unroll_keeps_only_the_last_steps_in_the_graph():
    objective = RidgeObjective()
    theta, e = torch.randn(N_THETA), torch.randn(N_LLM)
    full = hypergradient(objective, theta, e, HypergradientSettings(mode="exact", xi=0.01, steps=4, beta=0.0))
    truncated = hypergradient(objective, theta, e, HypergradientSettings(mode="exact", xi=0.01, steps=4, truncate=1, beta=0.0))
    one_step_share = truncated.second_order_share()
    assert 0 < one_step_share < full.second_order_share()
    assert torch.allclose(full.direct[0], truncated.direct[0])


@pytest.mark.parametrize("solver, steps, lr", [("cg", 20, 0.01), ("neumann", 3000, 0.012)])
def test_implicit_hypergradient_is_the_derivative_of_the_inner_solution(solver, steps, lr):
    objective = RidgeObjective()
    e = torch.randn(N_LLM)
    theta_star = objective.solution(e)
    settings = HypergradientSettings(mode="implicit", implicit_solver=solver, implicit_steps=steps, implicit_lr=lr, beta=0.0)
    result = hypergradient(objective, theta_star, e, settings)
    expected = numerical_gradient(lambda table: objective.outer_value(objective.solution(table), table), e)
    assert torch.allclose(result.grads[0], expected, rtol=1e-4, atol=1e-6)
    first_order = hypergradient(objective, theta_star, e, HypergradientSettings(mode="first_order", xi=1e-3, beta=0.0))
    assert not torch.allclose(first_order.grads[0], expected, rtol=1e-2)
    assert first_order.second_order is None and result.second_order_share() > 0.01


def test_finite_difference_refuses_a_multi_step_lookahead():
    with pytest.raises(ValueError, match="lookahead_steps: 1"):
        HypergradientSettings(mode="finite_difference", steps=2)


def test_cosine_to_direct_is_one_without_second_order_part():
    objective = RidgeObjective()
    theta, e = torch.randn(N_THETA), torch.randn(N_LLM)
    zero_step = hypergradient(objective, theta, e, HypergradientSettings(mode="exact", xi=0.0, beta=0.0))
    assert zero_step.second_order_share() == pytest.approx(0.0, abs=1e-12)
    assert zero_step.cosine_to_direct() == pytest.approx(1.0)


def test_cosine_and_share_of_known_parts():
    """The diagnostic's two numbers on parts whose values are known: orthogonal parts 3 and 4
    (cosine 3/5, share 4/3), and a second-order part that reverses the direct one (cosine -1)."""
    from recbole_bifair.trainer.bilevel import Hypergradient

    direct, second = [torch.tensor([3.0, 0.0])], [torch.tensor([0.0, 4.0])]
    turned = Hypergradient([direct[0] + second[0]], torch.tensor(0.0), direct, second)
    assert turned.cosine_to_direct() == pytest.approx(0.6) and turned.second_order_share() == pytest.approx(4 / 3)
    direct, second = [torch.tensor([1.0, 0.0])], [torch.tensor([-3.0, 0.0])]
    reversed_ = Hypergradient([direct[0] + second[0]], torch.tensor(0.0), direct, second)
    assert reversed_.cosine_to_direct() == pytest.approx(-1.0) and reversed_.second_order_share() == pytest.approx(3.0)
