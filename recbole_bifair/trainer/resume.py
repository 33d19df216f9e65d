"""Resuming an interrupted run from the command line (``--resume=PATH`` or ``--resume=last``).

Every epoch of a run that saves checkpoints also writes a *last* checkpoint beside the best
one (``<best>-last.pth``, replaced atomically): the state after the last finished epoch (its
validation and early-stopping step included), with the optimiser, the group-aware trainers'
balancers and outer optimiser, every random generator and the training loader's shuffling
state, so a resumed run ends with the same parameters as an uninterrupted one. A small JSON
sidecar beside it (``<best>-last.json``) names the model, dataset and time, so ``last`` finds
the newest checkpoint of a model and dataset without unpickling anything.

Checkpoints are pickles: resume only from files you made or trust.
"""
import glob
import json
import os
import random
import time

import numpy as np
import torch

from recbole_bifair.distributed import is_main_process
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.files import save_atomically, write_text_atomically
from recbole_bifair.trainer.hooks import TrainerCallback

LAST_SUFFIX = "-last"
PARTIAL_SUFFIX = "-partial"


def last_checkpoint_path(best_model_file):
    """Where the last checkpoint of the run whose best checkpoint is ``best_model_file`` goes."""
    stem, extension = os.path.splitext(best_model_file)
    return stem + LAST_SUFFIX + extension


def partial_checkpoint_path(last_checkpoint):
    """Where the trainer's own checkpoint goes before the resume state is added to it."""
    stem, extension = os.path.splitext(last_checkpoint)
    return stem + PARTIAL_SUFFIX + extension


def sidecar_path(last_checkpoint):
    """The JSON sidecar beside a last checkpoint."""
    return os.path.splitext(last_checkpoint)[0] + ".json"


def capture_random_state():
    """The CPU and CUDA random states (dropout masks), to replay or restore."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def restore_random_state(state):
    """Restore what ``capture_random_state`` took (the CUDA part only where CUDA is present)."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def random_states(train_data=None):
    """Every random generator a training epoch draws from (``train_data``'s shuffling too)."""
    torch_rng, cuda_rng = capture_random_state()
    return {
        "torch_rng": torch_rng,
        "cuda_rng": cuda_rng,
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "train_generator": train_data.generator.get_state() if getattr(train_data, "generator", None) else None,
    }


def restore_random_states(states, train_data=None):
    restore_random_state((states["torch_rng"], states["cuda_rng"]))
    np.random.set_state(states["numpy_rng"])
    random.setstate(states["python_rng"])
    if states["train_generator"] is not None:
        train_data.generator.set_state(states["train_generator"])


class KeepLastCheckpoint(TrainerCallback):
    """Saves the trainer's last checkpoint when each epoch after the first begins (by then the
    previous epoch's validation, early stopping and best checkpoint are done, and no generator
    has moved for the new epoch). ``valid_scores``/``epoch_seconds`` are the run's records,
    kept in the checkpoint for the resumed run's result dict."""

    def __init__(self, train_data, valid_scores, epoch_seconds):
        self.train_data, self.valid_scores, self.epoch_seconds = train_data, valid_scores, epoch_seconds

    def on_epoch_start(self, trainer, epoch_idx):
        if epoch_idx > trainer.start_epoch and is_main_process():
            save_last_checkpoint(trainer, epoch_idx - 1, self.train_data, self.valid_scores, self.epoch_seconds)


def keep_last_checkpoint(trainer, train_data, valid_scores, epoch_seconds):
    """Make ``trainer`` save its last checkpoint at each epoch's start (:class:`KeepLastCheckpoint`)."""
    return trainer.add_callback(KeepLastCheckpoint(train_data, valid_scores, epoch_seconds))


def save_last_checkpoint(trainer, finished_epoch, train_data, valid_scores, epoch_seconds):
    best_model_file = trainer.saved_model_file
    path = last_checkpoint_path(best_model_file)
    # the trainer's own checkpoint, read back and saved with what an exact resume needs (every
    # trainer's _save_checkpoint stays as it is); it is written beside the last checkpoint, never
    # over it, so a run killed in between leaves the previous last checkpoint resumable
    partial = partial_checkpoint_path(path)
    try:
        trainer._save_checkpoint(finished_epoch, verbose=False, saved_model_file=partial)
        checkpoint = torch.load(partial, map_location="cpu", weights_only=False)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    checkpoint["resume"] = {
        "best_model_file": best_model_file,
        "best_valid_result": trainer.best_valid_result,
        "random_states": random_states(train_data),
        "valid_scores": list(valid_scores),
        "epoch_seconds": list(epoch_seconds),
    }
    save_atomically(checkpoint, path, pickle_protocol=4)
    config = trainer.config
    sidecar = {"model": config["model"], "dataset": config["dataset"], "finished_epoch": finished_epoch,
               "checkpoint": os.path.basename(path), "saved_at": time.time()}
    write_text_atomically(sidecar_path(path), json.dumps(sidecar, indent=1) + "\n")


