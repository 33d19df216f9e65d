"""BiFair's outer level on the representation side: the meta split held out of the inner level,
the popularity gate of the dual view (at its start the sum fusion; its hypergradient against
numerical differentiation), and which level moves which parameters."""
import numpy as np
import pytest
import torch

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.llm.layer import DualView, standardised_log_counts
from recbole_bifair.trainer.balancer import UniformBalancer
from recbole_bifair.trainer.bilevel import HypergradientSettings, OuterProblem, outer_hypergradient
from recbole_bifair.trainer.meta_split import MetaSplit, last_rows_per_user
from recbole_bifair.trainer.step import TrainingStep

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attn_dropout_prob=0.0, projector_dropout=0.0)
GATE = dict(dual_fusion="popularity_gate")
META = dict(meta_split="last_train_item", train_batch_size=64)


def _rows(dataset):
    inter = dataset.inter_feat
    return (inter[dataset.uid_field].numpy(), inter[dataset.iid_field].numpy(), inter[dataset.time_field].numpy())


def test_meta_split_is_each_users_latest_training_example(tiny):
    _, train_data, *_ = tiny(**META)
    users, _, times = _rows(train_data.dataset)
    held_out = last_rows_per_user(train_data.dataset)
    several = [u for u in np.unique(users) if (users == u).sum() > 1]
    assert sorted(users[held_out].tolist()) == sorted(several)
    for row in held_out:
        assert times[row] == times[users == users[row]].max()


