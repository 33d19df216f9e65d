"""The plugin's fixes of RecBole 1.2.1 on the pinned stack, in one place (the plugin's own
features in RecBole's trainers, its collector and trade-off ``valid_metric`` expressions, live
with the modules that own them; ``trainer.recbole_changes`` applies everything together).

Each is a small function named after what it does, with its reason and its own test in
``tests/test_compat.py``. Nothing is changed on import: :func:`apply` applies them all, once,
after checking that the installed RecBole is the version they were written for
(``trainer.recbole_changes.apply``, which the plugin's ``Config``, trainers and
``load_data_and_model`` call, calls it first). (Importing ``recbole_bifair`` only adds the
fairness metrics' names to RecBole's metric registry.) The other known breakages (numpy 2, pandas 3, scipy >= 1.13, ray's setuptools) are
avoided by the pins in ``setup.cfg`` rather than patched.
"""
import functools
import os
import types

import torch

from recbole_bifair.errors import BiFairInputError

RECBOLE_VERSION = "1.2.1"  # what every function here was written for; setup.cfg pins it
_applied = False


def fix_collector_moves_only_tensors():
    """``Collector.get_data_struct`` calls ``.cpu()`` on every collected value, including the
    ints and Counters behind ``data.num_items`` / ``data.count_items``, so GiniIndex,
    ItemCoverage, AveragePopularity and TailPercentage crash (RecBole issues 2131, 2191).
    Move tensors only; everything else is kept as it is. (The body is RecBole 1.2.1's
    ``Collector.get_data_struct`` with the ``isinstance`` test added.)"""
    import copy

    from recbole.evaluator.collector import Collector

    def get_data_struct(self):
        data = self.data_struct._data_dict
        for key, value in data.items():
            if isinstance(value, torch.Tensor):
                data[key] = value.cpu()
        returned_struct = copy.deepcopy(self.data_struct)
        for key in ["rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label"]:
            if key in self.data_struct:
                del self.data_struct[key]
        return returned_struct

    Collector.get_data_struct = get_data_struct


