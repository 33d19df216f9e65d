"""``GroupFairTrainer``: RecBole's trainer with a group-aware training loss. It trains the
fairness baselines, and BiFair's trainer builds on it:

- ``IPS<Backbone>``: inverse-propensity weights, by item (``inner_weighting: item_ips``, ``w_i``
  proportional to ``count_i ** -ips_power``) or by item group (``balancer: inverse_frequency``);
- ``GroupDRO<Backbone>``: GroupDRO's adaptive group weights (``balancer: dro``);
- ``VarReg<Backbone>``: the mean loss plus ``loss_spread_weight`` times the variance of the
  group losses.

The trainer is a thin adapter of RecBole's: it loops over the batches and hands each to its
``training_step`` (``trainer.step``: the updates; ``trainer.losses.LossPolicy``: the loss),
and keeps RecBole's evaluation, early stopping, checkpoints (with the step's state added),
progress bars and TensorBoard. Under DDP each rank takes its gradients on its own batch and the
ranks average them; the balancers see the group statistics of all ranks (``distributed``).
"""
import torch
from recbole.trainer import Trainer
from recbole.utils import get_gpu_usage, set_color
from tqdm import tqdm

from recbole_bifair import distributed
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.files import save_atomically
from recbole_bifair.trainer import recbole_changes
from recbole_bifair.trainer.hooks import TrainerHooks
from recbole_bifair.trainer.resume import random_states, restore_random_states
from recbole_bifair.trainer.settings import GroupFairSettings
from recbole_bifair.trainer.step import BiFairTrainingError, build_training_step

__all__ = ["BiFairTrainingError", "GroupFairTrainer"]


class GroupFairTrainer(TrainerHooks, Trainer):
    """Trains LLM-enhanced models on a group-aware loss; evaluation, early stopping,
    checkpoints, progress bars and TensorBoard are RecBole's."""

    def __init__(self, config, model):
        if not hasattr(model, "llm_item_embeddings"):
            raise BiFairInputError(
                f"{type(self).__name__} trains the plugin's LLM-enhanced models; got {type(model).__name__}."
            )
        recbole_changes.apply()  # the fairness collector and checkpoint fixes, before RecBole's __init__
        super().__init__(config, model)
        self.settings = GroupFairSettings.from_config(config)
        self.item_groups = None
        self.training_step = None
        self._resumed_state = None

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", self.model.inner_parameters())
        return super()._build_optimizer(**kwargs)

    # ----- set-up -------------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._train_data = train_data
        self.set_up(train_data)
        self._restore_training_state()
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def set_up(self, train_data):
        """Builds the training step for ``train_data`` (item groups, loss policy, balancers)
        and returns it."""
        self.training_step = build_training_step(self.config, self.model, train_data, self.optimizer,
                                                 **self._outer_level())
        self.item_groups = self.training_step.item_groups
        return self.training_step

    def _outer_level(self):
        """What the step's outer level needs from the trainer (none here)."""
        return {}

    # ----- the training loop ----------------------------------------------------------------
    def _run_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        batches = (
            tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
            if show_progress
            else train_data
        )
        if distributed.is_distributed() and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)
        step = self.training_step
        step.start_epoch(epoch_idx)
        # summed on the device in float64: the same sum as of each loss's value, without a sync per step
        total_loss, previous = torch.zeros((), dtype=torch.float64, device=self.device), None
        for interaction in batches:
            batch = step.training_rows(interaction.to(self.device))
            total_loss += step.step(previous, batch).double()
            previous = batch
            if self.gpu_available and show_progress:
                batches.set_postfix_str(set_color("GPU RAM: " + get_gpu_usage(self.device), "yellow"))
        step.check_losses()
        self._log_epoch(epoch_idx)
        return total_loss.item()

    def _log_epoch(self, epoch_idx):
        """The group weights the loss used, in the log and TensorBoard."""
        balancers = self.training_step.balancers(in_use_only=True)
        if not balancers:
            return
        parts = [f"{level} {[round(w, 4) for w in b.weights().tolist()]}" for level, b in balancers.items()]
        self.logger.info(set_color("group weights", "blue") + f" epoch {epoch_idx}: " + ", ".join(parts))
        for level, balancer in balancers.items():
            for g, weight in enumerate(balancer.weights().tolist()):
                self.tensorboard.add_scalar(f"GroupWeights/{level}_g{g}", weight, epoch_idx)

    # ----- checkpoints ------------------------------------------------------------------------
    def _write_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole 1.2.1's ``Trainer._save_checkpoint`` (copied: it has no hook for more state)
        with the best validation result and the training state added, and an atomic write."""
        if not distributed.is_main_process():
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "best_valid_result": self.best_valid_result,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "group_fair": self._training_state(),
        }
        save_atomically(state, saved_model_file, pickle_protocol=4)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _training_state(self):
        """What an exact resume needs beyond RecBole's checkpoint."""
        step = {"balancers": {}} if self.training_step is None else self.training_step.state_dict()
        return {**step, **random_states(getattr(self, "_train_data", None))}

    def resume_checkpoint(self, resume_file):
        """RecBole's resume (model, optimiser, epoch, early-stopping state), then what it does
        not restore: the best validation result, and the step's and random and data-order
        states (restored when ``fit`` starts)."""
        super().resume_checkpoint(resume_file)
        checkpoint = torch.load(str(resume_file), map_location="cpu", weights_only=False)
        self.best_valid_result = checkpoint.get("best_valid_result")
        self._resumed_state = checkpoint.get("group_fair")

    def _restore_training_state(self):
        state, self._resumed_state = self._resumed_state, None
        if state is None:
            return
        self.training_step.load_state_dict(state)
        restore_random_states(state, self._train_data)
