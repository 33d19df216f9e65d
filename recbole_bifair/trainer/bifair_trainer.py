"""``BiFairTrainer``: RecBole's trainer with the training loop replaced by BiFair's nested
bi-level update (see ``bilevel`` for the outer level and ``balancer`` for the group weights).

Each training batch ``B_t``:
1. outer step, every ``outer_every`` batches (``bifair_outer``): ``E <- E - lr_out * dF/dE``
   with the look-ahead taken on the previous batch ``B_{t-1}`` and ``F`` measured on ``B_t``,
   which the inner level has not used yet;
2. inner step: ``theta <- theta - lr_in * grad_theta sum_g w_g L_g(E, theta; B_t)`` with the
   inner balancer's weights ``w`` (``bifair_inner_weighting``; off: the plain mean loss).
``E`` (the LLM tables) moves only in step 1, ``theta`` (projector + backbone) only in step 2.
"""
import random

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import calculate_valid_score, get_gpu_usage, set_color
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.trainer.balancer import build_balancer
from recbole_bifair.trainer.bilevel import (
    HYPERGRADIENT_MODES,
    LookAheadObjective,
    group_gradients_over,
    outer_hypergradient,
)
from recbole_bifair.trainer.losses import group_mean_losses, per_example_loss, weighted_group_loss
from recbole_bifair.trainer.valid_score import combined_valid_score


class BiFairTrainingError(FloatingPointError):
    """A BiFair loss became NaN or infinite; training stops instead of skipping the batch."""


