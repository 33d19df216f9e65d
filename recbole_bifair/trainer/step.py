"""One training step of the group-aware trainers, the whole schedule in one place:
:meth:`TrainingStep.step` ``(previous_batch, batch)``, in the spirit of Lightning's manual
optimisation. The trainers (``group_fair_trainer``, ``bifair_trainer``) only loop over the
batches and call it; a test can drive it directly.

For training batch ``B_t`` (``previous_batch`` is ``B_{t-1}``, None for an epoch's first):

1. outer update (``BiFair<Backbone>``; every ``outer_every`` batches, from an epoch's second
   batch on): ``E <- E - lr_out * dF/dE`` (``bilevel.outer_hypergradient``) with the look-ahead
   taken on ``B_{t-1}`` and ``F`` measured on ``B_t``, which the inner level has not used yet,
   or (``meta_split: last_train_item``) on the next batch of the meta split, each user's last
   training example, which the inner level never trains on (``meta_split``); with ``balancer:
   learned`` the inner group weights take their outer step too, their look-ahead on ``B_t``
   (``bilevel.group_weight_hypergradient``);
2. inner update: ``theta <- theta - lr_in * grad_theta L_in(E, theta; B_t)``, ``L_in`` the
   :class:`~recbole_bifair.trainer.losses.LossPolicy`'s loss (group weights, IPS or the mean,
   plus the spread term), which the look-ahead of step 1 evaluates too; ``E`` and the outer
   level's other parameters (popularity gates) are held.

``E`` moves only in step 1, ``theta`` (projector + backbone) only in step 2. ``llm_update:
joint`` (a single-level control) has no step 1: ``E`` takes ``L_in``'s gradient in step 2,
with the outer optimiser. The fairness baselines (``IPS``, ``GroupDRO``, ``VarReg``) have no
outer level: step 2 only. Each update: zero the gradients, the loss, a stop on a non-finite
loss (on any rank), backward, the ranks' average (``distributed``), clipping
(``clip_grad_norm``), the optimiser's step.

Mixed precision follows RecBole's trainer: with ``enable_amp`` the inner (and joint) update's
forward runs under ``torch.autocast``, and with ``enable_scaler`` on a GPU its backward is scaled
by a ``GradScaler`` (unscaled before clipping). The outer hypergradient, which differentiates
through a look-ahead step, stays in full precision.
"""
import copy
from dataclasses import replace

import torch
from torch.nn.utils import clip_grad_norm_

from recbole_bifair import distributed
from recbole_bifair.evaluator.groups import build_item_groups, training_item_counts
from recbole_bifair.evaluator.prior import PriorLoss
from recbole_bifair.llm.layer import projector_output_parameters
from recbole_bifair.trainer.balancer import build_balancer
from recbole_bifair.trainer.bilevel import (
    LookAheadObjective, OuterProblem, PriorTerm, group_weight_hypergradient, outer_hypergradient,
)
from recbole_bifair.trainer.losses import LossPolicy
from recbole_bifair.trainer.meta_split import MetaSplit
from recbole_bifair.trainer.resume import capture_random_state, restore_random_state
from recbole_bifair.trainer.settings import GroupFairSettings, OuterLevelSettings


# On a GPU the losses are checked for non-finite values every this many of them (one host
# synchronisation each time) and at the end of every epoch; on a CPU, each at once.
FINITE_CHECK_EVERY_ON_GPU = 16


class BiFairTrainingError(FloatingPointError):
    """A training loss became NaN or infinite; training stops instead of skipping the batch."""


