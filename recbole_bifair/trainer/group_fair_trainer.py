"""``GroupFairTrainer``: RecBole's trainer with a group-aware training loss. It is BiFair's
inner level, and on its own it trains the fairness baselines:

- ``IPS<Backbone>``: inverse-propensity weights, by item (``inner_weighting: item_ips``, ``w_i``
  proportional to ``count_i ** -ips_power``) or by item group (``balancer: inverse_frequency``);
- ``GroupDRO<Backbone>``: GroupDRO's adaptive group weights (``balancer: dro``);
- ``VarReg<Backbone>``: the mean loss plus ``loss_spread_weight`` times the variance of the
  group losses.

Under DDP each rank takes its gradients on its own batch and the ranks average them; the
balancers see the group statistics of all ranks (``distributed``).

Per batch: ``loss = sum_g w_g L_g / sum_g w_g`` (``inner_weighting: group``, weights from the
balancer), or the IPS-weighted or plain mean of the per-example losses, plus
``loss_spread_weight * Var_g(L_g)`` over the groups present in the batch.
"""
import torch
from recbole.trainer import Trainer
from recbole.utils import get_gpu_usage, set_color
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from recbole_bifair import compat, distributed
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.evaluator.groups import training_item_counts
from recbole_bifair.files import save_atomically
from recbole_bifair.llm.layer import projector_output_parameters
from recbole_bifair.trainer.balancer import build_balancer
from recbole_bifair.trainer.losses import example_losses, group_gradients_over, group_mean_losses, weighted_group_loss
from recbole_bifair.trainer.resume import random_states, restore_random_states
from recbole_bifair.trainer.settings import GroupFairSettings



class BiFairTrainingError(FloatingPointError):
    """A training loss became NaN or infinite; training stops instead of skipping the batch."""


