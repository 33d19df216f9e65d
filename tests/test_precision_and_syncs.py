"""The group-aware trainers honour RecBole's ``enable_amp`` and ``enable_scaler``, and the group
losses and the adaptive balancers read nothing back from the device in a step.

"Reads nothing back" is checked on PyTorch's ``meta`` device: its tensors have shapes but no
values, so any host read (``.item()``, ``.cpu()``, ``bool()``, a boolean index) raises there.
"""
import copy

import pytest
import torch

from recbole_bifair.trainer.balancer import GroupDROBalancer, SoftmaxBalancer
from recbole_bifair.trainer.losses import group_mean_losses, masked_variance, present_variance, weighted_group_loss
from recbole_bifair.trainer.step import gradient_scaler

META = torch.device("meta")


def test_the_meta_device_refuses_every_host_read():
    values = torch.rand(5, device=META)
    for read in (lambda: values.cpu(), lambda: bool(values.sum() > 0), lambda: values[values > 0]):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("balancer", [SoftmaxBalancer(5), SoftmaxBalancer(5, contrast=2.0), GroupDROBalancer(5)],
                         ids=["softmax", "softmax-contrast", "dro"])
def test_adaptive_balancers_update_and_weigh_without_host_reads(balancer):
    for _ in range(2):
        balancer.update(torch.rand(5, device=META), torch.ones(5, device=META))
        weights = balancer.weights()
    assert weights.device == META and weights.shape == (5,)


def test_group_losses_weighting_and_spread_without_host_reads():
    losses, groups = torch.rand(64, device=META), torch.zeros(64, dtype=torch.long, device=META)
    group_losses, counts = group_mean_losses(losses, groups, 5)
    loss = weighted_group_loss(group_losses, counts, torch.full((5,), 0.2, device=META))
    spread = present_variance(group_losses, counts > 0)
    assert loss.shape == spread.shape == ()


def test_masked_variance_equals_the_variance_over_the_present_groups():
    torch.manual_seed(0)
    values = torch.rand(7, dtype=torch.float64)
    present = torch.tensor([True, False, True, True, False, True, True])
    expected = values[present].var(unbiased=False)
    assert torch.allclose(masked_variance(values, present), expected, rtol=1e-12, atol=0)
    assert present_variance(values, present) == expected  # the CPU takes the recorded computation
    assert masked_variance(values, torch.zeros(7, dtype=torch.bool)) == 0


def _record_autocast(model):
    """Hooks on every linear layer recording whether it ran under CPU autocast; returns the
    list and the hooks' handles."""
    seen = []
    handles = [m.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
               for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return seen, handles


def test_enable_amp_runs_the_inner_forward_under_autocast(tiny):
    _, train_data, _, _, model, trainer = tiny(model="BiFairSASRec", enable_amp=True)
    step = trainer.set_up(train_data)
    seen, hooks = _record_autocast(model)
    before = [p.detach().clone() for p in model.inner_parameters()]
    batch = next(iter(train_data))
    loss = step.inner_update(batch)
    assert seen and all(seen)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.inner_parameters()))
    seen.clear()
    step.outer_update(batch, batch)  # the hypergradient stays in full precision
    assert seen and not any(seen)
    for hook in hooks:
        hook.remove()


def test_without_enable_amp_nothing_runs_under_autocast(tiny):
    _, train_data, _, _, model, trainer = tiny(model="IPSSASRec")
    step = trainer.set_up(train_data)
    seen, _ = _record_autocast(model)
    step.inner_update(next(iter(train_data)))
    assert seen and not any(seen)


def _train_steps(trainer, train_data, batches, scaler):
    step = trainer.set_up(train_data)
    step.scaler = scaler
    torch.manual_seed(0)  # the same dropout masks in both runs
    previous = None
    for batch in batches:
        step.step(previous, batch)
        previous = batch
    return [p.detach().clone() for p in trainer.model.parameters()], step


def test_a_gradient_scaler_is_unscaled_before_clipping(tiny):
    """A power-of-two scale is exact in float32: scaled and unscaled training must end with the
    same parameters, clipping included, only if the gradients are unscaled before clipping."""
    built = tiny(model="IPSSASRec", clip_grad_norm={"max_norm": 0.01})
    model, trainer, train_data = built[4], built[5], built[1]
    state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(trainer.optimizer.state_dict())
    batches = [batch for _, batch in zip(range(4), train_data)]
    plain, _ = _train_steps(trainer, train_data, batches, torch.amp.GradScaler("cpu", enabled=False))
    model.load_state_dict(state)
    trainer.optimizer.load_state_dict(optimizer_state)
    scaled, step = _train_steps(trainer, train_data, batches, torch.amp.GradScaler("cpu", init_scale=2.0 ** 12))
    assert step.scaler.get_scale() > 1  # the steps ran scaled
    assert all(torch.equal(a, b) for a, b in zip(plain, scaled))
    assert "scaler" in step.state_dict()


def test_the_gradient_scaler_follows_recboles_rule():
    cpu_run = {"device": torch.device("cpu"), "enable_scaler": True}
    assert not gradient_scaler(cpu_run).is_enabled()  # RecBole scales on a GPU only
    if torch.cuda.is_available():
        assert gradient_scaler({"device": torch.device("cuda"), "enable_scaler": True}).is_enabled()
    assert not gradient_scaler({"device": torch.device("cpu"), "enable_scaler": False}).is_enabled()
