"""The benchmark harness on the tiny dataset: runs in their own processes, a failing run reported
while the others finish, resume without repeating finished runs, tables and CSV checked
against the runs' own result dicts, plots (or the note that they were skipped)."""
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


def test_every_run_is_recorded_and_the_failure_does_not_stop_the_others(finished):
    _, output, code, log = finished
    assert code == 1
    for run_id in RUN_IDS:
        record = run_record(output, run_id)
        assert record["status"] == "ok"
        assert record["epochs"] == 1 and record["train_epoch_seconds"] > 0
        assert record["peak_rss_mb"] > 50
        assert "ndcg@10" in record["test_result"]
    for run_id in BROKEN_IDS:
        record = run_record(output, run_id)
        assert record["status"] == "failed"
        assert "Unknown model 'NoSuchModel'" in record["error"]
        assert os.path.isfile(os.path.join(output, record["log"]))
    assert "[1/6] tiny Broken seed 2020: FAILED" in log
    assert "[6/6] tiny LLMSASRec seed 2021: done" in log
    assert "left for" in log
    assert not os.listdir(os.path.join(output, "checkpoints"))


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
    monkeypatch.setattr(benchmark, "cpu_description", lambda: "This CPU, 2 logical cores")
    benchmark.write_reports(spec, command="rebuild")
    markdown = open(os.path.join(spec.output_dir, "tiny.md"), encoding="utf-8").read()
    for line in ("- runs made by: `run 0`", "- runs made by: `run 2`", "- runs made by 1 more commands",
                 "- report written by: `rebuild`",
                 "- machine: Some CPU, 16 logical cores; GPU: Some GPU", "- versions: torch 9.9",
                 "- runs finished: 2026-01-01 10:00 to 2026-01-04 10:00"):
        assert line in markdown
    assert "This CPU" not in markdown and "`run 3`" not in markdown


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_plots_are_written(finished):
    _, output, _, _ = finished
    for name in ("tiny_group_ndcg.png", "tiny_tradeoff.png"):
        path = os.path.join(output, name)
        assert os.path.getsize(path) > 1000
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


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

    def stop_at_second_run(spec, plan, label="", verbose=False):
        calls.append(plan.run_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_record(plan)

    monkeypatch.setattr(benchmark, "execute_run", stop_at_second_run)
    summary = benchmark.run_benchmark(spec)
    assert summary.interrupted and summary.executed == RUN_IDS[:1]
    calls.clear()
    monkeypatch.setattr(benchmark, "execute_run", lambda spec, plan, label="", verbose=False:
                        calls.append(plan.run_id) or fake_record(plan))
    summary = benchmark.run_benchmark(spec)
    assert calls == RUN_IDS[1:] and summary.skipped == RUN_IDS[:1]
    calls.clear()
    benchmark.run_benchmark(benchmark.load_spec(write_spec(str(tmp_path)), output_dir=str(tmp_path / "out"),
                                                overrides={"epochs": 2}))
    assert calls == RUN_IDS, "a changed config runs everything again"


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
    assert [line.split()[0] for line in lines] == ["BPR", "LLMBPR"] + ["BiFairBPR"] * 4
    assert lines[0].endswith("x1.00")
    assert all(float(line.split()[-3]) > 0 for line in lines)


def test_parallel_gpu_script_runs_every_job_and_reports_failures(tmp_path):
    """benchmarks/ml-1m-gpu.sh on the tiny spec (no GPU: the runs time-slice the CPU): every
    (model, seed) runs, the report is written, its command is the script's, and a model the
    spec lacks makes the script exit non-zero."""
    script = os.path.join(REPO_ROOT, "benchmarks", "ml-1m-gpu.sh")
    output = str(tmp_path / "out")
    env = {**os.environ, "SPEC": "benchmarks/tiny.yaml", "MODELS": "SASRec NoSuchModel", "SEEDS": "2020 2021",
           "OUTPUT": output, "JOBS": "2"}
    finished = subprocess.run(["bash", script, "--set", "epochs=1"], env=env, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 1, finished.stderr
    assert sorted(os.listdir(os.path.join(output, "runs"))) == ["tiny__SASRec__seed2020.json",
                                                                "tiny__SASRec__seed2021.json"]
    markdown = open(os.path.join(output, "tiny.md"), encoding="utf-8").read()
    assert (f'- runs made by: `OUTPUT={output} SPEC=benchmarks/tiny.yaml MODELS="SASRec NoSuchModel" '
            f'SEEDS="2020 2021" bash benchmarks/ml-1m-gpu.sh --set epochs=1`') in markdown
    assert "unknown model(s)" in open(os.path.join(output, "logs", "harness_NoSuchModel_2020.txt")).read()
