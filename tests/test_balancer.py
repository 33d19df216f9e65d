"""Each balancer strategy gives the weights its formula says, on constructed group losses."""
import itertools
import math

import pytest
import torch

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.trainer.balancer import (
    FixedBalancer,
    GroupDROBalancer,
    InverseFrequencyBalancer,
    MGDABalancer,
    SoftmaxBalancer,
    UniformBalancer,
    build_balancer,
    min_norm_weights,
)
from recbole_bifair.trainer.settings import BalancerSettings


def test_softmax_of_smoothed_losses():
    balancer = SoftmaxBalancer(3, temperature=0.5, ema_decay=0.9)
    balancer.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4, 2, 1]))
    balancer.update(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([3, 0, 2]))
    smoothed = [0.9 * 1.0 + 0.1 * 2.0, 2.0, 0.9 * 3.0 + 0.1 * 1.0]
    expected = torch.softmax(torch.tensor(smoothed) / 0.5, dim=0)
    assert torch.allclose(balancer.weights(), expected, atol=1e-6)


def test_softmax_before_any_loss_is_uniform_and_unseen_groups_get_the_mean():
    balancer = SoftmaxBalancer(3)
    assert torch.allclose(balancer.weights(), torch.full((3,), 1 / 3))
    balancer.update(torch.tensor([1.0, 3.0, 0.0]), torch.tensor([1, 1, 0]))
    expected = torch.softmax(torch.tensor([1.0, 3.0, 2.0]), dim=0)
    assert torch.allclose(balancer.weights(), expected, atol=1e-6)


def test_softmax_with_a_contrast_follows_the_spread_of_the_losses():
    for scale in (0.1, 1.0, 20.0):  # a loss's scale: BPR's group losses spread far less than CE's
        balancer = SoftmaxBalancer(3, temperature=123.0, ema_decay=0.0, contrast=math.log(4.0))
        balancer.update(torch.tensor([1.0, 1.5, 3.0]) * scale, torch.tensor([2, 2, 2]))
        weights = balancer.weights()
        temperature = 2.0 * scale / math.log(4.0)
        expected = torch.softmax(torch.tensor([1.0, 1.5, 3.0]) * scale / temperature, dim=0)
        assert torch.allclose(weights, expected, atol=1e-6)
        assert float(weights.max() / weights.min()) == pytest.approx(4.0, rel=1e-5)
    equal = SoftmaxBalancer(2, contrast=2.0)
    equal.update(torch.tensor([0.7, 0.7]), torch.tensor([1, 1]))
    assert torch.equal(equal.weights(), torch.full((2,), 0.5))


def test_group_dro_exponentiated_gradient():
    balancer = GroupDROBalancer(2, step_size=0.1)
    balancer.update(torch.tensor([1.0, 3.0]), torch.tensor([1, 1]))
    q = torch.tensor([0.5 * math.exp(0.1), 0.5 * math.exp(0.3)])
    assert torch.allclose(balancer.weights(), q / q.sum(), atol=1e-6)
    balancer.update(torch.tensor([5.0, 1.0]), torch.tensor([0, 1]))
    q = q / q.sum() * torch.tensor([1.0, math.exp(0.1)])
    assert torch.allclose(balancer.weights(), q / q.sum(), atol=1e-6)


def test_uniform_inverse_frequency_and_fixed():
    assert torch.allclose(UniformBalancer(4).weights(), torch.full((4,), 0.25))
    inverse = InverseFrequencyBalancer(3, [0.5, 0.3, 0.2]).weights()
    raw = torch.tensor([2.0, 1 / 0.3, 5.0])
    assert torch.allclose(inverse, raw / raw.sum(), atol=1e-6)
    assert torch.allclose(FixedBalancer(2, [1, 3]).weights(), torch.tensor([0.25, 0.75]))
    with pytest.raises(BiFairInputError, match="fixed_group_weights"):
        FixedBalancer(3, [1, 2])


