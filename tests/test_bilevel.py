"""The outer level's hypergradient: exact against numerical differentiation, finite
differences against exact, first-order as the direct term, no look-ahead when its step is 0; which parameters each level moves;
the look-ahead's inner loss is the inner step's loss for every inner weighting; the prior-unfairness term."""
import pytest
import torch

from recbole_bifair.trainer.balancer import FixedBalancer, UniformBalancer
from recbole_bifair.trainer.bilevel import HypergradientSettings, OuterProblem, outer_hypergradient
from recbole_bifair.trainer.losses import group_mean_losses, weighted_group_loss

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attn_dropout_prob=0.0, projector_dropout=0.0)
XI, BETA = 0.5, 0.01


@pytest.fixture
def setting(tiny):
    """A float64 BiFairSASRec without dropout, two training batches and uniform weights."""
    config, train_data, _, _, model, trainer = tiny(train_batch_size=64, balancer="uniform", **NO_DROPOUT)
    trainer.set_up(train_data)
    model.double()
    batches = iter(train_data)
    train_batch, meta_batch = next(batches), next(batches)
    n_groups = trainer.item_groups.n_groups
    theta = [p for _, p in trainer.training_step.inner_named]
    llm = [p for _, p in trainer.training_step.outer_named]
    llm_init = [layer.llm_weight_init for layer in model.llm_item_embeddings()]
    return trainer.training_step.objective, theta, llm, llm_init, train_batch, meta_batch, n_groups


def hypergradient(setting, mode):
    objective, theta, llm, llm_init, train_batch, meta_batch, n_groups = setting
    problem = OuterProblem(objective, theta, llm, llm_init, UniformBalancer(n_groups),
                           HypergradientSettings(mode=mode, xi=XI, beta=BETA))
    result = outer_hypergradient(problem, lookahead_batch=train_batch, meta_batch=meta_batch)
    return result.grads[0], result.value


def lookahead_objective_value(setting, llm_table):
    """F(E) evaluated from scratch: theta'(E) = theta - xi grad L_in(E, theta), then F."""
    objective, theta, _, llm_init, train_batch, meta_batch, n_groups = setting
    theta = [t.detach().requires_grad_() for t in theta]
    inner = objective.inner_loss(theta, [llm_table], train_batch)
    grads = torch.autograd.grad(inner, theta)
    theta_prime = [t - XI * g for t, g in zip(theta, grads)]
    losses, counts = objective.group_losses(theta_prime, [llm_table], meta_batch)
    present = (counts > 0).double()
    lam = present / n_groups
    return (lam * losses).sum() / lam.sum() + BETA * (llm_table - llm_init[0]).pow(2).sum()


def test_exact_hypergradient_matches_numerical_derivative(setting):
    grad, value = hypergradient(setting, "exact")
    llm = setting[2][0].detach()
    assert value.item() == pytest.approx(lookahead_objective_value(setting, llm).item(), rel=1e-9)
    torch.manual_seed(0)
    for _ in range(3):
        direction = torch.randn_like(llm)
        direction /= direction.norm()
        h = 1e-4
        numerical = (lookahead_objective_value(setting, llm + h * direction)
                     - lookahead_objective_value(setting, llm - h * direction)) / (2 * h)
        assert (grad * direction).sum().item() == pytest.approx(numerical.item(), rel=1e-4, abs=1e-9)


def test_finite_difference_agrees_with_exact_and_first_order_differs(setting):
    exact, _ = hypergradient(setting, "exact")
    finite, _ = hypergradient(setting, "finite_difference")
    first_order, _ = hypergradient(setting, "first_order")
    second_order_term = (exact - first_order).norm()
    assert second_order_term > 1e-3 * exact.norm()
    assert (finite - exact).norm() < 1e-2 * second_order_term


