"""The fairness baselines' training losses (GroupFairTrainer) match their formulas."""
import pytest
import torch

from recbole_bifair.trainer import GroupFairTrainer
from recbole_bifair.trainer.losses import example_losses, group_mean_losses


def _batch_parts(trainer, train_data):
    batch = next(iter(train_data))
    trainer.model.eval()
    torch.manual_seed(0)
    losses, items = example_losses(trainer.model, batch)
    losses = losses.detach()
    groups = trainer.training_step.policy.item_group[items]
    return batch, losses, items, groups


def _inner_loss(trainer, batch):
    torch.manual_seed(0)
    with torch.no_grad():
        return trainer.training_step.policy.loss(trainer.model, batch).item()


def test_baseline_families_use_the_group_fair_trainer(tiny):
    for model, weighting, balancer in [("IPSSASRec", "item_ips", "softmax"), ("GroupDROSASRec", "group", "dro")]:
        config, _, _, _, built, trainer = tiny(model=model)
        assert type(trainer) is GroupFairTrainer
        assert (config["inner_weighting"], config["balancer"]) == (weighting, balancer) and not built.bifair
    config, *_ = tiny(model="VarRegSASRec")
    assert config["inner_weighting"] == "none" and config["loss_spread_weight"] == 1.0


def test_group_ips_weights_are_inverse_training_shares(tiny):
    _, train_data, _, _, _, trainer = tiny(model="IPSSASRec", inner_weighting="group", balancer="inverse_frequency")
    trainer.set_up(train_data)
    batch, losses, _, groups = _batch_parts(trainer, train_data)
    group_losses, counts = group_mean_losses(losses, groups, trainer.item_groups.n_groups)
    inverse = 1.0 / trainer.item_groups.train_share.float()
    present = (counts > 0).float()
    expected = (inverse * present * group_losses).sum() / (inverse * present).sum()
    assert _inner_loss(trainer, batch) == pytest.approx(expected.item(), rel=1e-5)


def test_item_ips_weights_follow_item_counts(tiny):
    _, train_data, _, _, _, trainer = tiny(model="IPSSASRec", inner_weighting="item_ips", ips_power=0.5)
    trainer.set_up(train_data)
    batch, losses, items, _ = _batch_parts(trainer, train_data)
    counter = train_data.dataset.item_counter
    weights = torch.tensor([counter[int(i)] ** -0.5 for i in items])
    expected = (weights * losses).sum() / weights.sum()
    assert _inner_loss(trainer, batch) == pytest.approx(expected.item(), rel=1e-5)


def test_variance_regulariser_adds_the_spread_of_group_losses(tiny):
    _, train_data, _, _, _, trainer = tiny(model="VarRegSASRec", loss_spread_weight=2.0)
    trainer.set_up(train_data)
    batch, losses, _, groups = _batch_parts(trainer, train_data)
    group_losses, counts = group_mean_losses(losses, groups, trainer.item_groups.n_groups)
    expected = losses.mean() + 2.0 * group_losses[counts > 0].var(unbiased=False)
    assert _inner_loss(trainer, batch) == pytest.approx(expected.item(), rel=1e-5)


def test_group_dro_moves_weight_to_the_worst_group(tiny):
    _, train_data, valid_data, _, _, trainer = tiny(model="GroupDROSASRec", dro_step_size=0.5)
    trainer.fit(train_data, valid_data, saved=False)
    weights = trainer.training_step.policy.balancer.weights()
    assert weights.max() > 1.0 / len(weights) + 1e-3


def test_plain_recbole_model_is_refused(tiny):
    from recbole_bifair.errors import BiFairInputError

    config, _, _, _, model, _ = tiny(model="SASRec")
    with pytest.raises(BiFairInputError, match="LLM-enhanced"):
        GroupFairTrainer(config, model)