class TrainingStep:
    """The updates of one training batch (module docstring). ``outer`` (``OuterLevelSettings``)
    is None for the fairness baselines; BiFair's outer level also needs ``outer_optimizer``,
    the ``outer_balancer`` (``lambda`` of ``F``), the optional ``prior_term`` of ``F`` and the
    optional ``meta_split``."""

    def __init__(self, model, policy, optimizer, clip_grad_norm=None, outer=None, outer_optimizer=None,
                 outer_balancer=None, prior_term=None, meta_split=None, device=None, enable_amp=False,
                 scaler=None):
        self.model, self.policy, self.optimizer = model, policy, optimizer
        self.enable_amp = bool(enable_amp)
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
        self.clip_grad_norm = clip_grad_norm
        self.outer, self.outer_optimizer = outer, outer_optimizer
        self.outer_balancer, self.prior_term, self.meta_split = outer_balancer, prior_term, meta_split
        self.device = device
        self.epoch, self.batch_index, self.outer_steps = 0, 0, 0
        self._unchecked = []  # (loss, level, epoch, batch) not checked for non-finite values yet
        self.diagnostics, self._epoch_diagnostics = [], []
        if outer is not None:
            inner_ids = {id(p) for p in model.inner_parameters()}
            outer_ids = {id(p) for p in model.outer_parameters()}
            named = list(model.named_parameters())
            self.inner_named = [(n, p) for n, p in named if id(p) in inner_ids]
            self.outer_named = [(n, p) for n, p in named if id(p) in outer_ids]
            table_init = {id(layer.llm_weight): layer.llm_weight_init for layer in model.llm_item_embeddings()}
            self.outer_init = [table_init.get(id(p)) for _, p in self.outer_named]  # E0; None for a gate
            self.objective = LookAheadObjective(
                model, [n for n, _ in self.inner_named], [n for n, _ in self.outer_named], policy)
            shared_ids = {id(p) for p in policy.shared_parameters}
            self.shared_index = [i for i, (_, p) in enumerate(self.inner_named) if id(p) in shared_ids]

    # ----- the step ---------------------------------------------------------------------------
    def start_epoch(self, epoch_idx):
        self.epoch, self.batch_index, self._epoch_diagnostics = epoch_idx, 0, []

    def training_rows(self, batch):
        """The rows of a training batch the inner level trains on (the meta split's are held out)."""
        return batch if self.meta_split is None else self.meta_split.training_rows(batch)

    def step(self, previous_batch, batch):
        """The updates of ``batch`` (rows from :meth:`training_rows`), ``previous_batch`` the
        batch before it in this epoch (None for the first); returns the inner loss (a detached
        tensor on the run's device)."""
        outer = self.outer
        if (outer is not None and outer.takes_outer_steps and previous_batch is not None
                and self.batch_index % outer.every == 0):
            meta_batch = batch if self.meta_split is None else self.meta_split.next_batch().to(self.device)
            if self.outer_named:
                self.outer_update(previous_batch, meta_batch)
            if outer.learns_group_weights:
                self.group_weight_update(batch, meta_batch)
        loss = self.joint_update(batch) if outer is not None and outer.trains_jointly else self.inner_update(batch)
        self.batch_index += 1
        return loss

    def inner_update(self, batch):
        """One update of theta on the policy's loss (which updates its balancer); E and the
        outer level's other parameters are held."""
        self.optimizer.zero_grad()
        held = self.model.llm_parameters() + self.model.outer_parameters()
        trainable = [p.requires_grad for p in held]
        for p in held:
            p.requires_grad_(False)
        try:
            with self._autocast():
                loss = self.policy.loss(self.model, batch, update_balancer=True)
            self._check_finite(loss, "inner")
            self.scaler.scale(loss).backward()
        finally:
            for p, flag in zip(held, trainable):
                p.requires_grad_(flag)
        self._apply(self.model.inner_parameters(), self.optimizer, scaled=True)
        self.scaler.update()
        return loss.detach()

    def joint_update(self, batch):
        """``llm_update: joint``: theta and E both take the policy's loss's gradient."""
        self.outer_optimizer.zero_grad()
        self.optimizer.zero_grad()
        with self._autocast():
            loss = self.policy.loss(self.model, batch, update_balancer=True)
        self._check_finite(loss, "inner")
        self.scaler.scale(loss).backward()
        self._apply(self.model.inner_parameters(), self.optimizer, scaled=True)
        self._apply(self.model.outer_parameters(), self.outer_optimizer, scaled=True)
        self.scaler.update()
        return loss.detach()

    def outer_update(self, lookahead_batch, meta_batch):
        """One update of E (and the gates): the hypergradient of ``F``, the diagnostic, the
        outer optimiser's step."""
        hypergradient = self.outer.hypergradient
        due = (hypergradient.mode == "first_order" and self.outer.diagnostic_every
               and self.outer_steps % self.outer.diagnostic_every == 0)
        weights_before = self.group_weighting_copy() if due else None  # as this step sees it
        result = self.hypergradient(lookahead_batch, meta_batch, hypergradient, self.outer_balancer, self.prior_term)
        self._check_finite(result.value, "outer")
        self._record_diagnostic(result, lookahead_batch, meta_batch, weights_before)
        self.outer_steps += 1
        self.outer_optimizer.zero_grad()
        for (_, param), grad in zip(self.outer_named, result.grads):
            param.grad = grad
        self._apply([p for _, p in self.outer_named], self.outer_optimizer, self.model.outer_parameters())

    def group_weight_update(self, batch, meta_batch):
        """``balancer: learned``: one step of the inner group weights' logits along the
        hypergradient of ``F`` (``bilevel.group_weight_hypergradient``), with ``batch`` the one
        the inner update trains on next. The outer balancer takes in the meta batch here only
        when no outer step of E has done so."""
        balancer = self.policy.balancer
        problem = self._outer_problem(self.outer.hypergradient, self.outer_balancer, None)
        result = group_weight_hypergradient(problem, balancer.log_weights, batch, meta_batch,
                                            update_balancer=not self.outer_named)
        self._check_finite(result.value, "outer")
        balancer.set_gradient(result.gradient)
        distributed.average_gradients([balancer.log_weights])
        balancer.step()

    def _autocast(self):
        """RecBole's autocast of a training forward (``enable_amp``), on the model's device."""
        device_type = next(self.model.parameters()).device.type
        return torch.autocast(device_type=device_type, enabled=self.enable_amp)

    def _apply(self, params, optimizer, clipped=None, scaled=False):
        """Average over ranks, clip and step; ``scaled``: the gradients carry the scaler's
        factor (unscaled before clipping; the scaler skips a step with non-finite gradients)."""
        distributed.average_gradients(params)
        if scaled:
            self.scaler.unscale_(optimizer)
        if self.clip_grad_norm:
            clip_grad_norm_(params if clipped is None else clipped, **self.clip_grad_norm)
        if scaled:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def _check_finite(self, loss, level):
        """Checks ``loss`` at once on a CPU; on a GPU with the next :meth:`check_losses`."""
        self._unchecked.append((loss.detach().reshape(()), level, self.epoch, self.batch_index))
        if loss.device.type != "cuda" or len(self._unchecked) >= FINITE_CHECK_EVERY_ON_GPU:
            self.check_losses()

    def check_losses(self):
        """Stops training (``BiFairTrainingError``) at the first loss not checked yet that is NaN
        or infinite, on this process or another; one host synchronisation."""
        pending, self._unchecked = self._unchecked, []
        if not pending:
            return
        values = torch.stack([value for value, *_ in pending])
        if distributed.check_finite_on_all_ranks(values):
            return
        local = torch.isfinite(values)
        if bool(local.all()):
            value, (level, epoch, batch) = "not finite on another process", pending[0][1:]
        else:
            first = int((~local).nonzero()[0])
            value, (level, epoch, batch) = pending[first][0].item(), pending[first][1:]
        raise BiFairTrainingError(
            f"The {level} loss is {value} at epoch {epoch}, batch {batch}: training stopped. "
            "Lower learning_rate (and outer_learning_rate), or set clip_grad_norm.")

    # ----- the hypergradient and its diagnostic -----------------------------------------------
    def hypergradient(self, lookahead_batch, meta_batch, settings, outer_balancer, prior_term):
        """``bilevel.Hypergradient`` of ``F`` at the current parameters (changes none of them;
        updates ``outer_balancer`` and the prior term's balancer)."""
        problem = self._outer_problem(settings, outer_balancer, prior_term)
        return outer_hypergradient(problem, lookahead_batch=lookahead_batch, meta_batch=meta_batch)

    def _outer_problem(self, settings, outer_balancer, prior_term):
        return OuterProblem(
            objective=self.objective,
            theta=[p for _, p in self.inner_named],
            llm=[p for _, p in self.outer_named],
            llm_init=self.outer_init,
            balancer=outer_balancer,
            settings=settings,
            optimizer=self.optimizer,
            shared=tuple(self.shared_index),
            prior=prior_term,
        )

    def group_weighting_copy(self):
        """Copies of what an outer step updates besides E, the outer balancer and the prior
        term's balancer, for a hypergradient that must not change training."""
        prior = self.prior_term
        if prior is not None and prior.balancer is not None:
            prior = replace(prior, balancer=copy.deepcopy(prior.balancer))
        return copy.deepcopy(self.outer_balancer), prior

    def _record_diagnostic(self, result, lookahead_batch, meta_batch, weights_before=None):
        """The second-order share of this step's hypergradient; a ``first_order`` run computes
        the ``exact`` one's split every ``hypergradient_diagnostic_every`` outer steps, on
        ``weights_before``, copies of the balancers taken before this step updated them
        (so both see the same group weights), without using it."""
        if result.second_order is None:
            if weights_before is None:
                return
            settings = replace(self.outer.hypergradient, mode="exact")
            training_random_state = capture_random_state()  # the diagnostic must not change training
            result = self.hypergradient(lookahead_batch, meta_batch, settings, *weights_before)
            restore_random_state(training_random_state)
        self._epoch_diagnostics.append((result.second_order_share(), result.cosine_to_direct()))

    def end_epoch(self):
        """The epoch's mean second-order share and cosine (kept in ``diagnostics``), or None
        when the epoch computed none."""
        if not self._epoch_diagnostics:
            return None
        shares, cosines = zip(*self._epoch_diagnostics)
        entry = {"epoch": self.epoch, "second_order_share": sum(shares) / len(shares),
                 "cosine_to_direct": sum(cosines) / len(cosines), "outer_steps": len(shares)}
        self.diagnostics.append(entry)
        return entry

    # ----- state --------------------------------------------------------------------------------
    def balancers(self, in_use_only=False):
        """The named balancers: all that exist (checkpointed), or those whose weights the loss
        uses (logged each epoch)."""
        balancers = {}
        if not in_use_only or self.policy.uses_balancer:
            balancers["inner"] = self.policy.balancer
        outer_in_use = self.outer is not None and self.outer.takes_outer_steps
        if self.outer_balancer is not None and (outer_in_use or not in_use_only):
            balancers["outer"] = self.outer_balancer
        if self.prior_term is not None and self.prior_term.balancer is not None and (outer_in_use or not in_use_only):
            balancers["prior"] = self.prior_term.balancer
        return balancers

    def state_dict(self):
        """What an exact resume needs of the step: the balancers, the outer step count and the
        meta split's order."""
        state = {"balancers": {level: b.state_dict() for level, b in self.balancers().items()}}
        if self.outer is not None:
            state["outer_steps"] = self.outer_steps
        if self.meta_split is not None:
            state["meta_split"] = self.meta_split.state_dict()
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state):
        for level, balancer in self.balancers().items():
            balancer.load_state_dict(state["balancers"][level])
        self.outer_steps = state.get("outer_steps", 0)
        if self.meta_split is not None and state.get("meta_split") is not None:
            self.meta_split.load_state_dict(state["meta_split"])
        if self.scaler.is_enabled() and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])