class GroupFairTrainer(Trainer):
    """Trains LLM-enhanced models on a group-aware loss; evaluation, early stopping,
    checkpoints, progress bars and TensorBoard are RecBole's."""

    def __init__(self, config, model):
        if not hasattr(model, "llm_item_embeddings"):
            raise BiFairInputError(
                f"{type(self).__name__} trains the plugin's LLM-enhanced models; got {type(model).__name__}."
            )
        compat.apply()  # the fairness collector and checkpoint fixes, before RecBole's __init__
        super().__init__(config, model)
        self.settings = GroupFairSettings.from_config(config)
        self.item_groups = None
        self.inner_balancer = None
        self._resumed_state = None
        if config["enable_amp"]:
            self.logger.warning(f"{type(self).__name__} trains in full precision: enable_amp is ignored.")

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", self.model.inner_parameters())
        return super()._build_optimizer(**kwargs)

    # ----- set-up -------------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._train_data = train_data
        self._set_up_groups(train_data)
        self._restore_training_state()
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _set_up_groups(self, train_data):
        """Item groups from the training split (the same ones the fairness metrics use) and
        the inner balancer."""
        from recbole_bifair.evaluator import build_item_groups

        self.item_groups = build_item_groups(self.config, train_data.dataset)
        self._item_group = self.item_groups.item_group.to(self.device)
        self.inner_balancer = self._build_balancer(self.settings.balancer)
        counts = torch.from_numpy(training_item_counts(train_data.dataset)).double()
        self._item_ips = counts.clamp(min=1).pow(-self.settings.ips_power).float().to(self.device)

    def _build_balancer(self, settings):
        balancer = build_balancer(settings, self.item_groups.n_groups, self.item_groups.train_share)
        return distributed.SyncedBalancer(balancer) if distributed.is_distributed() else balancer

    def _mgda_shared_parameters(self):
        """The parameters whose group gradients MGDA compares: the projector's last layer
        [ours: MGDA-UB style, so K backward passes stay cheap]; with ``projector_residual``, its
        MLP's last layer and the linear path beside it."""
        return projector_output_parameters(self.model.llm_item_embeddings()[0].projector)

    # ----- the training loop ----------------------------------------------------------------
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        batches = (
            tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
            if show_progress
            else train_data
        )
        if distributed.is_distributed() and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)
        total_loss, previous = 0.0, None
        for step, interaction in enumerate(batches):
            interaction = self._training_rows(interaction.to(self.device))
            self._before_inner_step(previous, interaction, epoch_idx, step)
            total_loss += self._inner_step(interaction, epoch_idx, step)
            previous = interaction
            if self.gpu_available and show_progress:
                batches.set_postfix_str(set_color("GPU RAM: " + get_gpu_usage(self.device), "yellow"))
        self._log_group_weights(epoch_idx)
        return total_loss

    def _training_rows(self, interaction):
        """Hook: the rows of a training batch the inner level trains on (all of them here;
        BiFair's meta split holds some out)."""
        return interaction

    def _before_inner_step(self, previous, interaction, epoch_idx, step):
        """Hook for work between batches (BiFair's outer step)."""

    def _inner_step(self, interaction, epoch_idx, step):
        """One update of theta (projector + backbone) on the group-aware loss; E and the outer
        level's other parameters are held."""
        self.optimizer.zero_grad()
        held = self.model.llm_parameters() + self.model.outer_parameters()
        trainable = [p.requires_grad for p in held]
        for p in held:
            p.requires_grad_(False)
        try:
            loss = self._inner_loss(interaction)
            self._check_finite(loss, "inner", epoch_idx, step)
            loss.backward()
        finally:
            for p, flag in zip(held, trainable):
                p.requires_grad_(flag)
        distributed.average_gradients(self.model.inner_parameters())
        if self.clip_grad_norm:
            clip_grad_norm_(self.model.inner_parameters(), **self.clip_grad_norm)
        self.optimizer.step()
        return loss.item()

    def _inner_loss(self, interaction):
        """The inner level's loss on ``interaction``; updates the balancer with its groups."""
        losses, items = example_losses(self.model, interaction)
        return self.combine_losses(losses, items, update_balancer=True)

    def combine_losses(self, losses, items, update_balancer=False):
        """One training loss from per-example ``losses`` of target ``items``: group-weighted
        (``inner_weighting: group``), IPS-weighted (``item_ips``) or the mean (``none``), plus
        ``loss_spread_weight * Var_g(L_g)``. BiFair's look-ahead calls it too
        (``update_balancer=False``), so both levels see the same inner loss."""
        group_losses, counts = group_mean_losses(losses, self._item_group[items], self.item_groups.n_groups)
        if self.settings.inner_weighting == "group":
            if update_balancer:
                gradients = (
                    group_gradients_over(group_losses, counts, self._mgda_shared_parameters())
                    if self.inner_balancer.needs_gradients
                    else None
                )
                self.inner_balancer.update(group_losses.detach(), counts, gradients)
            loss = weighted_group_loss(group_losses, counts, self.inner_balancer.weights().to(losses.device))
        elif self.settings.inner_weighting == "item_ips":
            weights = self._item_ips[items]
            loss = (weights * losses).sum() / weights.sum()
        else:
            loss = losses.mean()
        if self.settings.loss_spread_weight:
            loss = loss + self.settings.loss_spread_weight * group_losses[counts > 0].var(unbiased=False)
        return loss

    @staticmethod
    def _check_finite(loss, level, epoch_idx, step):
        if not distributed.check_finite_on_all_ranks(loss):
            value = loss.item() if not torch.isfinite(loss) else "not finite on another process"
            raise BiFairTrainingError(
                f"The {level} loss is {value} at epoch {epoch_idx}, batch {step}: training stopped. "
                "Lower learning_rate (and outer_learning_rate), or set clip_grad_norm."
            )

    def _balancers(self, in_use_only=False):
        """The named balancers: all that exist (checkpointed), or those whose weights the loss
        uses (logged each epoch)."""
        if self.inner_balancer is None or (in_use_only and self.settings.inner_weighting != "group"):
            return {}
        return {"inner": self.inner_balancer}

    def _log_group_weights(self, epoch_idx):
        balancers = self._balancers(in_use_only=True)
        if not balancers:
            return
        parts = [f"{level} {[round(w, 4) for w in b.weights().tolist()]}" for level, b in balancers.items()]
        self.logger.info(set_color("group weights", "blue") + f" epoch {epoch_idx}: " + ", ".join(parts))
        for level, balancer in balancers.items():
            for g, weight in enumerate(balancer.weights().tolist()):
                self.tensorboard.add_scalar(f"GroupWeights/{level}_g{g}", weight, epoch_idx)

    # ----- checkpoints ------------------------------------------------------------------------
    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole 1.2.1's ``Trainer._save_checkpoint`` (copied: it has no hook for more state)
        with the group-aware state added and an atomic write."""
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
        return {"balancers": {level: b.state_dict() for level, b in self._balancers().items()},
                **random_states(getattr(self, "_train_data", None))}

    def resume_checkpoint(self, resume_file):
        """RecBole's resume (model, optimiser, epoch, early-stopping state), then what it does
        not restore: the best validation result, and the balancer, random and data-order states
        (restored when ``fit`` starts)."""
        super().resume_checkpoint(resume_file)
        checkpoint = torch.load(str(resume_file), map_location="cpu", weights_only=False)
        self.best_valid_result = checkpoint.get("best_valid_result")
        self._resumed_state = checkpoint.get("group_fair")
        self._load_extra_state(self._resumed_state or {})

    def _load_extra_state(self, state):
        """Hook for subclasses' own checkpoint state (BiFair's outer optimiser)."""

    def _restore_training_state(self):
        state, self._resumed_state = self._resumed_state, None
        if state is None:
            return
        for level, balancer in self._balancers().items():
            balancer.load_state_dict(state["balancers"][level])
        restore_random_states(state, self._train_data)
