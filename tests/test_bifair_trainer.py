"""BiFairTrainer: NaN handling, exact resume, ablation switches, valid_metric trade-offs."""
import glob
import os
import time

import pytest
import torch

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.trainer import BiFairTrainer, BiFairTrainingError
from recbole_bifair.trainer.valid_score import combined_valid_score, parse_valid_metric


def test_nan_loss_stops_with_a_clear_error(tiny):
    _, train_data, _, _, model, trainer = tiny()
    trainer.set_up(train_data)
    with torch.no_grad():
        model.llm_parameters()[0][1:] = float("nan")
    with pytest.raises(BiFairTrainingError, match="The inner loss is nan at epoch 0, batch 0"):
        trainer.training_step.inner_update(next(iter(train_data)))


def test_losses_checked_together_name_the_first_bad_batch(tiny):
    """On a GPU the losses are checked every few steps (one host sync): the error still names
    the first non-finite loss, and a clean batch of checks passes."""
    _, train_data, _, _, _, trainer = tiny()
    step = trainer.set_up(train_data)
    step._unchecked = [(torch.tensor(1.0), "inner", 0, 3), (torch.tensor(float("inf")), "outer", 0, 4),
                       (torch.tensor(float("nan")), "inner", 0, 5)]
    with pytest.raises(BiFairTrainingError, match="The outer loss is inf at epoch 0, batch 4"):
        step.check_losses()
    step._unchecked = [(torch.tensor(2.0), "inner", 1, 0)]
    step.check_losses()
    assert step._unchecked == []


