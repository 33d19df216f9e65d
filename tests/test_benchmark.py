"""The benchmark harness on the tiny dataset: runs in their own processes, a failing run reported
while the others finish, resume without repeating finished runs, tables and CSV checked
against the runs' own result dicts, plots (or the note that they were skipped). The convergence
and significance columns are checked on fabricated run records (no training)."""
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from recbole_bifair import benchmark
from recbole_bifair.benchmark import report as report_module, runner as runner_module
from recbole_bifair.errors import BiFairInputError

from conftest import REPO_ROOT, TEST_DATA

TINY_SPEC = os.path.join(REPO_ROOT, "benchmarks", "tiny.yaml")
RUN_IDS = [f"tiny__{model}__seed{seed}" for seed in (2020, 2021) for model in ("SASRec", "LLMSASRec")]
BROKEN_IDS = ["tiny__Broken__seed2020", "tiny__Broken__seed2021"]


def write_spec(folder, **changes):
    """tiny.yaml with ``changes``, written into ``folder`` (its data_path made absolute)."""
    with open(TINY_SPEC, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    spec["shared"]["data_path"] = os.path.join(REPO_ROOT, "tests", "test_data")
    spec["shared"]["llm_emb_cache_dir"] = os.path.join(folder, "emb_cache")
    spec.update(changes)
    path = os.path.join(folder, "spec.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One benchmark of the tiny spec plus a model that does not exist (listed first, so the
    others run after it fails): (spec path, output dir, exit code, log text)."""
    folder = tmp_path_factory.mktemp("bench")
    with open(TINY_SPEC, encoding="utf-8") as f:
        models = yaml.safe_load(f)["models"]
    spec = write_spec(str(folder), models=[{"name": "Broken", "model": "NoSuchModel"}] + models)
    output = str(folder / "out")
    cwd = os.getcwd()
    os.chdir(folder)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        code = benchmark.benchmark_main([spec, "--output_dir", output])
    finally:
        logging.getLogger().removeHandler(handler)
        os.chdir(cwd)
    return spec, output, code, "\n".join(r.getMessage() for r in records)


def run_record(output, run_id):
    with open(os.path.join(output, "runs", run_id + ".json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_every_run_is_recorded_and_the_failure_does_not_stop_the_others(finished):
    _, output, code, log = finished
    assert code == 1
    for run_id in RUN_IDS:
        record = run_record(output, run_id)
        assert record["status"] == "ok"
        assert record["epochs"] == 1 and record["train_epoch_seconds"] > 0
        assert record["peak_rss_mb"] > 50
        assert "ndcg@10" in record["test_result"]
        assert record["best_epoch"] == 1 and record["epochs_cap"] == 1
        # the per-user NDCG@10 of the test split give the run's own NDCG@10 and per-group NDCG@10
        users = record["test_users"]
        ndcg, groups = np.array(users["ndcg"]), np.array(users["item_group"])
        assert users["k"] == 10 and users["n"] == len(ndcg) == len(groups) > 10
        assert ndcg.mean() == pytest.approx(record["test_result"]["ndcg@10"], abs=1e-3)
        for group in set(groups):
            assert ndcg[groups == group].mean() == pytest.approx(
                record["test_result"][f"groupndcg@10_g{group}"], abs=1e-3)
    assert len({run_record(output, run_id)["test_users"]["users"] for run_id in RUN_IDS}) == 1
    for run_id in BROKEN_IDS:
        record = run_record(output, run_id)
        assert record["status"] == "failed"
        assert "Unknown model 'NoSuchModel'" in record["error"]
        assert os.path.isfile(os.path.join(output, record["log"]))
    assert "[1/6] tiny Broken seed 2020: FAILED" in log
    assert "[6/6] tiny LLMSASRec seed 2021: done" in log
    assert "left for" in log
    assert not os.listdir(os.path.join(output, "checkpoints"))


@pytest.mark.slow
def test_table_and_csv_hold_mean_and_std_over_seeds(finished):
    _, output, _, _ = finished
    table = pd.read_csv(os.path.join(output, "tiny.csv")).set_index("name")
    markdown = open(os.path.join(output, "tiny.md"), encoding="utf-8").read()
    assert list(table.index) == ["Broken", "SASRec", "LLMSASRec"]
    assert table.loc["Broken", "status"].startswith("failed: BiFairInputError: Unknown model")
    assert "| Broken" in markdown and "failed: BiFairInputError" in markdown
    for model in ("SASRec", "LLMSASRec"):
        records = [run_record(output, f"tiny__{model}__seed{seed}") for seed in (2020, 2021)]
        assert table.loc[model, "seeds"] == 2
        for metric in list(records[0]["test_result"]) + ["train_epoch_seconds", "epochs", "peak_rss_mb"]:
            values = np.array([r["test_result"].get(metric, r.get(metric)) for r in records], dtype=float)
            mean, std = np.mean(values), np.std(values, ddof=1)
            assert table.loc[model, f"{metric}_mean"] == pytest.approx(mean, abs=1e-9)
            assert table.loc[model, f"{metric}_std"] == pytest.approx(std, abs=1e-9)
        ndcg = [r["test_result"]["ndcg@10"] for r in records]
        assert f"{np.mean(ndcg):.4f} ± {np.std(ndcg, ddof=1):.4f}" in markdown
        # epochs: 1 is the cap: every run's best epoch is the last one allowed
        assert table.loc[model, "best_epochs"] == "1 / 1" and table.loc[model, "not_converged"] == 2
        assert markdown_rows(markdown, "## Main results")[model]["best epoch"] == "1.0 (1‡ / 1‡)"
    for header in ("- runs made by: `python -m recbole_bifair.benchmark", "- machine:", "- versions: torch",
                   "- runs finished: 20", "recbole 1.2.1"):
        assert header in markdown
    assert "report written by" not in markdown


def test_report_rebuilt_elsewhere_names_the_machine_and_commands_of_the_runs(tmp_path, monkeypatch):
    spec = benchmark.load_spec(write_spec(str(tmp_path)), output_dir=str(tmp_path / "out"))
    plans = benchmark.plan_runs(spec)
    os.makedirs(os.path.join(spec.output_dir, "runs"))
    for index, plan in enumerate(plans):
        record = {**fake_record(plan), "finished_at": f"2026-01-0{index + 1}T10:00:00", "gpu": "Some GPU",
                  "cpu": "Some CPU, 16 logical cores", "versions": "torch 9.9", "command": f"run {index}"}
        benchmark.write_json_atomic(benchmark.record_path(spec, plan), record)
    monkeypatch.setattr(report_module, "cpu_description", lambda: "This CPU, 2 logical cores")
    benchmark.write_reports(spec, command="rebuild")
    markdown = open(os.path.join(spec.output_dir, "tiny.md"), encoding="utf-8").read()
    for line in ("- runs made by: `run 0`", "- runs made by: `run 2`", "- runs made by 1 more commands",
                 "- report written by: `rebuild`",
                 "- machine: Some CPU, 16 logical cores; GPU: Some GPU", "- versions: torch 9.9",
                 "- runs finished: 2026-01-01 10:00 to 2026-01-04 10:00"):
        assert line in markdown
    assert "This CPU" not in markdown and "`run 3`" not in markdown


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_plots_are_written(finished):
    _, output, _, _ = finished
    for name in ("tiny_group_ndcg.png", "tiny_tradeoff.png"):
        path = os.path.join(output, name)
        assert os.path.getsize(path) > 1000
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_plots_skipped_without_matplotlib(finished, tmp_path, monkeypatch, caplog):
    spec, output, _, _ = finished
    copy = str(tmp_path / "out")
    shutil.copytree(output, copy, ignore=shutil.ignore_patterns("*.png", "*.md", "*.csv"))
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    caplog.set_level(logging.INFO)
    assert benchmark.benchmark_main([spec, "--output_dir", copy, "--report-only"]) == 0
    assert "Plots skipped: matplotlib is not installed" in caplog.text
    assert "Plots skipped: matplotlib is not installed" in open(os.path.join(copy, "tiny.md")).read()
    assert os.path.isfile(os.path.join(copy, "tiny.csv"))
    assert not [f for f in os.listdir(copy) if f.endswith(".png")]


@pytest.mark.slow
def test_resume_runs_only_the_missing_run(finished, tmp_path, monkeypatch, caplog):
    spec, output, _, _ = finished
    copy = str(tmp_path / "out")
    shutil.copytree(output, copy)
    os.remove(os.path.join(copy, "runs", "tiny__LLMSASRec__seed2020.json"))
    before = {run_id: run_record(copy, run_id)["finished_at"] for run_id in RUN_IDS if "LLM" not in run_id}
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    code = benchmark.benchmark_main([spec, "--output_dir", copy, "--models", "SASRec,LLMSASRec"])
    assert code == 0
    assert "3 of 4 runs already finished, skipped" in caplog.text
    assert "[1/1] tiny LLMSASRec seed 2020: done" in caplog.text
    assert run_record(copy, "tiny__LLMSASRec__seed2020")["status"] == "ok"
    assert {run_id: run_record(copy, run_id)["finished_at"] for run_id in before} == before


def fake_record(plan, status="ok"):
    return {"run_id": plan.run_id, "fingerprint": plan.fingerprint, "status": status, "dataset": plan.dataset,
            "name": plan.entry.name, "seed": plan.seed, "test_result": {"ndcg@10": 0.1 * plan.seed},
            "train_epoch_seconds": 1.0, "epochs": 1, "peak_rss_mb": 100.0, "wall_seconds": 1.0}


def test_interrupted_benchmark_resumes_where_it_stopped(tmp_path, monkeypatch):
    spec = benchmark.load_spec(write_spec(str(tmp_path)), output_dir=str(tmp_path / "out"))
    calls = []

    def stop_at_second_run(spec, plan, label="", verbose=False, fresh=False):
        calls.append(plan.run_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_record(plan)

    monkeypatch.setattr(runner_module, "execute_run", stop_at_second_run)
    summary = benchmark.run_benchmark(spec)
    assert summary.interrupted and summary.executed == RUN_IDS[:1]
    calls.clear()
    monkeypatch.setattr(runner_module, "execute_run", lambda spec, plan, label="", verbose=False, fresh=False:
                        calls.append(plan.run_id) or fake_record(plan))
    summary = benchmark.run_benchmark(spec)
    assert calls == RUN_IDS[1:] and summary.skipped == RUN_IDS[:1]
    calls.clear()
    benchmark.run_benchmark(benchmark.load_spec(write_spec(str(tmp_path)), output_dir=str(tmp_path / "out"),
                                                overrides={"epochs": 2}))
    assert calls == RUN_IDS, "a changed config runs everything again"


def _interrupt_mid_run(spec, plan, fingerprint):
    """A checkpoint folder as an interrupted run of ``fingerprint`` leaves it: marked, with a
    last checkpoint and its sidecar."""
    folder = benchmark.checkpoint_dir(spec, plan)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, runner_module.CHECKPOINT_FINGERPRINT), "w", encoding="utf-8") as f:
        json.dump({"fingerprint": fingerprint}, f)
    for name in ("Run-last.pth", "Run.pth"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"state")
    with open(os.path.join(folder, "Run-last.json"), "w", encoding="utf-8") as f:
        json.dump({"model": plan.entry.model, "dataset": plan.dataset, "checkpoint": "Run-last.pth"}, f)
    return folder


@pytest.mark.parametrize("fingerprint, fresh, resumes", [
    ("same", False, True), ("same", True, False), ("other", False, False)])
def test_interrupted_run_continues_from_its_last_checkpoint_only_under_the_same_plan(
        tmp_path, monkeypatch, fingerprint, fresh, resumes):
    spec = benchmark.load_spec(write_spec(str(tmp_path)), output_dir=str(tmp_path / "out"))
    plan = benchmark.plan_runs(spec)[0]
    folder = _interrupt_mid_run(spec, plan, plan.fingerprint if fingerprint == "same" else "0123456789abcdef")
    seen = []

    def child(request, *args):  # what the run process would find
        seen.append((request["config"].get("resume"), os.path.exists(os.path.join(folder, "Run-last.pth")),
                     os.path.exists(os.path.join(folder, "Run.pth")),
                     json.load(open(os.path.join(folder, runner_module.CHECKPOINT_FINGERPRINT)))["fingerprint"]))
        return 1, []

    monkeypatch.setattr(runner_module, "stream_child", child)
    record = runner_module.execute_run(spec, plan, fresh=fresh)
    assert record["resumed"] is resumes
    assert seen == [("last" if resumes else None, resumes, True, plan.fingerprint)]  # best checkpoints stay


def test_spec_and_command_line_errors(tmp_path, capsys):
    with pytest.raises(BiFairInputError, match="seeds"):
        benchmark.spec_from_dict({"datasets": ["tiny"], "seeds": [], "models": ["SASRec"]})
    with pytest.raises(BiFairInputError, match="unique"):
        benchmark.spec_from_dict({"datasets": ["tiny"], "seeds": [1], "models": ["SASRec", "SASRec"]})
    assert benchmark.parse_overrides(["epochs=1", "rerank={target: uniform}"]) == {
        "epochs": 1, "rerank": {"target": "uniform"}}
    spec = write_spec(str(tmp_path))
    assert benchmark.benchmark_main([f"--benchmark={spec}", "--models", "Nope"]) == 2
    assert "unknown model(s) ['Nope']" in capsys.readouterr().err


def test_yaml_syntax_and_report_k_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("datasets: [tiny\nseeds: [1]\n", encoding="utf-8")
    with pytest.raises(BiFairInputError, match=r"broken\.yaml is not valid YAML"):
        benchmark.load_spec(str(broken))
    with pytest.raises(BiFairInputError, match=r"--set 'rerank=\{target: uniform': the value is not valid YAML"):
        benchmark.parse_overrides(["rerank={target: uniform"])
    spec = {"datasets": ["tiny"], "seeds": [1], "models": ["SASRec"]}
    for report_k in ("ten", 2.5, -1, [10]):
        with pytest.raises(BiFairInputError, match="report_k must be a positive integer"):
            benchmark.spec_from_dict({**spec, "report_k": report_k})
    assert benchmark.spec_from_dict(spec).report_k == 10
    assert benchmark.spec_from_dict({**spec, "report_k": "5"}).report_k == 5


def test_spec_base_shares_settings_of_another_spec():
    main = benchmark.load_spec(os.path.join(REPO_ROOT, "benchmarks", "ml-100k.yaml"))
    for name in ["ml-100k-ablations.yaml", "ml-100k-backbones.yaml"]:
        spec = benchmark.load_spec(os.path.join(REPO_ROOT, "benchmarks", name))
        assert spec.shared == main.shared and spec.seeds == main.seeds and spec.datasets == main.datasets
        assert spec.name != main.name and [m.name for m in spec.models] != [m.name for m in main.models]


@pytest.mark.slow
def test_step_cost_script_measures_any_backbone(tmp_path, capsys, embedding_cache, monkeypatch):
    """benchmarks/step_cost.py with --backbone=BPR: one line per form of the backbone, the plain
    backbone as the x1.00 baseline."""
    spec = importlib.util.spec_from_file_location("step_cost", os.path.join(REPO_ROOT, "benchmarks", "step_cost.py"))
    step_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_cost)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    step_cost.main(["--dataset=tiny", "--steps=1", "--backbone=BPR", f"--data_path={TEST_DATA}", "--load_col=~",
                    "--embedding_size=8", "--train_batch_size=64", f"--llm_emb_cache_dir={embedding_cache}",
                    f"--checkpoint_dir={tmp_path}"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "ms/step" in line]
    assert [line.split()[0] for line in lines] == ["BPR", "LLMBPR"] + ["BiFairBPR"] * len(step_cost.BIFAIR_VARIANTS)
    assert lines[0].endswith("x1.00")
    assert all(float(line.split()[-3]) > 0 for line in lines)
    step_cost.main(["--dataset=tiny", "--steps=1", "--backbone=BPR", f"--data_path={TEST_DATA}", "--load_col=~",
                    "--embedding_size=8", "--train_batch_size=64", f"--llm_emb_cache_dir={embedding_cache}",
                    f"--checkpoint_dir={tmp_path}", "--anomaly", "--profile=3", "--variants=first_order"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "ms/step" in line]
    assert [line.split()[0] for line in lines] == ["BPR", "LLMBPR", "BiFairBPR"]
    assert all("anomaly detection on:" in line for line in lines)
    assert out.count("Self CPU time total") == 3


@pytest.mark.slow
def test_parallel_gpu_script_runs_every_job_and_reports_failures(tmp_path):
    """benchmarks/ml-1m-gpu.sh on the tiny spec (no GPU: the runs time-slice the CPU): every
    (model, seed) runs, the report is written, its command is the script's, and a model the
    spec lacks makes the script exit non-zero."""
    script = os.path.join(REPO_ROOT, "benchmarks", "ml-1m-gpu.sh")
    output = str(tmp_path / "out")
    env = {**os.environ, "SPEC": "benchmarks/tiny.yaml", "MODELS": "SASRec NoSuchModel", "SEEDS": "2020 2021",
           "OUTPUT": output, "JOBS": "2", "PYTHON": sys.executable}
    finished = subprocess.run(["bash", script, "--set", "epochs=1"], env=env, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 1, finished.stderr
    assert sorted(os.listdir(os.path.join(output, "runs"))) == ["tiny__SASRec__seed2020.json",
                                                                "tiny__SASRec__seed2021.json"]
    markdown = open(os.path.join(output, "tiny.md"), encoding="utf-8").read()
    assert (f'- runs made by: `OUTPUT={output} SPEC=benchmarks/tiny.yaml MODELS="SASRec NoSuchModel" '
            f'SEEDS="2020 2021" bash benchmarks/ml-1m-gpu.sh --set epochs=1`') in markdown
    assert "unknown model(s)" in open(os.path.join(output, "logs", "harness_NoSuchModel_2020.txt")).read()


# ---- convergence, significance and prior columns, on fabricated records ------------------------

def markdown_rows(markdown, heading):
    """{first cell: {column: cell}} of the first table after the line starting with ``heading``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    table = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif table:
            break
    header, rows = table[0], table[2:]
    return {row[0]: dict(zip(header, row)) for row in rows}


def fabricated_spec(tmp_path, models, seeds=(2020, 2021, 2022), **changes):
    """The tiny spec with ``models`` (display names of SASRec runs) and ``seeds``, in tmp_path."""
    entries = [{"name": name, "model": "SASRec"} for name in models]
    path = write_spec(str(tmp_path), models=entries, seeds=list(seeds), **changes)
    return benchmark.load_spec(path, output_dir=str(tmp_path / "out"))


def write_records(spec, fields_of):
    """A finished record for every run of ``spec`` for which ``fields_of(name, seed)`` gives a
    dict (None: no record), on top of the fingerprint and identity of its plan."""
    for plan in benchmark.plan_runs(spec):
        fields = fields_of(plan.entry.name, plan.seed)
        if fields is not None:
            record = {"run_id": plan.run_id, "fingerprint": plan.fingerprint, "status": "ok",
                      "dataset": plan.dataset, "name": plan.entry.name, "seed": plan.seed,
                      "config": plan.config, "epochs": 1, "train_epoch_seconds": 1.0, **fields}
            benchmark.write_json_atomic(benchmark.record_path(spec, plan), record)


def report(spec):
    benchmark.write_reports(spec)
    markdown = open(os.path.join(spec.output_dir, "tiny.md"), encoding="utf-8").read()
    return markdown, pd.read_csv(os.path.join(spec.output_dir, "tiny.csv")).set_index("name")


def descending(best, epochs, step=0.01):
    """Valid scores rising up to epoch ``best``, then falling until ``epochs``."""
    return [[e, round(0.1 + step * (e if e <= best else 2 * best - e), 4)] for e in range(1, epochs + 1)]


def test_best_epoch_column_and_not_converged_flag(tmp_path):
    spec = fabricated_spec(tmp_path, ["Early", "Capped", "Old"])
    runs = {  # (best epoch, epochs trained); cap 20, early stopping after more than 2 worse validations
        ("Early", 2020): (9, 12), ("Early", 2021): (12, 15), ("Early", 2022): (10, 13),
        ("Capped", 2020): (20, 20),   # best epoch = the cap
        ("Capped", 2021): (15, 20),   # 5 worse validations at the cap, but stopping_step is 10 here
    }

    def fields(name, seed):
        if name == "Old" or (name, seed) == ("Capped", 2022):
            return {"test_result": {"ndcg@10": 0.1}}  # a record from before best epochs were recorded
        best, trained = runs[(name, seed)]
        stopping_step = 10 if name == "Capped" else 2
        return {"test_result": {"ndcg@10": 0.1}, "best_epoch": best, "epochs": trained, "epochs_cap": 20,
                "stopping_step": stopping_step, "valid_scores": descending(best, trained),
                "valid_score_bigger": True}

    write_records(spec, fields)
    markdown, table = report(spec)
    cells = {name: row["best epoch"] for name, row in markdown_rows(markdown, "## Main results").items()}
    assert cells == {"Early": "10.3 (9 / 12 / 10)", "Capped": "17.5 (20‡ / 15‡ / n/a)", "Old": "n/a"}
    assert "‡ not converged" in markdown and "Capped (seeds 2020, 2021)" in markdown
    assert "Early (" not in markdown.split("‡ not converged", 1)[1].split("\n")[0]
    assert table.loc["Early", "best_epoch_mean"] == pytest.approx(31 / 3)
    assert table.loc["Early", "best_epochs"] == "9 / 12 / 10" and table.loc["Early", "not_converged"] == 0
    assert table.loc["Capped", "best_epochs"] == "20 / 15 / n/a" and table.loc["Capped", "not_converged"] == 2
    assert table.loc["Capped", "not_converged_seeds"] == "2020, 2021"
    assert pd.isna(table.loc["Old", "best_epoch_mean"])


def test_not_converged_follows_recbole_early_stopping():
    record = {"best_epoch": 3, "epochs": 6, "epochs_cap": 6, "stopping_step": 2, "valid_score_bigger": True,
              "valid_scores": [[1, 0.1], [2, 0.2], [3, 0.3], [4, 0.2], [5, 0.2], [6, 0.2]]}
    assert benchmark.not_converged(record) is False, "stopped early at the cap: 3 worse validations > 2"
    assert benchmark.not_converged({**record, "stopping_step": 3}) is True, "reached the cap, not stopped"
    tie = {**record, "valid_scores": [[1, 0.1], [2, 0.2], [3, 0.3], [4, 0.3], [5, 0.2], [6, 0.2]]}
    assert benchmark.not_converged(tie) is True, "RecBole counts an equal score as an improvement"
    smaller = {**record, "valid_score_bigger": False,
               "valid_scores": [[1, 0.3], [2, 0.2], [3, 0.1], [4, 0.2], [5, 0.2], [6, 0.2]]}
    assert benchmark.not_converged(smaller) is False
    assert benchmark.not_converged({**record, "best_epoch": 6}) is True
    assert benchmark.not_converged({**record, "epochs": 5}) is False
    assert benchmark.not_converged({"epochs": 5, "config": {"epochs": 5}}) is None, "no best epoch: n/a"
    assert benchmark.not_converged({"best_epoch": 5, "epochs": 5, "config": {"epochs": 5}}) is True


def test_reference_must_name_a_model_of_the_spec(tmp_path):
    raw = {"datasets": ["tiny"], "seeds": [1], "models": ["SASRec", {"name": "LLM", "model": "LLMSASRec"}]}
    assert benchmark.spec_from_dict(raw).reference is None
    assert benchmark.spec_from_dict({**raw, "reference": "LLM"}).reference == "LLM"
    for wrong in ("LLMSASRec", "sasrec", ["SASRec"]):
        with pytest.raises(BiFairInputError, match=r"reference .* is not a model of the spec: give the display "
                                                   r"name \(`name`\) of one of its models \['SASRec', 'LLM'\]"):
            benchmark.spec_from_dict({**raw, "reference": wrong})
    path = write_spec(str(tmp_path), reference="Nope")
    assert benchmark.benchmark_main([path, "--report-only", "--output_dir", str(tmp_path / "out")]) == 2
    assert "reference" in benchmark.SPEC_KEYS and "reference:" in benchmark.__doc__


def test_ratio_table_divides_means_over_the_shared_seeds(tmp_path):
    spec = fabricated_spec(tmp_path, ["Plain", "LLM", "Fair"], reference="Plain", ratio_to=["Plain", "LLM"])
    ndcg = {"Plain": [0.10, 0.12, 0.14], "LLM": [0.12, 0.12, 0.12], "Fair": [0.09, 0.12]}  # Fair: 2 seeds
    head = {"Plain": 0.2, "LLM": 0.0, "Fair": 0.1}

    def fields(name, seed):
        index = seed - 2020
        if index >= len(ndcg[name]):
            return None
        test = {"ndcg@10": ndcg[name][index], "ndcggap@10": 0.1, "ndcgworst@10": 0.05,
                "groupndcg@10_g0": head[name], "groupndcg@10_g1": 0.05}
        return {"test_result": test, "best_valid_result": {"ndcg@10": 2 * ndcg[name][index]}}

    write_records(spec, fields)
    markdown, _ = report(spec)
    ratios = markdown_rows(markdown, "## Ratios of the means")
    assert list(ratios) == ["LLM / Plain", "Fair / Plain", "Fair / LLM"], "no Plain / LLM: the inverse row"
    assert ratios["LLM / Plain"]["test NDCG"] == "1.00x" and ratios["LLM / Plain"]["seeds"] == "3"
    # Fair has seeds 2020 and 2021 only: (0.09 + 0.12) / (0.10 + 0.12), not / the 3-seed mean 0.12
    assert ratios["Fair / Plain"]["test NDCG"] == "0.95x" and ratios["Fair / Plain"]["seeds"] == "2"
    assert ratios["Fair / Plain"]["valid NDCG"] == "0.95x"
    assert ratios["Fair / Plain"]["test head"] == "0.50x" and ratios["Fair / Plain"]["test tail"] == "1.00x"
    assert ratios["Fair / LLM"]["test head"] == "n/a", "LLM's head group is 0: no ratio"
    assert "valid gap" not in ratios["Fair / LLM"], "no valid gap in these records: no column"


def test_model_names_with_commas_are_refused():
    """--models splits on commas, so such a name could never be selected."""
    raw = {"datasets": ["tiny"], "seeds": [1], "models": [{"name": "BiFair, outer every 16", "model": "BiFairSASRec"}]}
    with pytest.raises(BiFairInputError, match=r"model names cannot contain commas .*'BiFair, outer every 16'"):
        benchmark.spec_from_dict(raw)


def test_ratio_to_defaults_to_the_reference_and_names_models(tmp_path):
    raw = {"datasets": ["tiny"], "seeds": [1], "models": ["SASRec", {"name": "LLM", "model": "LLMSASRec"}]}
    assert benchmark.spec_from_dict(raw).ratio_to == []
    assert benchmark.spec_from_dict({**raw, "reference": "LLM"}).ratio_to == ["LLM"]
    assert benchmark.spec_from_dict({**raw, "reference": "LLM", "ratio_to": "SASRec"}).ratio_to == ["SASRec"]
    with pytest.raises(BiFairInputError, match=r"ratio_to 'LLMSASRec' is not a model of the spec"):
        benchmark.spec_from_dict({**raw, "ratio_to": ["SASRec", "LLMSASRec"]})
    assert "ratio_to" in benchmark.SPEC_KEYS and "ratio_to:" in benchmark.__doc__


def user_values(seed, n=200):
    """Per-user NDCG@10 of the reference for ``seed``: base values plus a little seed noise."""
    base = np.random.default_rng(0).uniform(0, 0.5, n)
    return base + np.random.default_rng(seed).normal(0, 0.01, n)


def user_fields(values, groups):
    values = np.round(np.clip(values, 0, 1), 4)
    group_means = {f"groupndcg@10_g{g}": float(values[groups == g].mean()) for g in (0, 1)}
    test_result = {"ndcg@10": float(values.mean()), **group_means,
                   "ndcggap@10": abs(group_means["groupndcg@10_g0"] - group_means["groupndcg@10_g1"]),
                   "ndcgworst@10": min(group_means.values())}
    return {"test_result": test_result,
            "test_users": {"k": 10, "n": len(values), "users": "same-users", "ndcg": values.tolist(),
                           "item_group": groups.tolist()}}


def test_significance_over_test_users(tmp_path):
    spec = fabricated_spec(tmp_path, ["Reference", "Better", "Same", "WorseInG1"], reference="Reference")
    n = 200
    groups = np.arange(n) % 2
    alternating = np.where((np.arange(n) // 2) % 2 == 0, 0.01, -0.01)  # sums to 0 within each group
    shifts = {"Reference": np.zeros(n), "Better": np.full(n, 0.05), "Same": alternating,
              "WorseInG1": np.where(groups == 1, -0.1, 0.0)}
    write_records(spec, lambda name, seed: user_fields(user_values(seed) + shifts[name], groups))
    markdown, table = report(spec)
    main, per_group = markdown_rows(markdown, "## Main results"), markdown_rows(markdown, "## NDCG@10 per item group")

    def mark(cell):
        return cell.rsplit(" ", 1)[1] if cell.endswith(("*", "†")) else ""

    assert {name: mark(row["ndcg@10"]) for name, row in main.items()} == {
        "Reference (reference)": "", "Better": "*", "Same": "", "WorseInG1": "†"}
    assert {name: (mark(row["g0"]), mark(row["g1"])) for name, row in per_group.items()} == {
        "Reference (reference)": ("", ""), "Better": ("*", "*"), "Same": ("", ""), "WorseInG1": ("", "†")}
    assert table.loc["Better", "ndcg@10_p"] < 1e-6 and table.loc["Same", "ndcg@10_p"] > 0.5
    assert table.loc["Better", "ndcg@10_vs_reference"] == "better"
    assert table.loc["Same", "groupndcg@10_g1_vs_reference"] == "not significant"
    assert table.loc["WorseInG1", "groupndcg@10_g1_vs_reference"] == "worse"
    assert table.loc["Better", "ndcg@10_test"] == "paired t-test over 200 users (mean of 3 seeds)"
    assert table.loc["Better", "groupndcg@10_g0_test"] == "paired t-test over 100 users (mean of 3 seeds)"
    assert pd.isna(table.loc["Reference", "ndcg@10_p"])
    assert "significantly better / worse than the reference Reference" in markdown
    assert "p < 0.05" in markdown and "over the test users" in markdown
    full = markdown_rows(markdown, "## All test metrics")
    assert full["ndcg@10"]["Better"].endswith(" *") and full["groupndcg@10_g1"]["WorseInG1"].endswith(" †")


def test_reference_from_the_command_line_writes_its_own_report(tmp_path):
    """``--reference NAME`` marks significance against NAME in ``<dataset>_vs_<NAME>.md`` and
    leaves the report against the spec's reference as it was; an unknown name is one error."""
    spec = fabricated_spec(tmp_path, ["Reference", "Better"], reference="Reference")
    n = 200
    groups = np.arange(n) % 2
    write_records(spec, lambda name, seed: user_fields(user_values(seed) + (0.05 if name == "Better" else 0.0),
                                                       groups))
    spec_path, output = str(tmp_path / "spec.yaml"), spec.output_dir
    assert benchmark.benchmark_main([spec_path, "--output_dir", output, "--report-only"]) == 0
    own = open(os.path.join(output, "tiny.md"), encoding="utf-8").read()
    assert benchmark.benchmark_main([spec_path, "--output_dir", output, "--report-only",
                                     "--reference", "Better"]) == 0
    assert open(os.path.join(output, "tiny.md"), encoding="utf-8").read() == own
    against_better = open(os.path.join(output, "tiny_vs_Better.md"), encoding="utf-8").read()
    main = markdown_rows(against_better, "## Main results")
    assert main["Reference"]["ndcg@10"].endswith(" †") and not main["Better (reference)"]["ndcg@10"].endswith("*")
    assert markdown_rows(own, "## Main results")["Better"]["ndcg@10"].endswith(" *")
    assert os.path.isfile(os.path.join(output, "tiny_vs_Better.csv"))
    assert benchmark.benchmark_main([spec_path, "--output_dir", output, "--report-only",
                                     "--reference", "Nope"]) == 2


def test_significance_over_seeds_for_group_level_metrics(tmp_path):
    spec = fabricated_spec(tmp_path, ["Reference", "Fairer", "Noisy", "OneSeed"], reference="Reference")
    values = {  # ndcg@10, ndcggap@10, ndcgworst@10 per seed 2020, 2021, 2022; no per-user values
        "Reference": ([0.10, 0.11, 0.12], [0.20, 0.21, 0.22], [0.010, 0.012, 0.011]),
        "Fairer": ([0.05, 0.062, 0.058], [0.10, 0.115, 0.105], [0.030, 0.031, 0.033]),
        "Noisy": ([0.12, 0.09, 0.13], [0.25, 0.15, 0.21], [0.020, 0.005, 0.011]),
        "OneSeed": ([0.5], [0.9], [0.0]),
    }

    def fields(name, seed):
        columns = values[name]
        index = seed - 2020
        if index >= len(columns[0]):
            return None
        ndcg, gap, worst = (column[index] for column in columns)
        return {"test_result": {"ndcg@10": ndcg, "ndcggap@10": gap, "ndcgworst@10": worst}}

    write_records(spec, fields)
    markdown, table = report(spec)
    main = markdown_rows(markdown, "## Main results")
    assert main["Fairer"]["ndcg@10"].endswith(" †"), "lower NDCG: worse"
    assert main["Fairer"]["ndcggap@10"].endswith(" *"), "a smaller gap is better"
    assert main["Fairer"]["ndcgworst@10"].endswith(" *")
    for name in ("Noisy", "OneSeed"):
        for metric in ("ndcg@10", "ndcggap@10", "ndcgworst@10"):
            assert not main[name][metric].endswith(("*", "†")), (name, metric)
    assert table.loc["Fairer", "ndcggap@10_test"] == "paired t-test over 3 shared seeds"
    assert table.loc["Fairer", "ndcg@10_test"] == "paired t-test over 3 shared seeds", "no per-user values"
    assert table.loc["OneSeed", "ndcggap@10_test"].startswith("no test")
    assert pd.isna(table.loc["OneSeed", "ndcggap@10_p"])
    assert "over the seeds both models share" in markdown and "not tested (fewer than 2 pairs)" in markdown


def test_prior_fairness_columns(tmp_path):
    spec = fabricated_spec(tmp_path, ["SASRec", "BiFair"])

    def fields(name, seed):
        result = {"test_result": {"ndcg@10": 0.1, "ndcggap@10": 0.1}}
        if name == "BiFair":
            i = seed - 2020
            result["prior_fairness"] = {"E0": {"ndcg@10": 0.05, "ndcggap@10": 0.20 + 0.01 * i},
                                        "E": {"ndcg@10": 0.06 + 0.01 * i, "ndcggap@10": 0.10}}
        return result

    write_records(spec, fields)
    markdown, table = report(spec)
    main = markdown_rows(markdown, "## Main results")
    assert main["BiFair"]["prior_E0_ndcg@10"] == "0.0500 ± 0.0000"
    assert main["BiFair"]["prior_E0_ndcggap@10"] == "0.2100 ± 0.0100"
    assert main["BiFair"]["prior_E_ndcg@10"] == "0.0700 ± 0.0100"
    assert main["BiFair"]["prior_E_ndcggap@10"] == "0.1000 ± 0.0000"
    assert main["SASRec"]["prior_E_ndcggap@10"] == ""
    assert table.loc["BiFair", "prior_E0_ndcggap@10_mean"] == pytest.approx(0.21)
    assert "before (E0) and after (E) training" in markdown

    (tmp_path / "plain").mkdir()
    plain = fabricated_spec(tmp_path / "plain", ["SASRec"])
    write_records(plain, lambda name, seed: {"test_result": {"ndcg@10": 0.1, "ndcggap@10": 0.1}})
    markdown, _ = report(plain)
    assert "prior_E" not in markdown and "No significance" not in markdown and "significantly" not in markdown


def test_second_order_share_column(tmp_path):
    """The mean of a run's logged shares weighted by their outer steps, then mean ± std over seeds."""
    spec = fabricated_spec(tmp_path, ["LLMSASRec", "BiFair"])

    def fields(name, seed):
        result = {"test_result": {"ndcg@10": 0.1, "ndcggap@10": 0.1}}
        if name == "BiFair":
            result["hypergradient_diagnostics"] = [
                {"epoch": 0, "second_order_share": 0.1, "cosine_to_direct": 1.0, "outer_steps": 3},
                {"epoch": 1, "second_order_share": 0.5 + 0.1 * (seed - 2020), "cosine_to_direct": 0.9, "outer_steps": 1},
            ]
        return result

    write_records(spec, fields)
    markdown, table = report(spec)
    main = markdown_rows(markdown, "## Main results")
    # seeds: (0.3 + 0.5) / 4 = 0.2, (0.3 + 0.6) / 4 = 0.225, (0.3 + 0.7) / 4 = 0.25
    assert table.loc["BiFair", "second_order_share_mean"] == pytest.approx(0.225)
    assert main["BiFair"]["second_order_share"] == "0.2250 ± 0.0250"
    assert main["LLMSASRec"]["second_order_share"] == ""
    assert "second_order_share: ||second-order part||" in markdown


def test_committed_records_are_still_read(tmp_path):
    """Records of results/ml-100k/runs (no best epoch, no per-user values) give n/a and seed tests."""
    spec = fabricated_spec(tmp_path, ["SASRec", "BiFairSASRec"], reference="SASRec")
    for plan in benchmark.plan_runs(spec):
        committed = os.path.join(REPO_ROOT, "results", "ml-100k", "runs",
                                 f"ml-100k__{plan.entry.name}__seed{plan.seed}.json")
        with open(committed, encoding="utf-8") as f:
            record = json.load(f)
        benchmark.write_json_atomic(benchmark.record_path(spec, plan), {**record, "fingerprint": plan.fingerprint})
    markdown, table = report(spec)
    main = markdown_rows(markdown, "## Main results")
    assert main["SASRec (reference)"]["best epoch"] == main["BiFairSASRec"]["best epoch"] == "n/a"
    assert table.loc["BiFairSASRec", "ndcg@10_test"] == "paired t-test over 3 shared seeds"
    assert table.loc["BiFairSASRec", "ndcg@10_mean"] > 0 and "‡" not in markdown


def test_user_ndcg_is_recboles_ndcg(monkeypatch):
    from recbole.evaluator.metrics import NDCG

    monkeypatch.setattr(np, "float", np.float64, raising=False)  # RecBole's alias (its Config sets it)
    rng = np.random.default_rng(1)
    hits = rng.random((50, 20)) < 0.2
    positives = np.maximum(hits.sum(axis=1), rng.integers(1, 30, 50))
    recbole_values = NDCG.metric_info(None, hits, positives)
    for k in (1, 5, 10, 20):
        np.testing.assert_allclose(benchmark.user_ndcg(hits, positives, k), recbole_values[:, k - 1])


def test_records_keep_number_lists_on_one_line(tmp_path):
    data = {"a": [1, 2.5, -3e-05], "nested": [[1, 0.1], [2, 0.2]], "text": "[1,\n 2]", "mixed": [1, "x"],
            "empty": []}
    path = str(tmp_path / "r.json")
    benchmark.write_json_atomic(path, data)
    text = open(path, encoding="utf-8").read()
    assert json.loads(text) == data
    assert '"a": [1, 2.5, -3e-05]' in text and "[1, 0.1]" in text
    assert '"mixed": [\n' in text, "a list with a string stays one element a line"


def test_watch_records_the_test_evaluation_per_user():
    """The run process's watch, a trainer callback, keeps the per-user NDCG@k of the model's
    test evaluation: not a validation, not a later evaluation of the test split (the
    prior-fairness one), users sorted by token, with the item group of their test positive;
    nothing of the trainer is replaced."""
    import types

    import torch
    from recbole.evaluator.collector import DataStruct

    from recbole_bifair.trainer.hooks import TrainerHooks

    class Base:  # what TrainerHooks sits on: an evaluate that reports its batches and struct
        def __init__(self, config, model):
            self.eval_collector, self.first_hit = types.SimpleNamespace(listen=lambda trainer: None), None

        def evaluate(self, eval_data, load_best_model=True, show_progress=False):
            users = torch.tensor(eval_data)
            self.emit("on_evaluation_batch", torch.zeros(len(users), 9), {"user_id": users})
            hits = torch.zeros(len(users), 11, dtype=torch.int)
            hits[:, 0], hits[:, -1] = self.first_hit, 1  # a positive at rank 1 or none; 1 positive
            struct = DataStruct()
            struct.set("rec.topk", hits)
            struct.set("rec.group_pos", torch.nn.functional.one_hot(users % 2, 2))
            self.emit("on_evaluation_struct", struct)
            return {"ndcg@10": float(struct.get("rec.topk")[:, 0].float().mean())}

    class Trainer(TrainerHooks, Base):
        pass

    dataset = types.SimpleNamespace(id2token=lambda field, ids: np.array([f"u{i}" for i in ids]))
    trainer, valid_data, test_data = Trainer(None, None), [4, 5], [3, 1, 2]
    evaluate = Trainer.evaluate
    config = {"USER_ID_FIELD": "user_id", "epochs": 7, "stopping_step": 2, "eval_step": 1}
    watch = trainer.add_callback(benchmark.EvaluationWatch(10))
    trainer.emit("on_run_start", config, dataset, test_data)
    trainer.first_hit = torch.tensor([1, 1])
    trainer.evaluate(valid_data)
    trainer.first_hit = torch.tensor([1, 0, 0])  # the model: user 3 hits at rank 1
    test_result = trainer.evaluate(test_data)
    trainer.first_hit = torch.tensor([0, 1, 1])  # the prior's evaluation of the same split
    trainer.evaluate(test_data)
    assert Trainer.evaluate is evaluate and "evaluate" not in vars(trainer)
    fields = watch.record_fields({"test_result": test_result})
    assert {key: fields[key] for key in ("epochs_cap", "stopping_step", "eval_step")} == {
        "epochs_cap": 7, "stopping_step": 2, "eval_step": 1}
    users = fields["test_users"]
    assert users["ndcg"] == [0.0, 0.0, 1.0] and users["item_group"] == [1, 0, 1]  # u1, u2, u3
    assert users["k"] == 10 and users["n"] == 3 and len(users["users"]) == 16
    assert benchmark.EvaluationWatch(10).record_fields({}) == {}, "nothing watched: nothing recorded"


def test_validation_table_shows_the_tested_models_valid_values(tmp_path):
    spec = fabricated_spec(tmp_path, ["A", "B"], seeds=(2020, 2021))
    valid = {("A", 2020): 0.05, ("A", 2021): 0.07, ("B", 2020): 0.03, ("B", 2021): 0.03}

    def fields(name, seed):
        value = valid[(name, seed)]
        return {"test_result": {"ndcg@10": 0.5},
                "best_valid_result": {"ndcg@10": value, "ndcggap@10": 2 * value, "ndcgworst@10": value / 2,
                                      "groupndcg@10_g1": value, "groupndcg@10_g0": 3 * value}}

    write_records(spec, fields)
    markdown, _ = report(spec)
    rows = markdown_rows(markdown, "## Validation split")
    assert rows["A"]["ndcg@10"] == "0.0600 ± 0.0141" and rows["B"]["ndcg@10"] == "0.0300 ± 0.0000"
    assert rows["A"]["g0"] == "0.1800 ± 0.0424" and rows["A"]["ndcggap@10"] == "0.1200 ± 0.0283"
    assert list(rows["A"])[-2:] == ["g0", "g1"]
    assert "0.5000" not in markdown.split("## Validation split", 1)[1].split("##", 1)[0]


def child_pids(pid):
    """The harness's run processes (not the short helpers it may start)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        return []
    return [child for child in children if benchmark.RUN_FLAG in command_line(child)]


def command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", encoding="utf-8", errors="replace") as f:
            return f.read().split("\0")
    except OSError:
        return []


def is_running(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, seconds):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the run process")
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_killed_harness_stops_its_run_and_leaves_no_outcome_file(signal_name, tmp_path):
    import signal

    spec = write_spec(str(tmp_path), models=[{"name": "SASRec", "model": "SASRec"}], seeds=[2020])
    harness = subprocess.Popen([sys.executable, "-m", "recbole_bifair.benchmark", spec, "--output_dir",
                                str(tmp_path / "out"), "--set", "epochs=1000", "--set", "stopping_step=1000"], cwd=str(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "harness.err", "w"))
    try:
        assert wait_until(lambda: child_pids(harness.pid), 60), "the run process did not start"
        (run,) = child_pids(harness.pid)
        logs = tmp_path / "out" / "logs"
        assert wait_until(lambda: any(log.stat().st_size for log in logs.glob("*.log")), 120), "no log line"
        harness.send_signal(getattr(signal, signal_name))
        harness.wait(timeout=60)
        assert wait_until(lambda: not is_running(run), 30), "the run process outlived the harness"
        if signal_name == "SIGTERM":
            assert harness.returncode == 130, (tmp_path / "harness.err").read_text()[-3000:]
            assert not list((tmp_path / "out" / "runs").glob(".*.outcome.json"))
    finally:
        harness.kill()
        for pid in child_pids(harness.pid):
            os.kill(pid, 9)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the run process")
def test_a_run_interrupted_mid_way_continues_from_its_last_checkpoint(tmp_path):
    import signal

    spec = write_spec(str(tmp_path), models=[{"name": "SASRec", "model": "SASRec"}], seeds=[2020])
    # enough epochs that the last checkpoint outlives several polls on a fast, idle machine: a
    # finished run removes it
    epochs = 20
    command = [sys.executable, "-m", "recbole_bifair.benchmark", spec, "--set", f"epochs={epochs}", "--set",
               "stopping_step=100"]
    out, straight = str(tmp_path / "out"), str(tmp_path / "straight")
    harness = subprocess.Popen(command + ["--output_dir", out], cwd=str(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        checkpoints = tmp_path / "out" / "checkpoints"
        assert wait_until(lambda: list(checkpoints.glob("*/*-last.json")), 300), "no last checkpoint was saved"
        harness.send_signal(signal.SIGTERM)
        harness.wait(timeout=60)
    finally:
        harness.kill()
        for pid in child_pids(harness.pid):
            os.kill(pid, 9)
    assert not list((tmp_path / "out" / "runs").glob("*.json")), "the interrupted run left a record"
    for output_dir in (out, straight):
        subprocess.run(command + ["--output_dir", output_dir], cwd=str(tmp_path), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (resumed,), (uninterrupted,) = (list((tmp_path / d / "runs").glob("*.json")) for d in ("out", "straight"))
    resumed, uninterrupted = (json.loads(path.read_text()) for path in (resumed, uninterrupted))
    assert resumed["resumed"] and not uninterrupted["resumed"]
    assert resumed["epochs"] == uninterrupted["epochs"] == epochs
    assert resumed["test_result"] == pytest.approx(uninterrupted["test_result"], rel=1e-4)


def test_run_control_defaults_do_not_make_finished_runs_stale():
    identity = benchmark.resolved_identity("BiFairSASRec", "ml-100k", {"epochs": 3})
    assert "resume" not in identity["config"]  # properties/overall.yaml has resume: ~
    assert identity["config"]["epochs"] == 3 and "balancer_temperature" in identity["config"]


def test_a_switched_off_term_is_not_part_of_a_runs_identity():
    """Adding a setting that is off by default keeps the runs recorded before it; turning it on
    makes a new run."""
    off = benchmark.resolved_identity("BiFairSASRec", "ml-100k", {})
    assert "outer_prior_weight" not in off["config"] and "outer_prior_temperature" not in off["config"]
    off_other_temperature = benchmark.resolved_identity(
        "BiFairSASRec", "ml-100k", {"outer_prior_weight": 0.0, "outer_prior_temperature": 0.5})
    assert off_other_temperature == off
    assert benchmark.resolved_identity("BiFairSASRec", "ml-100k", {"outer_prior_balancer": "softmax"}) == off
    on = benchmark.resolved_identity("BiFairSASRec", "ml-100k", {"outer_prior_weight": 0.1})
    assert on["config"]["outer_prior_weight"] == 0.1 and on["config"]["outer_prior_temperature"] == 0.1
    assert "outer_prior_balancer" not in on["config"]  # ~: the outer level's weights, as before it existed
    own = benchmark.resolved_identity("BiFairSASRec", "ml-100k", {"outer_prior_weight": 0.1, "outer_prior_balancer": "dro"})
    assert own["config"]["outer_prior_balancer"] == "dro"
    assert "balancer_contrast" not in off["config"]
    contrast = benchmark.resolved_identity("BiFairSASRec", "ml-100k", {"balancer_contrast": 1.0})
    assert contrast["config"]["balancer_contrast"] == 1.0


@pytest.mark.slow
def test_the_run_process_loads_no_report_code():
    """What ``python -m recbole_bifair.benchmark --run`` imports besides the plugin itself: not the
    report, plot, harness or command-line modules, nor pandas, scipy or matplotlib (pandas and
    scipy are loaded by ``import recbole_bifair`` already, through RecBole)."""
    code = ("import sys; import recbole_bifair; before = set(sys.modules); "
            "import recbole_bifair.benchmark.__main__; print(' '.join(sorted(set(sys.modules) - before)))")
    added = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=REPO_ROOT).stdout.split()
    assert "recbole_bifair.benchmark.child" in added
    report_code = [f"recbole_bifair.benchmark.{name}" for name in ("report", "plots", "runner", "cli")]
    loaded = [name for name in added if name.split(".")[0] in ("pandas", "scipy", "matplotlib") or name in report_code]
    assert not loaded, f"the run process imports {loaded}"
