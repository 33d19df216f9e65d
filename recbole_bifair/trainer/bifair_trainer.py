"""``BiFairTrainer``: ``GroupFairTrainer`` with BiFair's outer level, the nested bi-level update
of ``trainer.step`` (the schedule and both updates), ``trainer.bilevel`` (the hypergradient)
and ``trainer.losses`` (the inner loss both levels use). The trainer builds the outer
optimiser, logs the hypergradient diagnostic and checkpoints the outer optimiser's state.
"""
from recbole.utils import set_color

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.trainer.group_fair_trainer import GroupFairTrainer
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
        self.outer_optimizer = None  # the outer level may learn the group weights only
        if model.outer_parameters():
            self.outer_optimizer = self._build_optimizer(
                params=self._outer_parameter_groups(model),
                learner=self.outer.learner,
                learning_rate=self.outer.learning_rate,
                weight_decay=0.0,
            )
        elif not self.outer.learns_group_weights:
            raise BiFairInputError(
                "outer_llm_table is False and the model has no popularity gate: BiFair's outer level has "
                "nothing to update. Set outer_llm_table: True, dual_fusion: popularity_gate, or balancer: learned.")

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

    def _outer_level(self):
        return {"outer_optimizer": self.outer_optimizer, "logger": self.logger}

    @property
    def diagnostics(self):
        """Per epoch: the mean second-order share of the hypergradient and its cosine to the
        direct part."""
        return [] if self.training_step is None else self.training_step.diagnostics

    def _log_epoch(self, epoch_idx):
        super()._log_epoch(epoch_idx)
        entry = self.training_step.end_epoch()
        if entry is None:
            return
        self.logger.info(
            set_color("hypergradient", "blue") + f" epoch {epoch_idx}: second-order share "
            f"{entry['second_order_share']:.4g}, cosine to the direct part {entry['cosine_to_direct']:.4f} "
            f"(mean of {entry['outer_steps']} outer steps)"
        )
        self.tensorboard.add_scalar("Hypergradient/second_order_share", entry["second_order_share"], epoch_idx)

    def _training_state(self):
        state = super()._training_state()
        if self.outer_optimizer is not None:
            state["outer_optimizer"] = self.outer_optimizer.state_dict()
        return state

    def resume_checkpoint(self, resume_file):
        super().resume_checkpoint(resume_file)
        state = self._resumed_state or {}
        if "outer_optimizer" in state and self.outer_optimizer is not None:
            self.outer_optimizer.load_state_dict(state["outer_optimizer"])