def _final_parameters(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture
def deterministic():
    """CPU scatter-adds may sum in any order across threads; exactness needs a fixed order."""
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("variant", [{}, dict(meta_split="last_train_item", dual_fusion="popularity_gate",
                                              train_batch_size=128), dict(fast_loader="on"),
                                     dict(balancer="learned", meta_split="last_train_item", train_batch_size=128)],
                         ids=["default", "meta-split-gate", "fast-loader", "learned-weights"])
def test_resume_continues_exactly(tiny, deterministic, variant):
    settings = dict(epochs=2, eval_step=1, stopping_step=100, outer_every=1, valid_metric="Recall@10", **variant)
    _, train_data, valid_data, _, _, straight = tiny(**settings)
    straight.fit(train_data, valid_data, saved=False)
    expected = _final_parameters(straight)

    _, train_data, valid_data, _, _, first = tiny(**{**settings, "epochs": 1})
    first.fit(train_data, valid_data, saved=True)
    checkpoint = first.saved_model_file
    _, train_data, valid_data, _, _, resumed = tiny(**settings)
    resumed.resume_checkpoint(checkpoint)
    resumed.fit(train_data, valid_data, saved=False)
    resumed_params = _final_parameters(resumed)
    assert resumed.start_epoch == 1
    for name, value in expected.items():
        assert torch.equal(value, resumed_params[name]), name


def test_ablation_outer_off_never_moves_e(tiny):
    _, train_data, valid_data, _, model, trainer = tiny(bifair_outer=False)
    before = model.llm_parameters()[0].detach().clone()
    trainer.fit(train_data, valid_data, saved=False)
    assert torch.equal(before, model.llm_parameters()[0])


@pytest.mark.parametrize("mode, balancer", [
    ("first_order", "softmax"), ("finite_difference", "softmax"), ("exact", "softmax"),
    ("first_order", "mgda"), ("first_order", "dro"), ("first_order", "uniform"), ("exact", "inverse_frequency"),
])
def test_every_mode_and_balancer_trains(tiny, mode, balancer):
    _, train_data, _, _, model, trainer = tiny(hypergradient=mode, balancer=balancer, outer_every=1, epochs=1)
    before = model.llm_parameters()[0].detach().clone()
    trainer.fit(train_data, None, saved=False)
    weights = trainer.training_step.policy.balancer.weights()
    uniform = torch.full_like(weights, 1.0 / len(weights))
    assert torch.allclose(weights, uniform) == (balancer == "uniform")  # the others moved with the losses
    assert not torch.equal(before, model.llm_parameters()[0])


@pytest.mark.parametrize("settings", [
    dict(hypergradient="exact", lookahead_steps=2, lookahead_update="optimizer"),
    dict(hypergradient="exact", lookahead_steps=3, lookahead_truncate=1, lookahead_lr=None),
    dict(hypergradient="implicit", implicit_solver="neumann", implicit_steps=2),
    dict(hypergradient="implicit", implicit_solver="cg", implicit_steps=2),
])
def test_hypergradients_that_see_the_inner_response_train_and_report_their_share(tiny, settings):
    _, train_data, _, _, model, trainer = tiny(outer_every=1, epochs=1, **settings)
    before = model.llm_parameters()[0].detach().clone()
    trainer.fit(train_data, None, saved=False)
    assert not torch.equal(before, model.llm_parameters()[0])
    (entry,) = trainer.diagnostics
    assert entry["outer_steps"] == len(train_data) - 1
    assert entry["second_order_share"] > 0 and entry["cosine_to_direct"] < 1  # the second-order part turns it


@pytest.mark.parametrize("settings", [{"lookahead_lr": None},
                                      {"outer_prior_weight": 1.0, "outer_prior_balancer": "softmax"}])
def test_first_order_diagnostic_does_not_change_training(tiny, deterministic, settings):
    runs = []
    for every in (0, 1):
        _, train_data, _, _, model, trainer = tiny(outer_every=1, epochs=1, hypergradient_diagnostic_every=every,
                                                   **settings)
        trainer.fit(train_data, None, saved=False)
        runs.append((model.llm_parameters()[0].detach().clone(), trainer.diagnostics))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == [] and runs[1][1][0]["outer_steps"] == len(train_data) - 1


def test_default_outer_step_takes_no_lookahead_and_moves_only_e(tiny):
    """The default (``lookahead_lr: 0``) is the alternating scheme: the outer step never reads
    its look-ahead batch, and it moves E only."""
    _, train_data, _, _, model, trainer = tiny(outer_every=1)
    assert trainer.hypergradient.lookahead_is_identity
    trainer.set_up(train_data)
    model.train()
    theta_before = [p.detach().clone() for _, p in trainer.training_step.inner_named]
    e_before = model.llm_parameters()[0].detach().clone()
    trainer.training_step.outer_update(None, next(iter(train_data)))
    assert all(torch.equal(b, p) for b, (_, p) in zip(theta_before, trainer.training_step.inner_named))
    assert not torch.equal(e_before, model.llm_parameters()[0])


def test_first_order_diagnostic_sees_the_outer_balancer_as_the_step_did(tiny):
    """The exact hypergradient of the diagnostic weights the groups as the outer step it
    measures did: its copy of the outer balancer is taken before that step updated it."""
    _, train_data, _, _, model, trainer = tiny(outer_every=1, balancer="dro", hypergradient_diagnostic_every=1,
                                               lookahead_lr=None)
    trainer.set_up(train_data)
    model.train()
    batches = iter(train_data)
    first, second = next(batches), next(batches)
    seen, hypergradient = [], trainer.training_step.hypergradient

    def spy(train_batch, meta_batch, settings, outer_balancer, prior_term):
        seen.append((settings.mode, outer_balancer.state_dict()["q"].clone()))
        return hypergradient(train_batch, meta_batch, settings, outer_balancer, prior_term)

    trainer.training_step.hypergradient = spy
    trainer.training_step.outer_update(first, second)
    (first_mode, q_step), (diagnostic_mode, q_diagnostic) = seen
    assert (first_mode, diagnostic_mode) == ("first_order", "exact")
    assert torch.equal(q_step, q_diagnostic)
    assert not torch.equal(q_step, trainer.training_step.outer_balancer.state_dict()["q"])


def test_joint_control_moves_e_in_the_inner_step_without_outer_steps(tiny):
    _, train_data, _, _, model, trainer = tiny(llm_update="joint", hypergradient_diagnostic_every=1)
    trainer.set_up(train_data)
    model.train()
    batches = iter(train_data)
    first, second = next(batches), next(batches)
    before = model.llm_parameters()[0].detach().clone()
    step = trainer.training_step
    step.start_epoch(0)
    step.step(first, second)  # an outer step would be due here (batch 0, a previous batch)
    assert step.outer_steps == 0 and step.diagnostics == [] and step.end_epoch() is None
    assert not torch.equal(before, model.llm_parameters()[0])


@pytest.mark.parametrize("balancer", ["softmax", "mgda"])
def test_residual_projector_trains(tiny, balancer):
    _, train_data, _, _, model, trainer = tiny(projector_residual=True, balancer=balancer, outer_every=1)
    before = model.llm_parameters()[0].detach().clone()
    trainer.fit(train_data, None, saved=False)
    assert not torch.equal(before, model.llm_parameters()[0])


def test_bad_trainer_settings_are_clear_errors(tiny):
    with pytest.raises(BiFairInputError, match="hypergradient must be one of .*'second'"):
        tiny(hypergradient="second")
    with pytest.raises(BiFairInputError, match="outer_every"):
        tiny(outer_every=0)
    with pytest.raises(BiFairInputError, match="lookahead_steps: 1"):
        tiny(hypergradient="finite_difference", lookahead_steps=2)
    for key, value in [("lookahead_update", "adamw"), ("implicit_solver", "lu"), ("llm_update", "both"),
                       ("lookahead_truncate", 0), ("hypergradient_diagnostic_every", -1)]:
        with pytest.raises(BiFairInputError, match=key):
            tiny(**{key: value})
    config, _, _, _, model, _ = tiny(model="LLMSASRec")
    with pytest.raises(BiFairInputError, match="BiFairSASRec"):
        BiFairTrainer(config, model)


def test_valid_metric_trade_off():
    assert parse_valid_metric("NDCG@10 - 0.5*ndcg_gap@10") == [(1.0, "ndcg@10"), (-0.5, "ndcg_gap@10")]
    result = {"ndcg@10": 0.2, "ndcg_gap@10": 0.1}
    assert combined_valid_score(result, "ndcg@10 - 0.5 * ndcg_gap@10") == pytest.approx(0.15)
    with pytest.raises(BiFairInputError, match="does not report"):
        combined_valid_score(result, "recall@10")
    with pytest.raises(BiFairInputError, match="is not a number"):
        parse_valid_metric("x*ndcg@10")


def test_checkpoint_holds_the_whole_training_state(tiny):
    _, train_data, valid_data, _, _, trainer = tiny()
    trainer.fit(train_data, valid_data, saved=True)
    (checkpoint_file,) = glob.glob(os.path.join(trainer.checkpoint_dir, "*.pth"))
    checkpoint = torch.load(checkpoint_file, weights_only=False)
    state = checkpoint["group_fair"]
    assert set(state) >= {"outer_optimizer", "balancers", "torch_rng", "train_generator"}
    assert set(state["balancers"]) == {"inner", "outer"}
    assert any("llm_weight" in key for key in checkpoint["state_dict"])


def test_trade_off_valid_metric_needs_its_direction_and_drives_any_trainer(tiny):
    metrics = ["NDCG", "NDCGGap", "Recall"]
    with pytest.raises(BiFairInputError, match="set valid_metric_bigger"):
        tiny(model="SASRec", metrics=metrics, valid_metric="ndcg@10 - 0.5*ndcggap@10")
    config, train_data, valid_data, _, _, trainer = tiny(
        model="SASRec", metrics=metrics, valid_metric="0.5*ndcggap@10 - ndcg@10", valid_metric_bigger=False
    )
    assert config["valid_metric_bigger"] is False
    trainer.eval_collector.data_collect(train_data)
    score, result = trainer._valid_epoch(valid_data)
    assert score == pytest.approx(0.5 * result["ndcggap@10"] - result["ndcg@10"])


def test_baseline_keeps_its_llm_table_frozen(tiny):
    _, train_data, _, _, model, trainer = tiny(model="GroupDROSASRec")
    trainer.set_up(train_data)
    trainer.training_step.inner_update(next(iter(train_data)))
    assert not model.llm_parameters()[0].requires_grad


@pytest.mark.slow
def test_second_order_share_from_a_saved_checkpoint_without_training(tmp_path, embedding_cache):
    from recbole_bifair.quick_start import run_recbole_bifair
    from recbole_bifair.diagnostics import hypergradient_diagnostic
    from conftest import tiny_config

    result = run_recbole_bifair("BiFairSASRec", "tiny", config_dict=tiny_config(
        tmp_path, llm_emb_cache_dir=embedding_cache, hypergradient_diagnostic_every=1, outer_every=1))
    assert result["hypergradient_diagnostics"][0]["second_order_share"] == 0  # the default takes no look-ahead
    (model_file,) = list((tmp_path / "saved").glob("*.pth"))
    started = time.perf_counter()
    exact = hypergradient_diagnostic(str(model_file), n_batches=2)
    elapsed = time.perf_counter() - started
    assert exact["batches"] == 2 and exact["second_order_share"] > 0
    assert exact["cosine_to_direct"] < 1  # a second-order part that is not 0 turns the hypergradient
    implicit = hypergradient_diagnostic(str(model_file), n_batches=2, hypergradient="implicit")
    assert implicit["second_order_share"] != exact["second_order_share"]
    assert 0 < exact["seconds_per_hypergradient"] * exact["batches"] < elapsed  # per hypergradient, not per call

    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("share", os.path.join(REPO_ROOT, "benchmarks", "hypergradient_share.py"))
    share = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(share)
    share.main([str(model_file), "--batches", "2", "--output", str(tmp_path / "share.md")])
    rows = [line for line in (tmp_path / "share.md").read_text().splitlines() if line.startswith("| exact") or
            line.startswith("| implicit") or line.startswith("| finite")]
    assert len(rows) == len(share.SETTINGS) and rows[0].endswith("| 1.00x |")
    assert str(tmp_path) not in (tmp_path / "share.md").read_text()
    with pytest.raises(BiFairInputError, match="first_order"):
        hypergradient_diagnostic(str(model_file), hypergradient="first_order")


@pytest.mark.parametrize("scores, bigger, expected", [
    ([[1, 0.1], [2, 0.3], [3, 0.2]], True, 2),
    ([[1, 0.1], [2, 0.3], [3, 0.3], [4, 0.2]], True, 3),  # RecBole saves again on a tie
    ([[1, 0.5], [2, 0.2], [3, 0.4]], False, 2),
    ([], True, None),
])
def test_best_epoch_is_the_epoch_recbole_keeps(scores, bigger, expected):
    from recbole_bifair.quick_start import best_epoch

    assert best_epoch(scores, bigger) == expected


def test_joint_control_with_the_outer_level_off_keeps_e_fixed(tiny):
    _, train_data, _, _, model, trainer = tiny(llm_update="joint", bifair_outer=False)
    before = model.llm_parameters()[0].detach().clone()
    trainer.fit(train_data, None, saved=False)
    assert torch.equal(before, model.llm_parameters()[0])
    assert "outer" not in trainer.training_step.balancers(in_use_only=True)
