"""``BiFairTrainer``: the nested bi-level update of BiFair on top of ``GroupFairTrainer``'s
group-weighted inner level (see ``bilevel`` for the outer level, ``balancer`` for the weights).

Each training batch ``B_t``:
1. outer step, every ``outer_every`` batches (``bifair_outer``): ``E <- E - lr_out * dF/dE``
   with the look-ahead taken on the previous batch ``B_{t-1}`` and ``F`` measured on ``B_t``,
   which the inner level has not used yet, or (``meta_split: last_train_item``) on the next
   batch of the meta split, each user's last training example, which the inner level never
   trains on (``trainer.meta_split``);
2. inner step: ``theta <- theta - lr_in * grad_theta sum_g w_g L_g(E, theta; B_t)`` with the
   inner balancer's weights ``w`` (``inner_weighting: none`` is the ablation without them).
``E`` (the LLM tables) moves only in step 1, ``theta`` (projector + backbone) only in step 2.
Under DDP the hypergradient of ``E`` is averaged across ranks like ``theta``'s gradient, so
every rank holds the same ``E``.
"""
import copy
import time
from dataclasses import replace

from recbole.utils import set_color
from torch.nn.utils import clip_grad_norm_

from recbole_bifair import distributed
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.evaluator.prior import PriorLoss
from recbole_bifair.trainer.bilevel import LookAheadObjective, OuterProblem, PriorTerm, outer_hypergradient
from recbole_bifair.trainer.group_fair_trainer import GroupFairTrainer
from recbole_bifair.trainer.meta_split import MetaSplit
from recbole_bifair.trainer.resume import capture_random_state, restore_random_state
from recbole_bifair.trainer.settings import OuterLevelSettings


