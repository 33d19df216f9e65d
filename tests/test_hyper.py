"""Tuning: the search-space file, Pareto marking, and 2-trial sweeps with hyperopt and Ray Tune."""
import csv

import pytest

from conftest import tiny_config
from recbole_bifair import hyper
from recbole_bifair.errors import BiFairInputError


def test_shipped_bifair_space_covers_the_fairness_knobs():
    params = {p.name: p for p in hyper.read_search_space(hyper.default_params_file("BiFairSASRec"))}
    assert set(params) == {"balancer", "balancer_temperature", "outer_learning_rate", "proximity_weight", "outer_every",
                           "llm_view", "dual_fusion", "dual_id_init", "llm_preprocess", "projector_input_dropout",
                           "hypergradient", "lookahead_update", "lookahead_lr", "lookahead_steps",
                           "outer_prior_weight"}
    assert params["llm_view"].values == ("llm", "dual")
    assert params["balancer"].values == ("softmax", "mgda", "dro")
    assert params["outer_learning_rate"].kind == "loguniform"
    assert params["lookahead_lr"].values == (0.0, 0.001)
    assert set(hyper.hyperopt_space(params.values())) == set(params) == set(hyper.ray_space(params.values()))


@pytest.mark.parametrize("line, message", [
    ("balancer pick [1]", "kind one of"),
    ("lr uniform 0.1", "needs 2 numbers"),
    ("lr loguniform -3,-5", "low < high"),
    ("outer_every choice []", "non-empty list"),
    ("outer_every choice [1, 2", "cannot read"),
])
def test_bad_search_space_lines_are_clear_errors(tmp_path, line, message):
    space = tmp_path / "bad.hyper"
    space.write_text("# comment\n" + line + "\n")
    with pytest.raises(BiFairInputError, match=message):
        hyper.read_search_space(str(space))
    with pytest.raises(BiFairInputError, match="not found"):
        hyper.read_search_space(str(tmp_path / "missing.hyper"))


def test_pareto_marks_the_non_dominated_trials():
    # (accuracy up, gap down)
    points = [(0.30, 0.10), (0.25, 0.05), (0.20, 0.08), (0.30, 0.12), (float("nan"), 0.0), (0.25, 0.05)]
    assert hyper.pareto_optimal(points, (True, False)) == [True, True, False, False, False, True]


def test_report_rows_mark_the_best_and_need_the_metrics():
    trials = [
        hyper.Trial({"balancer": "dro"}, 0.2, {"ndcg@10": 0.3, "ndcggap@10": 0.1}, {"ndcg@10": 0.28, "ndcggap@10": 0.11}),
        hyper.Trial({"balancer": "mgda"}, 0.25, {"ndcg@10": 0.2, "ndcggap@10": 0.2}, {"ndcg@10": 0.19, "ndcggap@10": 0.2}),
    ]
    rows = hyper.report_rows(trials, "NDCG@10", "NDCGGap@10")
    assert [r["pareto"] for r in rows] == ["yes", ""] and [r["best"] for r in rows] == ["", "yes"]
    with pytest.raises(BiFairInputError, match="have no recall@10"):
        hyper.report_rows(trials, "recall@10", "ndcggap@10")


