"""``BiFairTrainer``: the nested bi-level update of BiFair on top of ``GroupFairTrainer``'s
group-weighted inner level (see ``bilevel`` for the outer level, ``balancer`` for the weights).

Each training batch ``B_t``:
1. outer step, every ``outer_every`` batches (``bifair_outer``): ``E <- E - lr_out * dF/dE``
   with the look-ahead taken on the previous batch ``B_{t-1}`` and ``F`` measured on ``B_t``,
   which the inner level has not used yet;
2. inner step: ``theta <- theta - lr_in * grad_theta sum_g w_g L_g(E, theta; B_t)`` with the
   inner balancer's weights ``w`` (``inner_weighting: none`` is the ablation without them).
``E`` (the LLM tables) moves only in step 1, ``theta`` (projector + backbone) only in step 2.
Under DDP the hypergradient of ``E`` is averaged across ranks like ``theta``'s gradient, so
every rank holds the same ``E``.
"""
from torch.nn.utils import clip_grad_norm_

from recbole_bifair import distributed
from recbole_bifair.config_values import choice, number, positive_int
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.trainer.bilevel import HYPERGRADIENT_MODES, LookAheadObjective, outer_hypergradient
from recbole_bifair.trainer.group_fair_trainer import GroupFairTrainer


class BiFairTrainer(GroupFairTrainer):
    """Trains ``BiFair<Backbone>`` models."""

    def __init__(self, config, model):
        if not getattr(model, "bifair", False):
            raise BiFairInputError(
                f"BiFairTrainer trains BiFair<Backbone> models; got {type(model).__name__}. "
                f"Use --model=BiFair{type(model).__name__.replace('LLM', '', 1)}."
            )
        super().__init__(config, model)
        self.outer_enabled = bool(config["bifair_outer"])
        self.hypergradient = choice(config, "hypergradient", HYPERGRADIENT_MODES)
        self.outer_every = positive_int(config, "outer_every")
        self.lookahead_lr = number(config, "lookahead_lr", minimum=0.0, default=self.learning_rate)
        self.proximity_weight = number(config, "proximity_weight", minimum=0.0)
        self.outer_optimizer = self._build_optimizer(
            params=model.llm_parameters(),
            learner=config["outer_learner"],
            learning_rate=number(config, "outer_learning_rate", minimum=0.0, strictly_above=True),
            weight_decay=0.0,
        )
        self.outer_balancer = None
        self.objective = None

    def _set_up_groups(self, train_data):
        """Adds the outer balancer and the look-ahead objective to the inner level's set-up."""
        super()._set_up_groups(train_data)
        self.outer_balancer = self._build_balancer(self.config["outer_balancer"] or self.config["balancer"])
        llm_ids = {id(p) for p in self.model.llm_parameters()}
        named = list(self.model.named_parameters())
        self._inner_named = [(n, p) for n, p in named if id(p) not in llm_ids]
        self._llm_named = [(n, p) for n, p in named if id(p) in llm_ids]
        self.objective = LookAheadObjective(
            self.model,
            [n for n, _ in self._inner_named],
            [n for n, _ in self._llm_named],
            self._item_group,
            self.item_groups.n_groups,
            self.combine_losses,
        )
        shared_ids = {id(p) for p in self._mgda_shared_parameters()}
        self._shared_index = [i for i, (_, p) in enumerate(self._inner_named) if id(p) in shared_ids]

    def _before_inner_step(self, previous, interaction, epoch_idx, step):
        if self.outer_enabled and previous is not None and step % self.outer_every == 0:
            self._outer_step(previous, interaction, epoch_idx, step)

    def _outer_step(self, train_batch, meta_batch, epoch_idx, step):
        """One update of E on the fairness-aware look-ahead objective (``bilevel``)."""
        grads, objective = outer_hypergradient(
            self.objective,
            [p for _, p in self._inner_named],
            [p for _, p in self._llm_named],
            [layer.llm_weight_init for layer in self.model.llm_item_embeddings()],
            train_batch,
            meta_batch,
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
        distributed.average_gradients([p for _, p in self._llm_named])
        if self.clip_grad_norm:
            clip_grad_norm_(self.model.llm_parameters(), **self.clip_grad_norm)
        self.outer_optimizer.step()

    def _balancers(self, in_use_only=False):
        balancers = super()._balancers(in_use_only)
        if self.outer_balancer is not None and (self.outer_enabled or not in_use_only):
            balancers["outer"] = self.outer_balancer
        return balancers

    def _training_state(self):
        return {**super()._training_state(), "outer_optimizer": self.outer_optimizer.state_dict()}

    def _load_extra_state(self, state):
        if "outer_optimizer" in state:
            self.outer_optimizer.load_state_dict(state["outer_optimizer"])