def remove_last_checkpoint(trainer):
    """After ``fit`` returned: the run is over, so its last checkpoint and sidecar go (the best
    checkpoint stays); ``--resume=last`` never continues a finished run."""
    path = last_checkpoint_path(trainer.saved_model_file)
    if is_main_process():
        for leftover in (path, sidecar_path(path), partial_checkpoint_path(path)):
            if os.path.exists(leftover):
                os.remove(leftover)


def remove_last_checkpoints(checkpoint_dir):
    """Remove every last checkpoint, its partial file and its sidecar in ``checkpoint_dir`` (best
    checkpoints stay)."""
    for pattern in (f"*{LAST_SUFFIX}.pth", f"*{LAST_SUFFIX}{PARTIAL_SUFFIX}.pth", f"*{LAST_SUFFIX}.json"):
        for path in glob.glob(os.path.join(checkpoint_dir, pattern)):
            os.remove(path)


def find_last_checkpoint(checkpoint_dir, model, dataset):
    """The newest last checkpoint of ``model`` on ``dataset`` in ``checkpoint_dir``, through the
    JSON sidecars."""
    candidates = []
    for sidecar_path in glob.glob(os.path.join(checkpoint_dir, f"*{LAST_SUFFIX}.json")):
        try:
            with open(sidecar_path, encoding="utf-8") as f:
                sidecar = json.load(f)
        except (OSError, ValueError):
            continue
        path = os.path.join(checkpoint_dir, str(sidecar.get("checkpoint", "")))
        if sidecar.get("model") == model and sidecar.get("dataset") == dataset and os.path.isfile(path):
            candidates.append((sidecar.get("saved_at", 0), path))
    if not candidates:
        raise BiFairInputError(
            f"--resume=last: no last checkpoint of {model} on {dataset} in {checkpoint_dir}; give the "
            "checkpoint's path with --resume=PATH, or check --checkpoint_dir.")
    return max(candidates)[1]


def resume_run(trainer, resume, train_data, valid_scores, epoch_seconds):
    """Load ``resume`` (a path, or ``last``) into ``trainer`` before ``fit``. A last checkpoint
    continues after its last finished epoch, exactly; a best checkpoint (RecBole's) continues
    after its best epoch, RecBole's resume. Returns the path loaded."""
    config = trainer.config
    if not config["single_spec"]:
        raise BiFairInputError("--resume continues single-process runs only (each process of a multi-process "
                               "run has its own random state); resume it with one process.")
    path = find_last_checkpoint(config["checkpoint_dir"], config["model"], config["dataset"]) if resume == "last" else resume
    if not os.path.isfile(path):
        raise BiFairInputError(f"--resume: no checkpoint at {path}; give a .pth file that a run saved, or `last`.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: torch raises many kinds
        raise BiFairInputError(f"--resume: {path} is not a readable checkpoint ({type(error).__name__}).") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        raise BiFairInputError(f"--resume: {path} is not a RecBole checkpoint.")
    if checkpoint["config"]["model"] != config["model"]:
        raise BiFairInputError(
            f"--resume: {path} is a checkpoint of {checkpoint['config']['model']}, not {config['model']}; "
            f"resume it with --model={checkpoint['config']['model']}.")
    trainer.resume_checkpoint(path)
    extra = checkpoint.get("resume")
    if extra is None:
        trainer.logger.warning(f"{path} is a best checkpoint: training continues after its best epoch "
                               f"({checkpoint['epoch']}), not after the last finished one.")
        return path
    trainer.saved_model_file = extra["best_model_file"]
    trainer.best_valid_result = extra["best_valid_result"]
    valid_scores[:] = extra["valid_scores"]
    epoch_seconds[:] = extra["epoch_seconds"]
    trainer.add_callback(RestoreRandomStates(extra["random_states"], train_data))
    return path


class RestoreRandomStates(TrainerCallback):
    """At the first epoch a resumed run trains: the random and data-order states the last
    checkpoint saved, so it continues as the interrupted run would have."""

    def __init__(self, states, train_data):
        self.states, self.train_data = states, train_data

    def on_epoch_start(self, trainer, epoch_idx):
        if self.states is not None:
            states, self.states = self.states, None
            restore_random_states(states, self.train_data)