def _brute_force(gram, entropy_weight, steps):
    """The minimiser of w^T G w - mu H(w) over a grid of the simplex."""
    k = gram.shape[0]
    best, best_w = float("inf"), None
    grid = [i / steps for i in range(steps + 1)]
    for head in itertools.product(grid, repeat=k - 1):
        if sum(head) > 1 + 1e-12:
            continue
        w = torch.tensor(list(head) + [1 - sum(head)], dtype=torch.float64).clamp(min=0)
        entropy = -(w[w > 0] * w[w > 0].log()).sum()
        value = w @ gram @ w - entropy_weight * entropy
        if value < best:
            best, best_w = value.item(), w
    return best_w, best


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("entropy_weight", [0.0, 0.1])
def test_mgda_min_norm_matches_brute_force(k, entropy_weight):
    torch.manual_seed(k)
    grads = torch.randn(k, 6, dtype=torch.float64)
    grads[0] *= 3.0
    gram = grads @ grads.T
    scale = gram.diagonal().max()
    solved = min_norm_weights(gram, entropy_weight).double()
    expected, best = _brute_force(gram / scale, entropy_weight, 400 if k == 2 else 120)
    entropy = -(solved[solved > 0] * solved[solved > 0].log()).sum()
    value = (solved @ (gram / scale) @ solved - entropy_weight * entropy).item()
    assert value <= best + 1e-4
    assert torch.allclose(solved, expected, atol=2e-2)
    assert solved.sum().item() == pytest.approx(1.0)


def test_mgda_balancer_weights_absent_groups_keep_their_share():
    balancer = MGDABalancer(3, entropy_weight=0.0)
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    balancer.update(torch.ones(3), torch.tensor([1, 1, 0]), grads)
    weights = balancer.weights()
    assert weights[2].item() == pytest.approx(1 / 3)
    # min-norm of (1,0) and (0,2): w = (0.8, 0.2) on the two present groups, times their mass 2/3
    assert weights[0].item() == pytest.approx(0.8 * 2 / 3, abs=1e-3)
    assert weights[1].item() == pytest.approx(0.2 * 2 / 3, abs=1e-3)


GOOD_SETTINGS = {"balancer_temperature": 1.0, "balancer_contrast": None, "balancer_ema_decay": 0.9,
                 "mgda_entropy_weight": 0.1, "dro_step_size": 0.01, "fixed_group_weights": None,
                 "learned_weight_learning_rate": 0.01}


@pytest.mark.parametrize("key, value, message", [
    ("balancer_temperature", 0.0, "balancer_temperature must be > 0"),
    ("balancer_ema_decay", 1.0, r"balancer_ema_decay must be in \[0, 1\)"),
    ("mgda_entropy_weight", -0.1, "mgda_entropy_weight must be >= 0"),
    ("dro_step_size", 0.0, "dro_step_size must be > 0"),
    ("balancer_temperature", "hot", "balancer_temperature must be a number"),
    ("balancer_contrast", 0.0, "balancer_contrast must be > 0"),
    ("balancer_contrast", "high", "balancer_contrast must be a number"),
])
def test_bad_balancer_values_are_clear_errors(key, value, message):
    with pytest.raises(BiFairInputError, match=message):
        BalancerSettings.from_config({**GOOD_SETTINGS, key: value}, "softmax")


def test_unknown_strategy_and_bad_fixed_weights_are_clear_errors():
    with pytest.raises(BiFairInputError, match="Unknown balancer 'fancy'"):
        BalancerSettings.from_config(GOOD_SETTINGS, "fancy")
    for weights in (None, [], [1, -1], [0, 0], [1, True]):
        with pytest.raises(BiFairInputError, match="fixed_group_weights"):
            BalancerSettings.from_config({**GOOD_SETTINGS, "fixed_group_weights": weights}, "fixed")
    settings = BalancerSettings.from_config({**GOOD_SETTINGS, "fixed_group_weights": [1, 3]}, "fixed")
    assert build_balancer(settings, 2, [0.5, 0.5]).weights().tolist() == [0.25, 0.75]
    with pytest.raises(BiFairInputError, match="fixed_group_weights: 3 non-negative numbers"):
        build_balancer(settings, 3, [0.3, 0.3, 0.4])


def test_state_round_trip():
    balancer = SoftmaxBalancer(2)
    balancer.update(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))
    other = SoftmaxBalancer(2)
    other.load_state_dict(balancer.state_dict())
    assert torch.equal(other.weights(), balancer.weights())
