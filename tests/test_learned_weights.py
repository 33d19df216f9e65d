"""``balancer: learned``: BiFair's outer level learns the inner level's group weights on the
meta split (learning to reweight by item group). Its hypergradient against numerical
differentiation, the training schedule, and the settings it needs."""
import pytest
import torch

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.trainer.balancer import LearnedBalancer, UniformBalancer
from recbole_bifair.trainer.bilevel import HypergradientSettings, OuterProblem, group_weight_hypergradient

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attn_dropout_prob=0.0, projector_dropout=0.0)
LEARNED = dict(balancer="learned", meta_split="last_train_item", train_batch_size=64)
XI, BETA = 0.5, 0.01


@pytest.fixture
def setting(tiny):
    """A float64 BiFairSASRec without dropout with learned group weights away from uniform, a
    training batch and a meta batch."""
    _, train_data, _, _, model, trainer = tiny(**LEARNED, **NO_DROPOUT)
    step = trainer.set_up(train_data)
    model.double()
    balancer = step.policy.balancer
    balancer.load_state_dict({"log_weights": torch.linspace(-0.5, 0.7, balancer.n_groups),
                              "optimizer": balancer.optimizer.state_dict()})
    batch = next(iter(train_data))
    return step, batch, step.meta_split.next_batch()


def _problem(step, xi):
    return OuterProblem(step.objective, [p for _, p in step.inner_named], [p for _, p in step.outer_named],
                        step.outer_init, UniformBalancer(step.policy.balancer.n_groups),
                        HypergradientSettings(mode="first_order", xi=xi, beta=BETA))


def _objective_after_lookahead(step, log_weights, batch, meta_batch, xi):
    """F(phi) from scratch: theta' = theta - xi grad L_in(theta; w = softmax(phi)), then the
    balanced group loss of the meta batch at theta' (E held)."""
    balancer = step.policy.balancer
    saved = balancer.log_weights
    balancer.log_weights = log_weights
    try:
        theta = [p.detach().requires_grad_() for _, p in step.inner_named]
        llm = [p.detach() for _, p in step.outer_named]
        grads = torch.autograd.grad(step.objective.inner_loss(theta, llm, batch), theta)
        theta_next = [t - xi * g for t, g in zip(theta, grads)]
        losses, counts = step.objective.group_losses(theta_next, llm, meta_batch)
        present = (counts > 0).double()
        return (present * losses).sum() / present.sum()
    finally:
        balancer.log_weights = saved


def test_group_weight_hypergradient_matches_numerical_differentiation(setting):
    step, batch, meta_batch = setting
    phi = step.policy.balancer.log_weights.detach().double()
    result = group_weight_hypergradient(_problem(step, XI), phi, batch, meta_batch)
    h = 1e-5
    for g in range(len(phi)):
        shift = torch.zeros_like(phi)
        shift[g] = h
        numerical = (_objective_after_lookahead(step, phi + shift, batch, meta_batch, XI)
                     - _objective_after_lookahead(step, phi - shift, batch, meta_batch, XI)) / (2 * h)
        assert result.gradient[g].item() == pytest.approx(numerical.item() / XI, rel=1e-4, abs=1e-10)
    assert result.gradient.abs().max() > 1e-6  # the weights do move F
    assert result.gradient.sum().abs() < 1e-10  # softmax logits: a common shift changes nothing


def test_without_a_lookahead_step_the_hypergradient_is_its_limit(setting):
    step, batch, meta_batch = setting
    phi = step.policy.balancer.log_weights.detach().double()
    at_zero = group_weight_hypergradient(_problem(step, 0.0), phi, batch, meta_batch).gradient
    small = group_weight_hypergradient(_problem(step, 1e-6), phi, batch, meta_batch).gradient
    assert torch.allclose(at_zero, small, rtol=1e-3, atol=1e-9)


def test_learned_weights_move_only_in_the_outer_step_and_are_logged(tiny):
    _, train_data, valid_data, _, model, trainer = tiny(outer_every=1, **LEARNED)
    step = trainer.set_up(train_data)
    balancer = step.policy.balancer
    assert isinstance(balancer, LearnedBalancer) and isinstance(step.outer_balancer, UniformBalancer)
    before = balancer.weights()
    step.inner_update(next(iter(train_data)))
    assert torch.equal(balancer.weights(), before)  # the inner step reads the weights, never moves them
    e_before = model.llm_parameters()[0].detach().clone()
    trainer.fit(train_data, valid_data, saved=False)  # builds its own step
    weights = trainer.training_step.policy.balancer.weights()
    assert not torch.allclose(weights, before)
    assert not torch.equal(e_before, model.llm_parameters()[0])  # E keeps its own outer step
    assert trainer.training_step.balancers(in_use_only=True)["inner"] is trainer.training_step.policy.balancer


def test_learned_weights_can_be_the_outer_levels_only_variables(tiny):
    _, train_data, valid_data, _, model, trainer = tiny(outer_every=1, outer_llm_table=False, **LEARNED)
    assert trainer.outer_optimizer is None
    e_before = model.llm_parameters()[0].detach().clone()
    trainer.fit(train_data, valid_data, saved=False)
    balancer = trainer.training_step.policy.balancer
    assert torch.equal(e_before, model.llm_parameters()[0])
    assert not torch.allclose(balancer.weights(), torch.full((balancer.n_groups,), 1.0 / balancer.n_groups))


@pytest.mark.parametrize("model, overrides, message", [
    ("BiFairSASRec", dict(balancer="learned"), "meta_split: last_train_item"),
    ("BiFairSASRec", dict(LEARNED, bifair_outer=False), "bifair_outer: True"),
    ("BiFairSASRec", dict(LEARNED, llm_update="joint"), "llm_update: outer"),
    ("BiFairSASRec", dict(LEARNED, outer_balancer="learned"), "outer_balancer: learned"),
    ("IPSSASRec", dict(balancer="learned"), "learned by BiFair's outer level"),
    ("BiFairSASRec", dict(LEARNED, learned_weight_learning_rate=0), "learned_weight_learning_rate"),
])
def test_learned_weights_without_what_they_need_are_one_clear_error(tiny, model, overrides, message):
    with pytest.raises(BiFairInputError, match=message):
        tiny(model=model, **overrides)