def test_inner_level_never_sees_the_meta_split_and_the_outer_level_sees_all_of_it(tiny):
    _, train_data, *_ = tiny(**META)
    split = MetaSplit(train_data, batch_size=30, seed=0, device="cpu")
    users, items, _ = _rows(train_data.dataset)
    held = {(users[i], items[i]) for i in split.indices.tolist()}
    seen = 0
    for batch in train_data:
        kept = split.training_rows(batch)
        pairs = set(zip(kept["user_id"].tolist(), kept["item_id"].tolist()))
        assert not pairs & held
        seen += len(kept)
    assert seen == len(users) - sum(((users == u) & (items == i)).sum() for u, i in held)
    served = [split.next_batch() for _ in range(-(-len(split) // 30))]
    assert sorted(p for b in served for p in zip(b["user_id"].tolist(), b["item_id"].tolist())) == sorted(held)
    assert all(len(b) <= 30 for b in served)


def test_outer_objective_is_measured_on_meta_batches(tiny, monkeypatch):
    _, train_data, valid_data, _, _, trainer = tiny(outer_every=1, **META)
    measured = []
    outer_update = TrainingStep.outer_update

    def recording_outer_update(self, lookahead_batch, meta_batch):
        measured.append(set(zip(meta_batch["user_id"].tolist(), meta_batch["item_id"].tolist())))
        return outer_update(self, lookahead_batch, meta_batch)

    monkeypatch.setattr(TrainingStep, "outer_update", recording_outer_update)
    trainer.fit(train_data, valid_data, saved=False)
    split = trainer.training_step.meta_split
    users, items, _ = _rows(train_data.dataset)
    held = {(users[i], items[i]) for i in split.indices.tolist()}
    assert measured and all(pairs <= held for pairs in measured)


def test_popularity_gate_starts_as_the_sum_and_leans_rare_items_on_their_llm_vector():
    counts = np.array([0, 100, 10, 1, 3])
    ids_table = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    llm = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(5)
    gate, summed = DualView(ids_table, "popularity_gate", counts), DualView(ids_table, "sum")
    assert torch.allclose(gate(llm, ids), summed(llm, ids))
    with torch.no_grad():
        gate.gate_slope.fill_(2.0)
    share = gate.id_share(ids)
    assert share[1] > share[2] > share[4] > share[3]  # popular items lean on their ID vector
    assert torch.allclose(gate(llm, ids), share[:, None] * ids_table + (2 - share[:, None]) * llm)
    z = standardised_log_counts(counts)
    assert z[0] == 0 and z[1:].mean().abs() < 1e-6 and z[1:].std().sub(1).abs() < 1e-6
    with pytest.raises(ValueError, match="one training count per item"):
        DualView(ids_table, "popularity_gate", counts[:3])


def _gate_setting(tiny, **overrides):
    config, train_data, _, _, model, trainer = tiny(train_batch_size=64, balancer="uniform", **GATE, **NO_DROPOUT,
                                                    **overrides)
    trainer.set_up(train_data)
    model.double()
    batches = iter(train_data)
    return trainer, model, next(batches), next(batches)


@pytest.mark.parametrize("mode", ["first_order", "exact"])
def test_gate_hypergradient_matches_numerical_differentiation(tiny, mode):
    xi = 0.5 if mode == "exact" else 0.0
    trainer, model, train_batch, meta_batch = _gate_setting(tiny)
    objective, n_groups = trainer.training_step.objective, trainer.item_groups.n_groups
    theta = [p for _, p in trainer.training_step.inner_named]
    outer = [p for _, p in trainer.training_step.outer_named]
    names = [n for n, _ in trainer.training_step.outer_named]
    assert names[-2:] == ["item_embedding.dual_view.gate_bias", "item_embedding.dual_view.gate_slope"]
    init = trainer.training_step.outer_init
    assert init[-2:] == [None, None] and init[0] is not None

    def problem():
        return OuterProblem(objective, theta, outer, init, UniformBalancer(n_groups),
                            HypergradientSettings(mode=mode, xi=xi, beta=0.01))

    result = outer_hypergradient(problem(), lookahead_batch=train_batch, meta_batch=meta_batch)
    for index in (-2, -1):
        h = 1e-5

        def value_at(shift):
            shifted = [p.detach().clone() for p in outer]
            shifted[index] = shifted[index] + shift
            moved = OuterProblem(objective, theta, shifted, init, UniformBalancer(n_groups),
                                 HypergradientSettings(mode=mode, xi=xi, beta=0.01))
            return outer_hypergradient(moved, lookahead_batch=train_batch, meta_batch=meta_batch).value

        numerical = (value_at(h) - value_at(-h)) / (2 * h)
        assert result.grads[index].item() == pytest.approx(numerical.item(), rel=1e-4, abs=1e-9)
        assert abs(numerical.item()) > 1e-8  # the gate does move F


def test_gate_moves_only_in_the_outer_step_and_e_stays_when_the_table_is_not_outer(tiny):
    _, train_data, valid_data, _, model, trainer = tiny(outer_every=1, outer_llm_table=False,
                                                        outer_gate_learning_rate=0.01, **GATE, **META)
    assert [group["lr"] for group in trainer.outer_optimizer.param_groups] == [0.01]
    layer = model.item_embedding
    e_before = layer.llm_weight.detach().clone()
    trainer.set_up(train_data)
    batch = next(iter(train_data))
    gate_before = [p.detach().clone() for p in layer.dual_view.gate_parameters()]
    trainer.training_step.inner_update(batch)
    assert all(torch.equal(a, b) for a, b in zip(gate_before, layer.dual_view.gate_parameters()))
    trainer.fit(train_data, valid_data, saved=False)
    assert torch.equal(layer.llm_weight, e_before)
    assert all(not torch.equal(a, b) for a, b in zip(gate_before, layer.dual_view.gate_parameters()))
    summary = model.outer_parameter_summary()
    assert summary["llm_table_shift"] == 0.0
    assert summary["popularity_gate"][0] == [p.item() for p in layer.dual_view.gate_parameters()]


def test_the_gates_take_their_own_outer_step_size(tiny):
    _, _, _, _, model, trainer = tiny(outer_learning_rate=1e-4, outer_gate_learning_rate=0.05, **GATE)
    groups = trainer.outer_optimizer.param_groups
    assert [group["lr"] for group in groups] == [1e-4, 0.05]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in model.gate_parameters()]


def test_without_bifair_the_gate_is_trained_with_theta(tiny):
    _, _, _, _, model, trainer = tiny(model="LLMSASRec", **GATE)
    gate_ids = {id(p) for p in model.item_embedding.dual_view.gate_parameters()}
    assert model.outer_parameters() == []
    assert gate_ids <= {id(p) for p in model.inner_parameters()}
    assert gate_ids <= {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}


def test_llm_table_shift_is_the_relative_distance_from_e0(tiny):
    _, _, _, _, model, _ = tiny()
    layer = model.item_embedding
    with torch.no_grad():
        layer.llm_weight.mul_(1.5)
    assert model.outer_parameter_summary()["llm_table_shift"] == pytest.approx(0.5, rel=1e-6)


def test_an_outer_level_with_nothing_to_update_and_a_bad_meta_split_are_clear_errors(tiny):
    with pytest.raises(BiFairInputError, match="nothing to update"):
        tiny(outer_llm_table=False)
    with pytest.raises(BiFairInputError, match="meta_split"):
        tiny(meta_split="valid")