def group_balancer(settings, item_groups):
    """The balancer of ``settings`` over ``item_groups``, synced across ranks under DDP."""
    balancer = build_balancer(settings, item_groups.n_groups, item_groups.train_share)
    return distributed.SyncedBalancer(balancer) if distributed.is_distributed() else balancer


def gradient_scaler(config):
    """RecBole's rule: a gradient scaler with ``enable_scaler`` on a GPU run, else a disabled one."""
    device_type = torch.device(config["device"]).type
    enabled = bool(config["enable_scaler"]) and device_type == "cuda" and torch.cuda.is_available()
    return torch.amp.GradScaler(device_type, enabled=enabled)


def build_training_step(config, model, train_data, optimizer, outer_optimizer=None, logger=None):
    """The :class:`TrainingStep` of ``model`` on ``train_data``: item groups from the training
    split (the ones the fairness metrics use), the loss policy and its balancer, and, for
    ``BiFair<Backbone>``, the outer level with ``outer_optimizer`` (None when the group weights
    are its only variables)."""
    device = config["device"]
    precision = {"enable_amp": config["enable_amp"], "scaler": gradient_scaler(config)}
    settings = GroupFairSettings.from_config(config)
    item_groups = build_item_groups(config, train_data.dataset)
    item_group = item_groups.item_group.to(device)
    inner_balancer = group_balancer(settings.balancer, item_groups)
    counts = torch.from_numpy(training_item_counts(train_data.dataset)).double()
    item_ips = counts.clamp(min=1).pow(-settings.ips_power).float().to(device)
    # MGDA compares the group gradients over the projector's last layer [ours: MGDA-UB style, so
    # K backward passes stay cheap]; with projector_residual, its MLP's last layer and the linear path
    shared = projector_output_parameters(model.llm_item_embeddings()[0].projector)
    policy = LossPolicy(settings, item_group, item_groups.n_groups, inner_balancer, item_ips, shared)
    outer = OuterLevelSettings.from_config(config) if getattr(model, "bifair", False) else None
    if outer is None or (outer_optimizer is None and not outer.learns_group_weights):
        step = TrainingStep(model, policy, optimizer, config["clip_grad_norm"], device=device, **precision)
        step.item_groups = item_groups
        return step
    outer_balancer = group_balancer(outer.balancer, item_groups)
    prior_term = None
    if outer.prior_weight:  # F's prior-unfairness term
        loss = PriorLoss(config, outer.prior_temperature, train_data._dataset)
        balancer = None if outer.prior_balancer is None else group_balancer(outer.prior_balancer, item_groups)
        prior_term = PriorTerm(loss, outer.prior_weight, item_group, item_groups.n_groups, balancer)
    meta_split = None
    if outer.meta_split and outer.takes_outer_steps:
        meta_split = MetaSplit(train_data, config["train_batch_size"], config["seed"], device)
        if logger is not None:
            logger.info(f"meta split: {len(meta_split)} held-out training examples (each user's last) "
                        "for the outer objective; the inner level trains without them")
    step = TrainingStep(model, policy, optimizer, config["clip_grad_norm"], outer, outer_optimizer,
                        outer_balancer, prior_term, meta_split, device, **precision)
    step.item_groups = item_groups
    return step