class BiFairTrainer(Trainer):
    """Trains ``BiFair<Backbone>`` models; everything else is RecBole's ``Trainer``
    (evaluation, early stopping, checkpoints, progress bars, TensorBoard)."""

    def __init__(self, config, model):
        if not getattr(model, "bifair", False):
            raise BiFairInputError(
                f"BiFairTrainer trains BiFair<Backbone> models; got {type(model).__name__}. "
                f"Use --model=BiFair{type(model).__name__.replace('LLM', '', 1)}."
            )
        super().__init__(config, model)
        self.outer_enabled = bool(config["bifair_outer"])
        self.inner_weighting = bool(config["bifair_inner_weighting"])
        self.hypergradient = config["hypergradient"]
        if self.hypergradient not in HYPERGRADIENT_MODES:
            raise BiFairInputError(
                f"hypergradient '{self.hypergradient}' is unknown; choose one of {', '.join(HYPERGRADIENT_MODES)}."
            )
        self.outer_every = config["outer_every"]
        if not isinstance(self.outer_every, int) or self.outer_every < 1:
            raise BiFairInputError(f"outer_every must be an integer >= 1, got {self.outer_every!r}.")
        self.lookahead_lr = config["lookahead_lr"] if config["lookahead_lr"] is not None else self.learning_rate
        self.proximity_weight = float(config["proximity_weight"])
        self.outer_optimizer = self._build_optimizer(
            params=model.llm_parameters(),
            learner=config["outer_learner"],
            learning_rate=config["outer_learning_rate"],
            weight_decay=0.0,
        )
        self.item_groups = None
        self.inner_balancer = self.outer_balancer = None
        self.objective = None
        self._resumed_state = None

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", self.model.inner_parameters())
        return super()._build_optimizer(**kwargs)

    # ----- set-up -------------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._set_up_groups(train_data)
        self._train_data = train_data
        self._restore_training_state()
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _set_up_groups(self, train_data):
        """Item groups from the training split (the same ones the fairness metrics use), the
        balancers of both levels and the look-ahead objective."""
        from recbole_bifair.evaluator import build_item_groups

        self.item_groups = build_item_groups(self.config, train_data.dataset)
        n_groups = self.item_groups.n_groups
        item_group = self.item_groups.item_group.to(self.device)
        train_share = self.item_groups.train_share
        inner_strategy = self.config["balancer"]
        outer_strategy = self.config["outer_balancer"] or inner_strategy
        self.inner_balancer = build_balancer(inner_strategy, self.config, n_groups, train_share)
        self.outer_balancer = build_balancer(outer_strategy, self.config, n_groups, train_share)
        self._item_group = item_group
        llm_ids = {id(p) for p in self.model.llm_parameters()}
        named = list(self.model.named_parameters())
        self._inner_named = [(n, p) for n, p in named if id(p) not in llm_ids]
        self._llm_named = [(n, p) for n, p in named if id(p) in llm_ids]
        self.objective = LookAheadObjective(
            self.model, [n for n, _ in self._inner_named], [n for n, _ in self._llm_named], item_group, n_groups
        )
        shared_ids = {id(p) for p in self._mgda_shared_parameters()}
        self._shared_index = [i for i, (_, p) in enumerate(self._inner_named) if id(p) in shared_ids]

    def _mgda_shared_parameters(self):
        """The parameters whose group gradients MGDA compares: the projector's last layer
        [ours: MGDA-UB style, so K backward passes stay cheap]."""
        return list(self.model.llm_item_embeddings()[0].projector[-1].parameters())

    # ----- the bi-level loop ----------------------------------------------------------------
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        batches = (
            tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
            if show_progress
            else train_data
        )
        total_loss, previous = 0.0, None
        for step, interaction in enumerate(batches):
            interaction = interaction.to(self.device)
            if self.outer_enabled and previous is not None and step % self.outer_every == 0:
                self._outer_step(previous, interaction, epoch_idx, step)
            total_loss += self._inner_step(interaction, epoch_idx, step)
            previous = interaction
            if self.gpu_available and show_progress:
                batches.set_postfix_str(set_color("GPU RAM: " + get_gpu_usage(self.device), "yellow"))
        self._log_group_weights(epoch_idx)
        return total_loss

    def _inner_step(self, interaction, epoch_idx, step):
        """One update of theta (projector + backbone) on the group-weighted loss; E is held."""
        self.optimizer.zero_grad()
        llm_params = self.model.llm_parameters()
        for p in llm_params:
            p.requires_grad_(False)
        try:
            losses = per_example_loss(self.model, interaction)
            if self.inner_weighting:
                group_losses, counts = group_mean_losses(losses, self._item_group[interaction[self.model.ITEM_ID]], self.item_groups.n_groups)
                gradients = (
                    group_gradients_over(group_losses, counts, self._mgda_shared_parameters())
                    if self.inner_balancer.needs_gradients
                    else None
                )
                self.inner_balancer.update(group_losses.detach(), counts, gradients)
                loss = weighted_group_loss(group_losses, counts, self.inner_balancer.weights().to(losses.device))
            else:
                loss = losses.mean()
            self._check_finite(loss, "inner", epoch_idx, step)
            loss.backward()
        finally:
            for p in llm_params:
                p.requires_grad_(True)
        if self.clip_grad_norm:
            clip_grad_norm_(self.model.inner_parameters(), **self.clip_grad_norm)
        self.optimizer.step()
        return loss.item()

    def _outer_step(self, train_batch, meta_batch, epoch_idx, step):
        """One update of E on the fairness-aware look-ahead objective (``bilevel``)."""
        inner_weights = self.inner_balancer.weights().to(self.device) if self.inner_weighting else None
        grads, objective, _, _ = outer_hypergradient(
            self.objective,
            [p for _, p in self._inner_named],
            [p for _, p in self._llm_named],
            [layer.llm_weight_init for layer in self.model.llm_item_embeddings()],
            train_batch,
            meta_batch,
            inner_weights,
            self.outer_balancer,
            self.lookahead_lr,
            self.proximity_weight,
            self.hypergradient,
            self._shared_index,
        )
        self._check_finite(objective, "outer", epoch_idx, step)
        self.outer_optimizer.zero_grad()
        for (_, param), grad in zip(self._llm_named, grads):
            param.grad = grad
        if self.clip_grad_norm:
            clip_grad_norm_(self.model.llm_parameters(), **self.clip_grad_norm)
        self.outer_optimizer.step()

    @staticmethod
    def _check_finite(loss, level, epoch_idx, step):
        if not torch.isfinite(loss):
            raise BiFairTrainingError(
                f"BiFair {level} loss is {loss.item()} at epoch {epoch_idx}, batch {step}: training stopped. "
                "Lower learning_rate / outer_learning_rate, or set clip_grad_norm."
            )

    def _log_group_weights(self, epoch_idx):
        inner = self.inner_balancer.weights()
        outer = self.outer_balancer.weights()
        self.logger.info(
            set_color("group weights", "blue")
            + f" epoch {epoch_idx}: inner {[round(w, 4) for w in inner.tolist()]}"
            + (f", outer {[round(w, 4) for w in outer.tolist()]}" if self.outer_enabled else "")
        )
        for g, (w_in, w_out) in enumerate(zip(inner.tolist(), outer.tolist())):
            self.tensorboard.add_scalar(f"BiFair/inner_weight_g{g}", w_in, epoch_idx)
            if self.outer_enabled:
                self.tensorboard.add_scalar(f"BiFair/outer_weight_g{g}", w_out, epoch_idx)

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_result = self.evaluate(valid_data, load_best_model=False, show_progress=show_progress)
        if self.valid_metric in valid_result:
            return calculate_valid_score(valid_result, self.valid_metric), valid_result
        return combined_valid_score(valid_result, self.valid_metric), valid_result

    # ----- checkpoints ------------------------------------------------------------------------
    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "bifair": self._training_state(),
        }
        torch.save(state, saved_model_file, pickle_protocol=4)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _training_state(self):
        """What an exact resume needs beyond RecBole's checkpoint."""
        return {
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "inner_balancer": self.inner_balancer.state_dict() if self.inner_balancer else None,
            "outer_balancer": self.outer_balancer.state_dict() if self.outer_balancer else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "train_generator": self._train_data.generator.get_state() if getattr(self, "_train_data", None) else None,
        }

    def resume_checkpoint(self, resume_file):
        """RecBole's resume (model, optimiser, epoch, early-stopping state), plus the outer
        optimiser; balancer, random and data-order states are restored when ``fit`` starts."""
        checkpoint = torch.load(str(resume_file), map_location=self.device, weights_only=False)
        self.saved_model_file = str(resume_file)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self._resumed_state = checkpoint.get("bifair")
        if self._resumed_state is not None:
            self.outer_optimizer.load_state_dict(self._resumed_state["outer_optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def _restore_training_state(self):
        """Balancer states, random states and the data order saved with a resumed checkpoint."""
        state, self._resumed_state = self._resumed_state, None
        if state is None:
            return
        if state["inner_balancer"] is not None:
            self.inner_balancer.load_state_dict(state["inner_balancer"])
            self.outer_balancer.load_state_dict(state["outer_balancer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        if state["train_generator"] is not None:
            self._train_data.generator.set_state(state["train_generator"])