class _TorchForOwnCheckpoints(types.ModuleType):
    """Stands in for ``torch`` inside RecBole's trainer module: identical, except that ``load``
    defaults to ``weights_only=False`` (RecBole's checkpoints pickle its ``Config``, which
    torch >= 2.6 refuses to unpickle by default; only checkpoints that RecBole itself wrote are
    read through that module) and that ``save`` to a path is atomic."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return torch.load(f, *args, **kwargs)

    @staticmethod
    def save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            return torch.save(obj, f, *args, **kwargs)
        from recbole_bifair.files import save_atomically

        return save_atomically(obj, f, *args, **kwargs)


def fix_checkpoint_loading_and_saving():
    """torch >= 2.6 loads with ``weights_only=True``: ``Trainer.resume_checkpoint``,
    ``Trainer.evaluate(load_best_model=True)`` then fail on the pickled ``Config``. Let the
    trainer module load its own checkpoints in full. (``load_data_and_model`` has its own
    replacement in ``recbole_bifair.quick_start``, which also resolves the plugin's models.)
    ``torch.save`` writes over the previous checkpoint in place, so a run killed while saving
    leaves a truncated file and nothing to resume from: save to a temporary file, sync it and
    rename it over the old one."""
    import recbole.trainer.trainer as trainer_module

    if not isinstance(trainer_module.torch, _TorchForOwnCheckpoints):
        trainer_module.torch = _TorchForOwnCheckpoints()


def default_no_negative_sampling_for_ce(final_config, external_config):
    """RecBole's ``overall.yaml`` samples one negative per training example, and its ``Config``
    then refuses every sequential model with ``loss_type: CE`` (SASRec's default) unless the
    user sets ``train_neg_sample_args: ~`` by hand. Where the user did not set it, CE models
    get no negative sampling, as their loss needs none. Called by the plugin's ``Config``."""
    from recbole.utils import ModelType

    if (
        final_config.get("loss_type") == "CE"
        and final_config.get("MODEL_TYPE") == ModelType.SEQUENTIAL
        and "train_neg_sample_args" not in external_config
    ):
        final_config["train_neg_sample_args"] = None
    return final_config


def fix_ddp_on_cpu():
    """Under DDP, ``AbstractTrainer.__init__`` converts BatchNorm layers to SyncBatchNorm, which
    runs on GPUs only, and passes ``device_ids=[local_rank]``, which DDP refuses for a model on
    the CPU; each machine's local rank 0 saves, so on several machines more than one process
    writes the checkpoint. On the CPU the model keeps its BatchNorm and gets
    ``device_ids=None``; only the global rank 0 writes the checkpoint."""
    from recbole.trainer.trainer import AbstractTrainer, Trainer
    from torch.nn.parallel import DistributedDataParallel

    from recbole_bifair.distributed import is_main_process

    def abstract_trainer_init(self, config, model):  # RecBole 1.2.1's body, with on_gpu added
        self.config = config
        self.model = model
        if not config["single_spec"]:
            on_gpu = config["device"].type == "cuda"
            if on_gpu:
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.distributed_model = DistributedDataParallel(self.model, device_ids=[config["local_rank"]] if on_gpu else None)

    save_checkpoint = Trainer._save_checkpoint

    @functools.wraps(save_checkpoint)
    def save_on_rank0_only(self, epoch, verbose=True, **kwargs):
        if is_main_process():
            save_checkpoint(self, epoch, verbose, **kwargs)

    AbstractTrainer.__init__ = abstract_trainer_init
    Trainer._save_checkpoint = save_on_rank0_only


def fix_checkpoint_names():
    """RecBole names a run's checkpoint ``<model>-<local time to the second>.pth``: two runs
    started in the same second with the same ``checkpoint_dir`` (a shell loop, Ray trials)
    write one file, and each tests whichever model saved last; and every DDP rank reads its
    own clock, so a rank can look for a best model that rank 0 saved under another name. Add
    a random suffix (from the OS, so no seeded generator moves) and give every rank rank 0's
    name."""
    import secrets

    from recbole.trainer.trainer import Trainer

    from recbole_bifair.distributed import broadcast_from_rank0

    trainer_init = Trainer.__init__

    @functools.wraps(trainer_init)
    def init_with_unique_checkpoint_name(self, config, model):
        trainer_init(self, config, model)
        stem, extension = os.path.splitext(self.saved_model_file)
        self.saved_model_file = broadcast_from_rank0(f"{stem}-{secrets.token_hex(4)}{extension}")

    Trainer.__init__ = init_with_unique_checkpoint_name


def fix_ensure_dir_race():
    """``ensure_dir`` checks for a folder and then creates it, so processes started together
    (DDP ranks, Ray trials) race on the log and checkpoint folders and one of them fails with
    ``FileExistsError``. Create folders with ``exist_ok``, in every module that imported it."""
    import importlib

    def ensure_dir(dir_path):
        os.makedirs(dir_path, exist_ok=True)

    for name in ("recbole.utils.utils", "recbole.utils", "recbole.utils.logger", "recbole.trainer.trainer",
                 "recbole.data.utils", "recbole.data.dataset.dataset"):
        module = importlib.import_module(name)
        if hasattr(module, "ensure_dir"):
            module.ensure_dir = ensure_dir


def fix_distributed_evaluation():
    """Under DDP RecBole evaluates each rank's share of the rows and averages the ranks' metric
    values, weighted by their row counts (``Trainer._map_reduce``). That is wrong for every
    metric that is not a mean over rows (the fairness metrics' gaps and worst groups, Gini
    index, item coverage), and it counts the rows ``DistributedSampler`` repeats to even out
    the shares. Instead ``FairnessCollector`` gathers the rows of all ranks, minus the repeats,
    and every rank computes the metrics once over the whole split, which ``_map_reduce`` then
    passes through. Ranks also wait for each other before loading the best checkpoint, which
    only rank 0 writes."""
    import torch.distributed as dist
    from recbole.trainer.trainer import Trainer

    from recbole_bifair.distributed import is_distributed, padding_rows

    evaluate = Trainer.evaluate

    @functools.wraps(evaluate)
    def evaluate_over_all_ranks(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if is_distributed():
            if load_best_model:
                dist.barrier()
            self.eval_collector.distributed_padding = padding_rows(eval_data)
        return evaluate(self, eval_data, load_best_model, model_file, show_progress)

    def metrics_already_over_all_ranks(self, result, num_sample):
        return result

    Trainer.evaluate = evaluate_over_all_ranks
    Trainer._map_reduce = metrics_already_over_all_ranks


def fix_anomaly_detection_left_on():
    """Importing ``recbole.model.sequential_recommender`` imports SINE, whose module calls
    ``torch.autograd.set_detect_anomaly(True)`` for the whole process: every backward
    operation is then checked for NaN and every forward operation records its stack, which
    makes a SASRec training step on a CPU about 1.6x slower (``results/step_profile_cpu.md``)
    without changing a number. Import it once, then switch anomaly detection back off, unless
    the user had switched it on before SINE was first imported."""
    import sys

    users_own = torch.is_anomaly_enabled() and "recbole.model.sequential_recommender.sine" not in sys.modules
    import recbole.model.sequential_recommender.sine  # noqa: F401  (its import switches it on)

    if not users_own:
        torch.autograd.set_detect_anomaly(False)


def check_recbole_version():
    """One clear error, before anything is changed, when the installed RecBole is not the one
    these functions were written for (their bodies follow its code)."""
    import recbole

    if recbole.__version__ != RECBOLE_VERSION:
        raise BiFairInputError(
            f"recbole-bifair works with RecBole {RECBOLE_VERSION} (its fixes follow that version's "
            f"code), but RecBole {recbole.__version__} is installed; install the pinned version: "
            f"pip install recbole=={RECBOLE_VERSION}"
        )


CHANGES = (
    fix_collector_moves_only_tensors,
    fix_checkpoint_loading_and_saving,
    fix_ddp_on_cpu,
    fix_checkpoint_names,
    fix_ensure_dir_race,
    fix_distributed_evaluation,
    fix_anomaly_detection_left_on,
)


def apply():
    """Apply every change in ``CHANGES`` once (idempotent), after the version check."""
    global _applied
    if _applied:
        return
    check_recbole_version()
    for change in CHANGES:
        change()
    _applied = True