def _sweep(tmp_path, tool, extra=()):
    config = tiny_config(tmp_path, epochs=1, valid_metric="ndcg@10 - 0.5*ndcggap@10", valid_metric_bigger=True)
    space = tmp_path / "space.hyper"
    space.write_text('balancer choice ["softmax", "dro"]\nouter_learning_rate loguniform -9.2,-6.9\n')
    output = tmp_path / f"{tool}.md"
    args = ["--model=BiFairSASRec", "--dataset=tiny", f"--params_file={space}", f"--tool={tool}", "--max_evals=2",
            f"--output_file={output}", *extra] + [f"--{k}={v}" for k, v in config.items()]
    assert hyper.main(args) == 0
    with open(output.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        assert row["balancer"] if "balancer" in row else "balancer=" in row["params"]
        for column in ("valid ndcg@10", "valid ndcggap@10", "test ndcg@10", "test ndcggap@10"):
            assert 0 <= float(row[column]) <= 1, column
        valid_objective = float(row["valid ndcg@10"]) - 0.5 * float(row["valid ndcggap@10"])
        assert float(row["objective"]) == pytest.approx(valid_objective, abs=1e-3)
    assert any(row["pareto"] == "yes" for row in rows) and sum(row["best"] == "yes" for row in rows) >= 1
    assert rows[0]["params"] != rows[1]["params"]  # each trial draws its own settings
    assert "| trial |" in output.read_text()


@pytest.mark.slow
def test_two_trial_hyperopt_sweep_reports_accuracy_and_fairness(tmp_path):
    _sweep(tmp_path, "hyperopt", ["--algo=random"])


@pytest.mark.slow
def test_two_trial_ray_tune_sweep_in_local_mode(tmp_path):
    _sweep(tmp_path, "ray", ["--ray_local_mode"])


def test_ray_settings_are_drawn_by_the_sweeps_own_generator():
    import numpy as np

    params = hyper.read_search_space(hyper.default_params_file("BiFairSASRec"))
    np.random.seed(0)
    first = hyper.draw_settings(params, 3, search_seed=7)
    np.random.seed(0)
    assert hyper.draw_settings(params, 3, search_seed=7) == first
    assert len({str(s) for s in first}) == 3
    assert all(1e-5 <= s["outer_learning_rate"] <= 1e-3 and s["outer_every"] in (1, 2, 4, 8) for s in first)


@pytest.mark.slow
def test_run_hyper_script_errors_in_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    out = subprocess.run([sys.executable, f"{REPO_ROOT}/run_hyper.py", "--model=SASRec", "--dataset=ml-100k"],
                         cwd=str(tmp_path), capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "error: no shipped search space for SASRec; name one with --params_file (docs/tuning.md)."


def test_whole_number_steps_draw_ints():
    from hyperopt.pyll.stochastic import sample

    params = [hyper.SearchParameter("outer_every", "quniform", (1, 8, 1)),
              hyper.SearchParameter("proximity_weight", "quniform", (0.0, 0.01, 0.005))]
    drawn = sample(hyper.hyperopt_space(params))
    assert isinstance(drawn["outer_every"], int) and isinstance(drawn["proximity_weight"], float)
    for setting in hyper.draw_settings(params, 3, search_seed=1):
        assert isinstance(setting["outer_every"], int) and 1 <= setting["outer_every"] <= 8


def test_exhaustive_search_needs_choices_only(tmp_path):
    space = tmp_path / "space.hyper"
    space.write_text("outer_every choice [1, 2]\nouter_learning_rate loguniform -9,-7\n")
    with pytest.raises(BiFairInputError, match="exhaustive needs a space of choices only; outer_learning_rate"):
        hyper.hyper_main(["--model=BiFairSASRec", f"--params_file={space}", "--algo=exhaustive"])


@pytest.mark.parametrize("settings, message", [
    (["--model=BiFairSASRc"], "BiFairSASRc"),
    (["--dataset=nosuch"], "nosuch"),
    (["--config_files=missing.yaml"], "config file missing.yaml cannot be read"),
    (["--balancer_temperature=0"], "balancer_temperature must be > 0"),
])
def test_bad_shared_settings_stop_the_search_before_any_trial(tmp_path, monkeypatch, settings, message):
    space = tmp_path / "space.hyper"
    space.write_text("outer_every choice [1, 2]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hyper, "search_with_hyperopt", lambda *args: pytest.fail("a trial ran"))
    with pytest.raises(BiFairInputError, match=message):
        hyper.hyper_main([f"--params_file={space}", *settings])


@pytest.mark.slow
def test_a_failed_trial_is_reported_and_the_sweep_goes_on(tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    space = tmp_path / "space.hyper"
    space.write_text('balancer choice ["softmax", "nosuch"]\n')
    output = tmp_path / "sweep.md"
    args = ["--model=BiFairSASRec", "--dataset=tiny", f"--params_file={space}", "--algo=exhaustive",
            f"--output_file={output}"] + [f"--{k}={v}" for k, v in config.items()]
    assert hyper.main(args) == 0
    with open(output.with_suffix(".csv")) as f:
        rows = {row["params"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"balancer=softmax", "balancer=nosuch"}
    assert "Unknown balancer 'nosuch'" in rows["balancer=nosuch"]["error"]
    assert rows["balancer=softmax"]["error"] == "" and rows["balancer=softmax"]["best"] == "yes"
