"""The command line end to end on the tiny dataset, and its one-line errors."""
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT, TEST_DATA, tiny_config

from recbole_bifair.errors import BiFairInputError


def run_cli(args, cwd):
    return subprocess.run(
        [sys.executable, f"{REPO_ROOT}/run_recbole_bifair.py", *args], cwd=str(cwd), capture_output=True, text=True
    )


@pytest.mark.slow
def test_bifair_run_prints_test_results_with_fairness_metrics(tmp_path):
    config = tiny_config(tmp_path, state="INFO")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = run_cli(["--model=BiFairSASRec", "--dataset=tiny", "--config_files=tiny.yaml"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "test result" in log and "ndcg@10" in log and "ndcggap@10" in log and "groupndcg@10_g4" in log
    assert "Item groups" in log and "group weights" in log


@pytest.mark.slow
def test_plain_recbole_model_and_overrides(tmp_path):
    config = tiny_config(tmp_path, state="INFO")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = run_cli(["--model=SASRec", "--dataset=tiny", "--config_files=tiny.yaml", "--topk=[5]", "--valid_metric=NDCG@5"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ndcg@5" in out.stdout + out.stderr


@pytest.mark.slow
def test_bad_input_is_one_line_without_traceback(tmp_path):
    out = run_cli(["--model=SASRecc", "--dataset=ml-100k"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: Unknown model 'SASRecc'")
    assert "Traceback" not in out.stderr
    missing = run_cli(["--model=SASRec", "--dataset=nosuch", f"--data_path={TEST_DATA}"], tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "nosuch.inter" in missing.stderr


@pytest.mark.slow
def test_bad_multi_process_settings_are_one_line_errors(tmp_path):
    out = run_cli(["--model=SASRec", "--nproc=0"], tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "error: --nproc must be at least 1, got 0."
    config = tiny_config(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = run_cli(["--model=SASRec", "--dataset=tiny", "--config_files=tiny.yaml", "--nproc=2", "--ddp_backend=nccl"], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: ddp_backend 'nccl' needs CUDA GPUs" in out.stderr
    assert out.stderr.strip().endswith("stopped on the error printed above.")


def run_in_process(argv, monkeypatch, capsys):
    """The entry point called in this process, as the shell would call it: (exit code, stderr)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_recbole_bifair", f"{REPO_ROOT}/run_recbole_bifair.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    monkeypatch.setattr(sys, "argv", ["run_recbole_bifair.py", *argv])
    code = entry.main(argv)
    return code, capsys.readouterr().err


BAD_SETTINGS = {
    "--epochs=abc": "error: epochs must be a positive integer; got 'abc'.",
    "--epochs=0": "error: epochs must be a positive integer; got 0.",
    "--learning_rate=-0.001": "error: learning_rate must be > 0; got -0.001.",
    "--outer_learner=nosuch": "error: outer_learner must be one of adam, adamw, sgd, adagrad, rmsprop, sparse_adam; got 'nosuch'.",
    "--outer_learner=None": "error: outer_learner must be one of adam, adamw, sgd, adagrad, rmsprop, sparse_adam; got None.",
    "--topk=[0]": "error: topk must be a positive integer or a list of them; got [0].",
}


def test_bad_settings_are_one_line_each_before_any_data_is_read(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    for option, message in BAD_SETTINGS.items():
        code, err = run_in_process(["--model=BiFairSASRec", "--dataset=ml-100k", option], monkeypatch, capsys)
        assert (code, err.strip()) == (2, message), option
    code, err = run_in_process(["--model=BiFairSASRec", "--lookahead_update=optimizer", "--learner=rmsprop"],
                               monkeypatch, capsys)
    assert (code, err.strip()) == (2, "error: lookahead_update: optimizer follows the inner optimiser's rule, known "
                                      "for adam, adamw, sgd; learner is 'rmsprop': use lookahead_update: sgd, or one "
                                      "of those learners.")
    code, err = run_in_process(["--model=SASRec", "--epochs=1", "--epochs=2"], monkeypatch, capsys)
    assert (code, err.strip()) == (2, "error: --epochs is given twice (1 and 2); give it once.")
    code, err = run_in_process(["--model=SASRec", "--metrics=[NDCG,Nosuch]"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: unknown metric(s) Nosuch in metrics; known: ")


def test_a_misspelt_setting_is_one_line_naming_the_nearest_key(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process(["--model=BiFairSASRec", "--dataset=ml-100k", "--balancer_temprature=2"],
                               monkeypatch, capsys)
    assert (code, err.strip()) == (2, "error: unknown setting 'balancer_temprature': did you mean "
                                      "'balancer_temperature'? (no setting is named 'balancer_temprature')")
    code, err = run_in_process(["--model=SASRec", "--learing_rate=0.1"], monkeypatch, capsys)
    assert code == 2 and "did you mean 'learning_rate'?" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("settings", [
    {"balancer_temprature": 2}, {"lookahed_lr": 0.1}, {"item_groups": {"n_groups": 3}}, {"reranker": None}])
def test_a_key_close_to_a_known_one_is_refused_when_the_config_is_made(settings):
    from recbole_bifair.config import check_unknown_keys

    with pytest.raises(BiFairInputError, match="unknown setting '.*': did you mean"):
        check_unknown_keys(settings)


def test_known_keys_of_recbole_and_the_plugin_and_far_off_keys_pass():
    """RecBole's own keys (of its YAML files, its code and its launcher), the plugin's keys and
    the entry points' options are known; a key like no known one is left alone, as RecBole does."""
    from recbole_bifair.config import check_unknown_keys, known_config_keys

    known = set(known_config_keys())
    legitimate = ["learning_rate", "MAX_ITEM_LIST_LENGTH", "hidden_dropout_prob", "n_layers", "item_group", "rerank",
                  "train_neg_sample_args", "local_rank", "world_size", "nproc", "offset", "config_files", "state",
                  "save_dataloaders", "llm_emb_cache_dir", "balancer_temperature", "lookahead_lr", "ddp_backend",
                  "outer_gate_learning_rate", "valid_metric_bigger", "model", "dataset", "benchmark_filename"]
    assert not [key for key in legitimate if key not in known]
    check_unknown_keys({key: None for key in legitimate})
    check_unknown_keys({"my_own_note": 1, "xyz": 2})


def test_bad_config_files_are_one_line_each(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    (tmp_path / "list.yaml").write_text("- epochs\n- 2\n")
    (tmp_path / "latin1.yaml").write_bytes("title: caf\xe9\n".encode("latin-1"))
    expected = {
        "bad.yaml": "error: config file bad.yaml, line 2 is not valid YAML",
        "list.yaml": "error: config file list.yaml holds a list, not settings",
        "latin1.yaml": "error: config file latin1.yaml is not UTF-8 text",
    }
    for name, message in expected.items():
        code, err = run_in_process(["--model=SASRec", f"--config_files={name}"], monkeypatch, capsys)
        assert code == 2 and err.startswith(message) and "\n" not in err.strip(), err


def test_config_values_are_read_as_literals_never_run(tmp_path):
    from recbole_bifair.config import Config

    marker = tmp_path / "ran"
    config = Config(model="SASRec", dataset="ml-100k", config_dict={
        "state": "WARNING", "metrics": "[NDCG,Hit]", "topk": "[5, 10]", "valid_metric": "NDCG@5",
        "user_note": f"__import__('pathlib').Path({str(marker)!r}).touch()"})
    assert not marker.exists()
    assert config["user_note"].startswith("__import__")
    assert config["metrics"] == ["NDCG", "Hit"] and config["topk"] == [5, 10]
    from recbole_bifair.config_values import command_line_options

    assert command_line_options(["--checkpoint_dir=runs/lr=0.01", "--model", "SASRec"]) == {
        "checkpoint_dir": "runs/lr=0.01"}


def test_empty_config_file_is_no_settings(tmp_path):
    from recbole_bifair.config import Config

    (tmp_path / "empty.yaml").write_text("")
    config = Config(model="SASRec", dataset="ml-100k", config_file_list=[str(tmp_path / "empty.yaml")],
                    config_dict={"state": "WARNING"})
    assert config["epochs"] == 300  # RecBole's default, nothing else changed


def test_ctrl_c_is_a_clean_message_and_exit_130(monkeypatch, capsys, tmp_path):
    import recbole_bifair.quick_start as quick_start

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(quick_start, "run", interrupted)
    code, err = run_in_process(["--model=SASRec"], monkeypatch, capsys)
    assert code == 130 and err.startswith("interrupted: ") and "Traceback" not in err


def best_checkpoint(directory):
    import torch

    (path,) = [p for p in directory.glob("*.pth") if not p.name.endswith("-last.pth")]
    return torch.load(path, map_location="cpu", weights_only=False)


def valid_scores_logged(caplog):
    """{epoch: valid score} from the log records of a run (and clears them)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", caplog.text)
    caplog.clear()
    found = re.findall(r"epoch (\d+) evaluating \[time: [^,]*, valid_score: ([0-9.]+)\]", text)
    return {int(epoch): score for epoch, score in found}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["SASRec", "BiFairSASRec"])
def test_resume_last_ends_as_the_uninterrupted_run(model, monkeypatch, capsys, caplog, tmp_path, embedding_cache):
    import logging

    import torch

    from recbole_bifair.trainer import resume

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(
        tmp_path, epochs=4, stopping_step=10, state="INFO", llm_emb_cache_dir=embedding_cache)))
    args = [f"--model={model}", "--dataset=tiny", "--config_files=tiny.yaml"]
    caplog.set_level(logging.INFO)
    assert run_in_process([*args, "--checkpoint_dir=whole"], monkeypatch, capsys)[0] == 0
    whole_scores = valid_scores_logged(caplog)

    save_last = resume.save_last_checkpoint

    def save_then_interrupt(trainer, finished_epoch, *rest):
        save_last(trainer, finished_epoch, *rest)
        if finished_epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C as epoch 2 begins

    monkeypatch.setattr(resume, "save_last_checkpoint", save_then_interrupt)
    assert run_in_process([*args, "--checkpoint_dir=cut"], monkeypatch, capsys)[0] == 130
    assert len(list((tmp_path / "cut").glob("*-last.pth"))) == 1
    caplog.clear()
    monkeypatch.setattr(resume, "save_last_checkpoint", save_last)
    assert run_in_process([*args, "--checkpoint_dir=cut", "--resume=last"], monkeypatch, capsys)[0] == 0
    assert not list((tmp_path / "cut").glob("*-last.*")), "a finished run leaves no last checkpoint"

    resumed_scores = valid_scores_logged(caplog)
    assert sorted(whole_scores) == [0, 1, 2, 3] and sorted(resumed_scores) == [2, 3]
    assert {epoch: whole_scores[epoch] for epoch in (2, 3)} == resumed_scores
    whole, resumed = best_checkpoint(tmp_path / "whole"), best_checkpoint(tmp_path / "cut")
    assert resumed["epoch"] == whole["epoch"] and resumed["best_valid_score"] == whole["best_valid_score"]
    assert whole["state_dict"].keys() == resumed["state_dict"].keys()
    for name, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name


def test_a_run_killed_while_saving_its_last_checkpoint_keeps_the_previous_one(tiny, monkeypatch):
    import os

    import torch

    from recbole_bifair.trainer import resume

    _, train_data, _, _, _, trainer = tiny("SASRec")
    resume.save_last_checkpoint(trainer, 0, train_data, [[1, 0.5]], [1.0])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(resume, "save_atomically", killed)
    with pytest.raises(KeyboardInterrupt):
        resume.save_last_checkpoint(trainer, 1, train_data, [[1, 0.5], [2, 0.6]], [1.0, 1.0])
    path = resume.last_checkpoint_path(trainer.saved_model_file)
    kept = torch.load(path, map_location="cpu", weights_only=False)
    assert kept["epoch"] == 0 and kept["resume"]["valid_scores"] == [[1, 0.5]]
    assert not os.path.exists(resume.partial_checkpoint_path(path))


def test_resume_errors_are_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path)))
    args = ["--model=SASRec", "--dataset=tiny", "--config_files=tiny.yaml"]
    code, err = run_in_process([*args, "--resume=last"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --resume=last: no last checkpoint of SASRec on tiny in ")
    (tmp_path / "cut.pth").write_bytes(b"")
    code, err = run_in_process([*args, "--resume=cut.pth"], monkeypatch, capsys)
    assert (code, err.strip()) == (2, "error: --resume: cut.pth is not a readable checkpoint (EOFError).")


def test_users_with_one_interaction_each_are_one_clear_error(monkeypatch, capsys, tmp_path):
    import os

    monkeypatch.chdir(tmp_path)
    with open(os.path.join(TEST_DATA, "tiny", "tiny.inter"), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    first_of_each_user = list({row.split("\t")[0]: row for row in reversed(rows)}.values())
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "single.inter").write_text("\n".join([header, *first_of_each_user]) + "\n")
    code, err = run_in_process(["--model=SASRec", "--dataset=single", f"--data_path={tmp_path}", "--epochs=1",
                                "--load_col=None"],
                               monkeypatch, capsys)
    assert code == 2 and err.startswith("error: the training split of single is empty") and "Traceback" not in err


def test_shared_weights_load_without_unpickling_objects(tiny, tmp_path):
    import pickle

    import torch

    from recbole_bifair.quick_start import load_weights, save_weights

    config, _, _, _, model, trainer = tiny("SASRec")
    trainer._save_checkpoint(0, verbose=False)
    save_weights(trainer.saved_model_file, str(tmp_path / "model.pt"))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(trainer.saved_model_file, weights_only=True)  # the checkpoint pickles RecBole's Config
    for parameter in model.parameters():
        parameter.data.zero_()
    load_weights(model, str(tmp_path / "model.pt"))
    saved = torch.load(trainer.saved_model_file, weights_only=False)["state_dict"]
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in saved.items())


@pytest.mark.parametrize("model, settings, message", [
    ("BiFairSASRec", {"balancer_temperature": 0}, "balancer_temperature must be > 0"),
    ("BiFairSASRec", {"outer_balancer": "fancy"}, "Unknown balancer 'fancy'"),
    ("BiFairSASRec", {"hypergradient": "second"}, "hypergradient must be one of"),
    ("BiFairSASRec", {"outer_prior_weight": -0.5}, "outer_prior_weight must be >= 0"),
    ("BiFairSASRec", {"outer_prior_temperature": 0}, "outer_prior_temperature must be > 0"),
    ("BiFairSASRec", {"outer_prior_balancer": "fancy"}, "Unknown balancer 'fancy'"),
    ("GroupDROSASRec", {"dro_step_size": -1}, "dro_step_size must be > 0"),
    ("IPSSASRec", {"inner_weighting": "all"}, "inner_weighting must be one of"),
    ("LLMSASRec", {"projector_dropout": 1.5}, r"projector_dropout must be a number in \[0, 1\)"),
    ("LLMGRU4Rec", {"projector_hidden": 0}, "projector_hidden must be a positive integer"),
    ("BiFairSASRec", {"llm_view": "triple"}, "llm_view must be one of"),
    ("VarRegSASRec", {"llm_freeze": "yes"}, "llm_freeze must be True or False"),
    ("SASRec", {"item_group": {"by": "colour"}}, "item_group.by is 'colour'"),
    ("SASRec", {"rerank": {"method": "exposure", "candidates": "many"}}, "rerank"),
])
def test_bad_plugin_settings_fail_when_the_config_is_made(model, settings, message):
    """Before any data is read: the dataset named here does not exist."""
    from recbole_bifair.config import Config

    with pytest.raises(BiFairInputError, match=message):
        Config(model=model, dataset="no-such-dataset", config_dict=settings)


def test_a_model_file_sets_one_family_on_one_backbone_under_the_users_settings(tmp_path, monkeypatch):
    """A ``properties/model/<Family><Backbone>.yaml`` (here a BiFairGRU4Rec.yaml with T = 2, and
    the shipped BiFairBERT4Rec.yaml's T = 3) applies to that model only, and a user's setting
    still wins."""
    import shutil

    import recbole_bifair.config
    from recbole_bifair.config import Config
    from recbole_bifair.utils import properties_dir

    properties = tmp_path / "properties"
    shutil.copytree(properties_dir(), properties)
    (properties / "model" / "BiFairGRU4Rec.yaml").write_text("balancer_temperature: 2.0\n")
    monkeypatch.setattr(recbole_bifair.config, "properties_dir", lambda: str(properties))

    temperature = {model: Config(model=model, dataset="ml-100k")["balancer_temperature"]
                   for model in ("BiFairGRU4Rec", "BiFairBERT4Rec", "BiFairSASRec", "GroupDROGRU4Rec")}
    assert temperature == {"BiFairGRU4Rec": 2.0, "BiFairBERT4Rec": 3.0, "BiFairSASRec": 1.0, "GroupDROGRU4Rec": 1.0}
    users = Config(model="BiFairGRU4Rec", dataset="ml-100k", config_dict={"balancer_temperature": 0.5})
    assert users["balancer_temperature"] == 0.5