def test_first_order_is_the_direct_term(setting):
    objective, theta, llm, llm_init, train_batch, meta_batch, n_groups = setting
    first_order, _ = hypergradient(setting, "first_order")
    theta = [t.detach().requires_grad_() for t in theta]
    grads = torch.autograd.grad(objective.inner_loss(theta, llm, train_batch), theta)
    theta_prime = [(t - XI * g).detach() for t, g in zip(theta, grads)]
    table = llm[0].detach().requires_grad_()
    losses, counts = objective.group_losses(theta_prime, [table], meta_batch)
    lam = (counts > 0).double()
    value = (lam * losses).sum() / lam.sum() + BETA * (table - llm_init[0]).pow(2).sum()
    (direct,) = torch.autograd.grad(value, table)
    assert torch.allclose(first_order, direct, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_zero_lookahead_step_is_the_direct_term_at_theta_without_a_lookahead(setting, mode):
    objective, theta, llm, llm_init, _, meta_batch, n_groups = setting
    problem = OuterProblem(objective, theta, llm, llm_init, UniformBalancer(n_groups),
                           HypergradientSettings(mode=mode, xi=0.0, beta=BETA))
    result = outer_hypergradient(problem, lookahead_batch=None, meta_batch=meta_batch)
    table = llm[0].detach().requires_grad_()
    losses, counts = objective.group_losses([t.detach() for t in theta], [table], meta_batch)
    lam = (counts > 0).double()
    value = (lam * losses).sum() / lam.sum() + BETA * (table - llm_init[0]).pow(2).sum()
    (direct,) = torch.autograd.grad(value, table)
    assert torch.allclose(result.grads[0], direct, rtol=1e-8, atol=1e-12)
    assert result.second_order_share() == (None if mode == "first_order" else 0.0)


@pytest.mark.parametrize("own_balancer", [False, True])
def test_prior_term_adds_its_group_weighted_gradient_to_the_direct_part(tiny, own_balancer):
    """The term's group weights are the outer balancer's (uniform here), or, with a balancer of
    its own, a softmax over the term's own group losses."""
    own = {"outer_prior_balancer": "softmax", "balancer_temperature": 0.5} if own_balancer else {}
    _, train_data, _, _, model, trainer = tiny(train_batch_size=64, balancer="uniform", outer_prior_weight=0.5,
                                               outer_prior_temperature=0.2, **own, **NO_DROPOUT)
    trainer.set_up(train_data)
    model.double()
    batches = iter(train_data)
    lookahead_batch, meta_batch = next(batches), next(batches)
    prior = trainer.training_step.prior_term
    with_prior = trainer.training_step.hypergradient(lookahead_batch, meta_batch, trainer.hypergradient, trainer.training_step.outer_balancer, prior)
    without = trainer.training_step.hypergradient(lookahead_batch, meta_batch, trainer.hypergradient, trainer.training_step.outer_balancer, None)

    table = trainer.training_step.outer_named[0][1].detach().requires_grad_()
    losses, items = prior.loss.example_losses(table, meta_batch)
    group_losses, counts = group_mean_losses(losses, trainer.training_step.policy.item_group[items], trainer.item_groups.n_groups)
    present = counts > 0
    weights = present.double()
    if own_balancer:
        assert trainer.training_step.balancers()["prior"] is prior.balancer
        filled = torch.where(present, group_losses.detach(), group_losses.detach()[present].mean())
        expected = torch.softmax(filled / 0.5, dim=0)  # the first update: the EMA is the batch's losses
        torch.testing.assert_close(prior.balancer.weights().double(), expected, rtol=1e-5, atol=1e-7)
        assert expected[present].max() / expected[present].min() > 1.01  # not the uniform outer weights
        weights = prior.balancer.weights()  # float32, as the balancer keeps them
    (prior_grad,) = torch.autograd.grad(0.5 * weighted_group_loss(group_losses, counts, weights), table)
    assert prior_grad.norm() > 1e-3 * without.grads[0].norm()
    torch.testing.assert_close(with_prior.grads[0], without.grads[0] + prior_grad, rtol=1e-8, atol=1e-12)


def test_hypergradient_leaves_model_parameters_untouched(setting):
    before = [p.detach().clone() for p in setting[1] + setting[2]]
    hypergradient(setting, "exact")
    hypergradient(setting, "finite_difference")
    after = setting[1] + setting[2]
    assert all(torch.equal(b, a) for b, a in zip(before, after))


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _moved(before, params):
    return [not torch.equal(b, p.detach()) for b, p in zip(before, params)]


def test_inner_step_moves_theta_not_e_and_outer_step_moves_only_e(tiny):
    _, train_data, _, _, model, trainer = tiny(train_batch_size=64)
    trainer.set_up(train_data)
    model.train()
    batches = iter(train_data)
    first, second = next(batches), next(batches)
    llm, inner = model.llm_parameters(), model.inner_parameters()

    llm_before, inner_before = _snapshot(llm), _snapshot(inner)
    trainer.training_step.inner_update(first)
    assert not any(_moved(llm_before, llm))
    assert sum(_moved(inner_before, inner)) >= len(inner) - 1  # every weight that gets a gradient

    llm_before, inner_before = _snapshot(llm), _snapshot(inner)
    trainer.training_step.outer_update(first, second)
    assert all(_moved(llm_before, llm))
    assert not any(_moved(inner_before, inner))
    assert all(p.requires_grad for p in llm)


def test_lookahead_objective_reads_parameters_as_given(setting):
    objective, theta, llm, _, train_batch, _, _ = setting
    base = objective.inner_loss(theta, llm, train_batch)
    shifted = objective.inner_loss(theta, [llm[0] + 0.5], train_batch)
    assert not torch.isclose(base, shifted)


@pytest.mark.parametrize("settings", [{"inner_weighting": "none"}, {"inner_weighting": "item_ips"},
                                      {"loss_spread_weight": 0.5}, {"balancer": "softmax"}])
def test_lookahead_inner_loss_is_the_inner_steps_loss(tiny, settings):
    _, train_data, _, _, model, trainer = tiny(train_batch_size=64, **NO_DROPOUT, **settings)
    trainer.set_up(train_data)
    model.eval()
    batch = next(iter(train_data))
    theta = [p for _, p in trainer.training_step.inner_named]
    llm = [p for _, p in trainer.training_step.outer_named]
    with torch.no_grad():
        step_loss = trainer.training_step.policy.loss(trainer.model, batch)
    lookahead = trainer.training_step.objective.inner_loss(theta, llm, batch)
    assert lookahead.item() == pytest.approx(step_loss.item(), rel=1e-6)
    assert trainer.training_step.objective.policy is trainer.training_step.policy  # one policy, both levels


@pytest.mark.parametrize("settings", [{}, {"hypergradient": "exact", "lookahead_lr": 0.001},
                                      {"dual_fusion": "popularity_gate", "meta_split": "last_train_item"}])
def test_outer_update_moves_e_down_its_hypergradient_by_adams_first_step(tiny, settings):
    """Adam's first step moves each outer parameter by ``-lr * g / (|g| + eps)``, ``g`` the
    hypergradient of F at the step's own group weights: a sign error, a stuck E or another step
    size fails here."""
    _, train_data, _, _, model, trainer = tiny(train_batch_size=64, **NO_DROPOUT, **settings)
    step = trainer.set_up(train_data)
    model.train()
    batches = iter(train_data)
    first, second = next(batches), next(batches)
    expected_grads = step.hypergradient(first, second, trainer.hypergradient, *step.group_weighting_copy()).grads
    before = [p.detach().clone() for _, p in step.outer_named]
    step.outer_update(first, second)
    assert step.outer_steps == 1
    for (name, param), start, grad, group in zip(step.outer_named, before, expected_grads, _lr_of(step)):
        expected = -group["lr"] * grad / (grad.abs() + group["eps"])
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(param.detach() - start, expected, rtol=2e-3, atol=1e-9, msg=name)


def _lr_of(step):
    """The outer optimiser's parameter group of each outer parameter, in ``outer_named``'s order."""
    group_of = {id(p): g for g in step.outer_optimizer.param_groups for p in g["params"]}
    return [group_of[id(p)] for _, p in step.outer_named]


def test_outer_objective_weights_the_group_losses_by_the_outer_balancer(setting):
    """F = sum_g lambda_g L_g / sum_g lambda_g + beta ||E - E0||^2 with unequal lambda: the outer
    balancer's weights, not a plain mean, enter F."""
    objective, theta, llm, llm_init, _, meta_batch, n_groups = setting
    weights = torch.arange(1, n_groups + 1, dtype=torch.float64) ** 2
    problem = OuterProblem(objective, theta, llm, llm_init, FixedBalancer(n_groups, weights.tolist()),
                           HypergradientSettings(mode="first_order", xi=0.0, beta=BETA))
    result = outer_hypergradient(problem, lookahead_batch=None, meta_batch=meta_batch)
    losses, counts = objective.group_losses([t.detach() for t in theta], [e.detach() for e in llm], meta_batch)
    present = weights * (counts > 0).double()
    expected = (present * losses).sum() / present.sum() + BETA * (llm[0].detach() - llm_init[0]).pow(2).sum()
    assert result.value.item() == pytest.approx(expected.item(), rel=1e-6)
    plain = losses[counts > 0].mean() + BETA * (llm[0].detach() - llm_init[0]).pow(2).sum()
    assert abs(plain.item() - expected.item()) > 1e-4 * abs(expected.item())  # the weights matter here
