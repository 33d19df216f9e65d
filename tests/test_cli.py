"""The command line end to end on the tiny dataset, and its one-line errors."""
import subprocess
import sys

import yaml

from conftest import REPO_ROOT, TEST_DATA, tiny_config


def run_cli(args, cwd):
    return subprocess.run(
        [sys.executable, f"{REPO_ROOT}/run_recbole_bifair.py", *args], cwd=str(cwd), capture_output=True, text=True
    )


def test_bifair_run_prints_test_results_with_fairness_metrics(tmp_path):
    config = tiny_config(tmp_path, state="INFO")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = run_cli(["--model=BiFairSASRec", "--dataset=tiny", "--config_files=tiny.yaml"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "test result" in log and "ndcg@10" in log and "ndcggap@10" in log and "groupndcg@10_g4" in log
    assert "Item groups" in log and "group weights" in log


def test_plain_recbole_model_and_overrides(tmp_path):
    config = tiny_config(tmp_path, state="INFO")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = run_cli(["--model=SASRec", "--dataset=tiny", "--config_files=tiny.yaml", "--topk=[5]", "--valid_metric=NDCG@5"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ndcg@5" in out.stdout + out.stderr


def test_bad_input_is_one_line_without_traceback(tmp_path):
    out = run_cli(["--model=SASRecc", "--dataset=ml-100k"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: Unknown model 'SASRecc'")
    assert "Traceback" not in out.stderr
    missing = run_cli(["--model=SASRec", "--dataset=nosuch", f"--data_path={TEST_DATA}"], tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "nosuch.inter" in missing.stderr


def test_bad_multi_process_settings_are_one_line_errors(tmp_path):
    out = run_cli(["--model=SASRec", "--nproc=0"], tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "error: --nproc must be at least 1, got 0."
    config = tiny_config(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = run_cli(["--model=SASRec", "--dataset=tiny", "--config_files=tiny.yaml", "--nproc=2", "--ddp_backend=nccl"], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: ddp_backend 'nccl' needs CUDA GPUs" in out.stderr
    assert out.stderr.strip().endswith("stopped on the error printed above.")