class BiFairTrainer(GroupFairTrainer):
    """Trains ``BiFair<Backbone>`` models."""

    def __init__(self, config, model):
        if not getattr(model, "bifair", False):
            raise BiFairInputError(
                f"BiFairTrainer trains BiFair<Backbone> models; got {type(model).__name__}. "
                f"Use --model=BiFair{type(model).__name__.replace('LLM', '', 1)}."
            )
        super().__init__(config, model)
        self.outer = OuterLevelSettings.from_config(config)
        self.hypergradient = self.outer.hypergradient
        self.diagnostics = []
        self._epoch_diagnostics = []
        self._outer_steps = 0
        if not model.outer_parameters():
            raise BiFairInputError(
                "outer_llm_table is False and the model has no popularity gate: BiFair's outer level has "
                "nothing to update. Set outer_llm_table: True, or dual_fusion: popularity_gate.")
        self.outer_optimizer = self._build_optimizer(
            params=self._outer_parameter_groups(model),
            learner=self.outer.learner,
            learning_rate=self.outer.learning_rate,
            weight_decay=0.0,
        )
        self.outer_balancer = None
        self.objective = None
        self.prior_term = None
        self.meta_split = None
        self._resumed_meta_state = None

    def _outer_parameter_groups(self, model):
        """The outer optimiser's parameter groups: the LLM tables at ``outer_learning_rate``, the
        popularity gates at ``outer_gate_learning_rate`` (two scalars need larger steps than
        a table's entries)."""
        gate_ids = {id(p) for p in model.gate_parameters()}
        tables = [p for p in model.outer_parameters() if id(p) not in gate_ids]
        gates = [p for p in model.outer_parameters() if id(p) in gate_ids]
        groups = [{"params": tables}] if tables else []
        if gates:
            groups.append({"params": gates, "lr": self.outer.gate_learning_rate or self.outer.learning_rate})
        return groups

    def _set_up_groups(self, train_data):
        """Adds the outer balancer and the look-ahead objective to the inner level's set-up."""
        super()._set_up_groups(train_data)
        self.outer_balancer = self._build_balancer(self.outer.balancer)
        inner_ids = {id(p) for p in self.model.inner_parameters()}
        outer_ids = {id(p) for p in self.model.outer_parameters()}
        named = list(self.model.named_parameters())
        self._inner_named = [(n, p) for n, p in named if id(p) in inner_ids]
        self._outer_named = [(n, p) for n, p in named if id(p) in outer_ids]
        table_init = {id(layer.llm_weight): layer.llm_weight_init for layer in self.model.llm_item_embeddings()}
        self._outer_init = [table_init.get(id(p)) for _, p in self._outer_named]
        self.objective = LookAheadObjective(
            self.model,
            [n for n, _ in self._inner_named],
            [n for n, _ in self._outer_named],
            self._item_group,
            self.item_groups.n_groups,
            self.combine_losses,
        )
        shared_ids = {id(p) for p in self._mgda_shared_parameters()}
        self._shared_index = [i for i, (_, p) in enumerate(self._inner_named) if id(p) in shared_ids]
        self.prior_term = self._build_prior_term(train_data)
        if self.outer.meta_split and self.outer.takes_outer_steps:
            self.meta_split = MetaSplit(train_data, self.config["train_batch_size"], self.config["seed"], self.device)
            self.logger.info(f"meta split: {len(self.meta_split)} held-out training examples (each user's last) "
                             "for the outer objective; the inner level trains without them")
            if self._resumed_meta_state is not None:
                self.meta_split.load_state_dict(self._resumed_meta_state)

    def _build_prior_term(self, train_data):
        """F's prior-unfairness term (``outer_prior_weight`` > 0), else None."""
        if not self.outer.prior_weight:
            return None
        loss = PriorLoss(self.config, self.outer.prior_temperature, train_data._dataset)
        balancer = None if self.outer.prior_balancer is None else self._build_balancer(self.outer.prior_balancer)
        return PriorTerm(loss, self.outer.prior_weight, self._item_group, self.item_groups.n_groups, balancer)

    def _training_rows(self, interaction):
        return interaction if self.meta_split is None else self.meta_split.training_rows(interaction)

    def _before_inner_step(self, previous, interaction, epoch_idx, step):
        if self.outer.takes_outer_steps and previous is not None and step % self.outer.every == 0:
            meta_batch = interaction if self.meta_split is None else self.meta_split.next_batch().to(self.device)
            self._outer_step(previous, meta_batch, epoch_idx, step)

    def _outer_step(self, lookahead_batch, meta_batch, epoch_idx, step):
        """One update of E: its hypergradient (``bilevel.outer_hypergradient``: look-ahead, group
        losses on the meta batch, outer balancer, ``F`` and its hypergradient), the diagnostic,
        then the outer optimiser's step."""
        due = (self.hypergradient.mode == "first_order" and self.outer.diagnostic_every
               and self._outer_steps % self.outer.diagnostic_every == 0)
        weights_before = self._group_weighting_copy() if due else None  # as this step sees it
        result = self._hypergradient(lookahead_batch, meta_batch, self.hypergradient, self.outer_balancer, self.prior_term)
        self._check_finite(result.value, "outer", epoch_idx, step)
        self._record_diagnostic(result, lookahead_batch, meta_batch, weights_before)
        self._outer_steps += 1
        self._apply_to_llm_tables(result.grads)

    def _group_weighting_copy(self):
        """Copies of what an outer step updates besides E, the outer balancer and the prior
        term's balancer, for a hypergradient that must not change training."""
        prior = self.prior_term
        if prior is not None and prior.balancer is not None:
            prior = replace(prior, balancer=copy.deepcopy(prior.balancer))
        return copy.deepcopy(self.outer_balancer), prior

    def _hypergradient(self, lookahead_batch, meta_batch, settings, outer_balancer, prior_term):
        problem = OuterProblem(
            objective=self.objective,
            theta=[p for _, p in self._inner_named],
            llm=[p for _, p in self._outer_named],
            llm_init=self._outer_init,
            balancer=outer_balancer,
            settings=settings,
            optimizer=self.optimizer,
            shared=tuple(self._shared_index),
            prior=prior_term,
        )
        return outer_hypergradient(problem, lookahead_batch=lookahead_batch, meta_batch=meta_batch)

    def _record_diagnostic(self, result, lookahead_batch, meta_batch, weights_before=None):
        """The second-order share of this step's hypergradient; a ``first_order`` run computes
        the ``exact`` one's split every ``hypergradient_diagnostic_every`` outer steps, on
        ``weights_before``, copies of the balancers taken before this step updated them
        (so both see the same group weights), without using it."""
        if result.second_order is None:
            if weights_before is None:
                return
            settings = replace(self.hypergradient, mode="exact")
            training_random_state = capture_random_state()  # the diagnostic must not change training
            result = self._hypergradient(lookahead_batch, meta_batch, settings, *weights_before)
            restore_random_state(training_random_state)
        self._epoch_diagnostics.append((result.second_order_share(), result.cosine_to_direct()))

    def _apply_to_llm_tables(self, grads):
        self.outer_optimizer.zero_grad()
        for (_, param), grad in zip(self._outer_named, grads):
            param.grad = grad
        distributed.average_gradients([p for _, p in self._outer_named])
        if self.clip_grad_norm:
            clip_grad_norm_(self.model.outer_parameters(), **self.clip_grad_norm)
        self.outer_optimizer.step()

    def _inner_step(self, interaction, epoch_idx, step):
        """The inner step; with ``llm_update: joint`` (a single-level control) E also takes the
        inner loss's gradient there, with the outer optimiser, and there is no outer step
        (``bifair_outer: False`` keeps E fixed in both schemes)."""
        if not self.outer.trains_jointly:
            return super()._inner_step(interaction, epoch_idx, step)
        self.outer_optimizer.zero_grad()
        self.optimizer.zero_grad()
        loss = self._inner_loss(interaction)
        self._check_finite(loss, "inner", epoch_idx, step)
        loss.backward()
        for params, optimizer in ((self.model.inner_parameters(), self.optimizer),
                                  (self.model.outer_parameters(), self.outer_optimizer)):
            distributed.average_gradients(params)
            if self.clip_grad_norm:
                clip_grad_norm_(params, **self.clip_grad_norm)
            optimizer.step()
        return loss.item()

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._epoch_diagnostics = []
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self._log_diagnostics(epoch_idx)
        return loss

    def _log_diagnostics(self, epoch_idx):
        """Logs and keeps the epoch's mean second-order share and cosine (``diagnostics``)."""
        if not self._epoch_diagnostics:
            return
        shares, cosines = zip(*self._epoch_diagnostics)
        entry = {"epoch": epoch_idx, "second_order_share": sum(shares) / len(shares),
                 "cosine_to_direct": sum(cosines) / len(cosines), "outer_steps": len(shares)}
        self.diagnostics.append(entry)
        self.logger.info(
            set_color("hypergradient", "blue") + f" epoch {epoch_idx}: second-order share "
            f"{entry['second_order_share']:.4g}, cosine to the direct part {entry['cosine_to_direct']:.4f} "
            f"(mean of {entry['outer_steps']} outer steps)"
        )
        self.tensorboard.add_scalar("Hypergradient/second_order_share", entry["second_order_share"], epoch_idx)

    def _balancers(self, in_use_only=False):
        balancers = super()._balancers(in_use_only)
        outer_in_use = self.outer.takes_outer_steps
        if self.outer_balancer is not None and (outer_in_use or not in_use_only):
            balancers["outer"] = self.outer_balancer
        if self.prior_term is not None and self.prior_term.balancer is not None and (outer_in_use or not in_use_only):
            balancers["prior"] = self.prior_term.balancer
        return balancers

    def _training_state(self):
        state = {**super()._training_state(), "outer_optimizer": self.outer_optimizer.state_dict(),
                 "outer_steps": self._outer_steps}
        if self.meta_split is not None:
            state["meta_split"] = self.meta_split.state_dict()
        return state

    def _load_extra_state(self, state):
        if "outer_optimizer" in state:
            self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self._outer_steps = state.get("outer_steps", 0)
        self._resumed_meta_state = state.get("meta_split")


