"""One test per RecBole 1.2.1 fix in recbole_bifair.compat."""
import collections
import os

import pytest
import torch
from recbole.evaluator.collector import Collector, DataStruct

from recbole_bifair import compat


def test_collector_moves_only_tensors():
    collector = Collector.__new__(Collector)
    collector.data_struct = DataStruct()
    collector.data_struct.set("data.num_items", 7)
    collector.data_struct.set("data.count_items", collections.Counter({1: 3}))
    collector.data_struct.set("rec.items", torch.tensor([[1, 2]]))
    struct = collector.get_data_struct()
    assert struct.get("data.num_items") == 7
    assert struct.get("data.count_items") == collections.Counter({1: 3})
    assert torch.equal(struct.get("rec.items"), torch.tensor([[1, 2]]))
    assert "rec.items" not in collector.data_struct


def test_item_metrics_run_end_to_end(tmp_path):
    """GiniIndex, ItemCoverage, AveragePopularity, TailPercentage crashed before the fix."""
    from conftest import tiny_config

    from recbole_bifair.quick_start import run_recbole_bifair

    metrics = ["NDCG", "GiniIndex", "ItemCoverage", "AveragePopularity", "TailPercentage", "ShannonEntropy"]
    result = run_recbole_bifair("BPR", "tiny", config_dict=tiny_config(tmp_path, metrics=metrics, topk=[5], valid_metric="NDCG@5"))
    for key in ["giniindex@5", "itemcoverage@5", "averagepopularity@5", "tailpercentage@5", "shannonentropy@5"]:
        assert key in result["test_result"]


def test_trainer_loads_its_own_checkpoint_under_weights_only_default(tmp_path):
    """torch >= 2.6 refuses the pickled Config unless RecBole's trainer module loads it in full."""
    import recbole.trainer.trainer as trainer_module
    from recbole.config import Config

    config = Config(model="BPR", dataset="ml-100k", config_dict={"state": "WARNING"})
    path = tmp_path / "checkpoint.pth"
    torch.save({"config": config}, path)
    loaded = trainer_module.torch.load(path, map_location="cpu")
    assert loaded["config"]["model"] == "BPR"
    assert trainer_module.torch.nn is torch.nn


def test_ce_sequential_models_need_no_negative_sampling_by_hand():
    from recbole.utils import ModelType

    final = {"loss_type": "CE", "MODEL_TYPE": ModelType.SEQUENTIAL, "train_neg_sample_args": {"sample_num": 1}}
    assert compat.default_no_negative_sampling_for_ce(dict(final), {})["train_neg_sample_args"] is None
    user_set = {"train_neg_sample_args": {"sample_num": 1}}
    assert compat.default_no_negative_sampling_for_ce(dict(final), user_set)["train_neg_sample_args"] == {"sample_num": 1}
    bpr = dict(final, loss_type="BPR")
    assert compat.default_no_negative_sampling_for_ce(dict(bpr), {})["train_neg_sample_args"] == {"sample_num": 1}


def test_plain_sasrec_config_builds_through_the_plugin():
    from recbole_bifair.config import Config

    config = Config(model="SASRec", dataset="ml-100k", config_dict={"state": "WARNING"})
    assert config["train_neg_sample_args"]["distribution"] == "none"


def test_ddp_on_cpu_and_evaluation_over_all_ranks(tiny):
    """A one-process gloo group takes RecBole's distributed path: DDP wraps the CPU model
    (fix_ddp_on_cpu), training syncs through it, and the metrics pass ``_map_reduce``
    unchanged (fix_distributed_evaluation)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from recbole_bifair.distributed import free_port

    settings = dict(local_rank=0, world_size=1, nproc=1, ip="localhost", port=free_port(), offset=0)
    try:
        config, train_data, valid_data, _, _, trainer = tiny("SASRec", **settings)
        assert dist.get_backend() == "gloo" and not config["single_spec"]
        assert isinstance(trainer.distributed_model, DistributedDataParallel)
        assert trainer.distributed_model.device_ids is None
        _, valid_result = trainer.fit(train_data, valid_data, saved=False)
        assert trainer._map_reduce(valid_result, 7) is valid_result
        assert trainer.evaluate(valid_data, load_best_model=False) == valid_result  # the one epoch's model

        from recbole.trainer.trainer import AbstractTrainer

        with_batch_norm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        wrapped = AbstractTrainer(config, with_batch_norm)
        assert isinstance(wrapped.model[1], torch.nn.BatchNorm1d)  # SyncBatchNorm runs on GPUs only
        wrapped.model.train()
        assert wrapped.model(torch.randn(5, 3)).shape == (5, 4)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_ensure_dir_tolerates_a_folder_made_meanwhile(tmp_path, monkeypatch):
    import os

    import recbole.trainer.trainer as trainer_module
    import recbole.utils.logger as logger_module

    target = tmp_path / "log" / "SASRec"
    target.mkdir(parents=True)
    monkeypatch.setattr(os.path, "exists", lambda path: False)  # another process made it after the check
    for module in (logger_module, trainer_module):
        module.ensure_dir(str(target))
    assert target.is_dir()


@pytest.mark.slow
def test_anomaly_detection_is_off_after_recbole_models_are_imported():
    import subprocess
    import sys

    def anomaly_after(imports):
        code = f"{imports}; import torch; print(torch.is_anomaly_enabled())"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.split()[-1]

    models = "import recbole.model.sequential_recommender"
    apply = "from recbole_bifair import compat; compat.apply()"
    assert anomaly_after(models) == "True"  # RecBole alone: SINE's import switches it on
    assert anomaly_after(f"{apply}; {models}") == "False"
    assert anomaly_after(f"{models}; {apply}") == "False"
    users_own = f"import torch; torch.autograd.set_detect_anomaly(True); {apply}"
    assert anomaly_after(users_own) == "True"  # switched on by the user, not by SINE: kept


def test_checkpoint_save_replaces_the_old_file_whole_or_not_at_all(tmp_path):
    import pickle

    import pytest
    import recbole.trainer.trainer as trainer_module

    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("killed while saving")

    path = tmp_path / "model.pth"
    trainer_module.torch.save({"epoch": 1}, str(path))
    with pytest.raises(pickle.PicklingError):
        trainer_module.torch.save({"epoch": 2, "state": Unpicklable()}, str(path))
    assert trainer_module.torch.load(str(path))["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]  # no temporary file left
    trainer_module.torch.save({"epoch": 3}, str(path))
    assert trainer_module.torch.load(str(path))["epoch"] == 3


def test_runs_started_in_the_same_second_get_different_checkpoints(tiny, monkeypatch):
    import random

    import recbole.trainer.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "get_local_time", lambda: "Nov-30-2026_06-00-00")
    config, _, _, _, model, _ = tiny("SASRec")
    rng_before = torch.get_rng_state(), random.getstate()
    names = {trainer_module.Trainer(config, model).saved_model_file for _ in range(2)}
    assert len(names) == 2
    assert all(os.path.basename(name).startswith("SASRec-Nov-30-2026_06-00-00-") for name in names)
    assert torch.equal(torch.get_rng_state(), rng_before[0]) and random.getstate() == rng_before[1]



@pytest.mark.slow
def test_importing_the_plugin_changes_nothing_in_recbole_until_apply():
    """Importing ``recbole_bifair`` (and its model, trainer and evaluator modules) only adds the
    metrics' names; ``compat.apply()`` makes every change, and the plugin's Config calls it."""
    import subprocess
    import sys

    watched = ("[t.Collector, t.calculate_valid_score, t.Trainer.__init__, t.Trainer.evaluate, "
               "t.Trainer._map_reduce, t.Trainer._save_checkpoint, t.AbstractTrainer.__init__, t.torch, "
               "t.ensure_dir, c.Collector.get_data_struct]")
    code = (
        "import recbole.trainer.trainer as t, recbole.evaluator.collector as c; "
        f"before = {watched}; "
        "import recbole_bifair, recbole_bifair.trainer, recbole_bifair.model, recbole_bifair.evaluator; "
        "import recbole.evaluator.register as r; "
        f"print('ndcggap' in r.metrics_dict, all(a is b for a, b in zip(before, {watched}))); "
        "from recbole_bifair.config import Config; "
        "Config(model='SASRec', dataset='ml-100k', config_dict={'state': 'ERROR'}); "
        f"print([a is b for a, b in zip(before, {watched})].count(True))"
    )
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert lines[0] == "True True"  # names registered; nothing replaced
    assert lines[1] == "0"  # the Config applied every change


def test_another_recbole_version_is_one_clear_error_before_any_change(monkeypatch):
    import recbole

    from recbole_bifair.errors import BiFairInputError

    monkeypatch.setattr(recbole, "__version__", "1.2.2")
    monkeypatch.setattr(compat, "_applied", False)
    changed = []
    monkeypatch.setattr(compat, "CHANGES", (lambda: changed.append(True),))
    with pytest.raises(BiFairInputError, match=r"RecBole 1\.2\.1.*RecBole 1\.2\.2 is installed.*pip install recbole==1\.2\.1"):
        compat.apply()
    assert not changed