def hypergradient_diagnostic(model_file, n_batches=8, hypergradient="exact", **settings):
    """The second-order share of BiFair's hypergradient for a saved ``BiFair<Backbone>``
    checkpoint, without training: the mean over ``n_batches`` consecutive pairs of training
    batches (look-ahead batch, meta batch) of ``||second-order part|| / ||direct part||``, the
    cosine between the full hypergradient and its direct part, and the seconds one
    hypergradient took, for ``hypergradient`` (``exact``, ``implicit`` or ``finite_difference``)
    and any other setting of ``HypergradientSettings`` (``steps``, ``update``, ...). The inner
    optimiser's state is the checkpoint's; the balancers start fresh (uniform-like weights). A
    checkpoint trained without a look-ahead (``lookahead_lr: 0``) is measured with one SGD step of
    its ``learning_rate``: the share a look-ahead would add there."""
    import torch

    from recbole_bifair.quick_start import load_data_and_model

    if hypergradient == "first_order":
        raise BiFairInputError("first_order has no second-order part to measure; use exact, implicit or finite_difference.")
    config, model, _, train_data, _, _ = load_data_and_model(model_file)
    trainer = BiFairTrainer(config, model)
    trainer._set_up_groups(train_data)
    checkpoint = torch.load(model_file, map_location=trainer.device, weights_only=False)
    if "optimizer" in checkpoint:  # lookahead_update: optimizer follows the trained Adam state
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    settings = replace(trainer.hypergradient, mode=hypergradient, **settings)
    if settings.lookahead_is_identity:
        settings = replace(settings, xi=config["learning_rate"])
    model.train()
    shares, cosines, previous, seconds = [], [], None, 0.0
    for batch in train_data:
        batch = batch.to(trainer.device)
        if previous is not None:
            started = time.perf_counter()
            result = trainer._hypergradient(previous, batch, settings, *trainer._group_weighting_copy())
            seconds += time.perf_counter() - started
            shares.append(result.second_order_share())
            cosines.append(result.cosine_to_direct())
        if len(shares) >= n_batches:
            break
        previous = batch
    if not shares:
        raise BiFairInputError(f"{model_file}: the training split has fewer than 2 batches; nothing to measure.")
    return {"second_order_share": float(torch.tensor(shares).mean()),
            "cosine_to_direct": float(torch.tensor(cosines).mean()), "batches": len(shares),
            "hypergradient": settings.mode, "seconds_per_hypergradient": seconds / len(shares)}
