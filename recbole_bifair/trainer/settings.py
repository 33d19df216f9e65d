"""Typed settings of the group-aware training (``properties/model/GroupFair.yaml``) and of
BiFair's outer level (``properties/model/BiFair.yaml``), each value checked once.

The plugin's ``Config`` builds them when it is made (``config.check_plugin_settings``), so
a bad value stops a run before any data is loaded; the trainers build them again from the same
config and read their settings from them only. The defaults are those YAML files' and nowhere
else: :class:`HypergradientSettings`, which tests and tools also build by hand, reads its
defaults from ``properties/model/BiFair.yaml``.
"""
from dataclasses import dataclass, field
from typing import Optional, Tuple

from recbole_bifair.config_values import choice, flag, non_negative_int, number, positive_int
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.files import read_properties

HYPERGRADIENT_MODES = ("first_order", "finite_difference", "exact", "implicit")
LOOKAHEAD_UPDATES = ("sgd", "optimizer")
LOOKAHEAD_LEARNERS = ("adam", "adamw", "sgd")  # the inner optimisers whose rule lookahead_update can follow
IMPLICIT_SOLVERS = ("neumann", "cg")


def _bifair_default(key, kind=None):
    """A field default read from ``properties/model/BiFair.yaml`` when a settings object is made."""

    def default():
        value = read_properties("model", "BiFair.yaml")[key]
        return value if kind is None or value is None else kind(value)

    return field(default_factory=default)


@dataclass
class HypergradientSettings:
    """How the outer level differentiates through the inner one (``trainer.bilevel``). Each
    field is the BiFair.yaml key named beside it, with that file's default."""

    mode: str = _bifair_default("hypergradient")                 # hypergradient
    xi: float = _bifair_default("lookahead_lr", float)            # lookahead_lr
    beta: float = _bifair_default("proximity_weight", float)      # proximity_weight
    steps: int = _bifair_default("lookahead_steps")               # lookahead_steps
    update: str = _bifair_default("lookahead_update")             # lookahead_update
    truncate: Optional[int] = _bifair_default("lookahead_truncate")  # lookahead_truncate
    implicit_steps: int = _bifair_default("implicit_steps")       # implicit_steps
    implicit_lr: float = _bifair_default("implicit_lr", float)    # implicit_lr
    implicit_solver: str = _bifair_default("implicit_solver")     # implicit_solver
    implicit_damping: float = _bifair_default("implicit_damping", float)  # implicit_damping

    def __post_init__(self):
        if self.mode not in HYPERGRADIENT_MODES:
            raise ValueError(f"hypergradient must be one of {HYPERGRADIENT_MODES}, got {self.mode!r}")
        if self.update not in LOOKAHEAD_UPDATES:
            raise ValueError(f"lookahead_update must be one of {LOOKAHEAD_UPDATES}, got {self.update!r}")
        if self.implicit_solver not in IMPLICIT_SOLVERS:
            raise ValueError(f"implicit_solver must be one of {IMPLICIT_SOLVERS}, got {self.implicit_solver!r}")
        if self.mode == "finite_difference" and (self.steps != 1 or self.update != "sgd"):
            raise ValueError("hypergradient finite_difference takes one SGD look-ahead step: "
                             "set lookahead_steps: 1 and lookahead_update: sgd, or use exact.")

    @property
    def lookahead_is_identity(self):
        """An SGD look-ahead with ``xi = 0`` leaves ``theta`` where it is: ``theta_k = theta``,
        and the second-order part is 0 (the alternating scheme), so neither is computed."""
        return self.mode != "implicit" and self.update == "sgd" and self.xi == 0


STRATEGIES = ("softmax", "mgda", "dro", "uniform", "inverse_frequency", "fixed", "learned")
INNER_WEIGHTINGS = ("group", "item_ips", "none")
LLM_UPDATES = ("outer", "joint")
META_SPLITS = ("last_train_item",)


@dataclass(frozen=True)
class BalancerSettings:
    """A balancer strategy (``trainer.balancer``) and its parameters."""

    strategy: str
    temperature: float
    contrast: Optional[float]
    ema_decay: float
    mgda_entropy_weight: float
    dro_step_size: float
    fixed_group_weights: Optional[Tuple[float, ...]]
    learned_weight_learning_rate: float

    @classmethod
    def from_config(cls, config, strategy):
        if strategy not in STRATEGIES:
            raise BiFairInputError(f"Unknown balancer '{strategy}'; choose one of {', '.join(STRATEGIES)}.")
        ema_decay = number(config, "balancer_ema_decay", minimum=0.0)
        if ema_decay >= 1:
            raise BiFairInputError(f"balancer_ema_decay must be in [0, 1), got {ema_decay!r}.")
        return cls(
            strategy=strategy,
            temperature=number(config, "balancer_temperature", minimum=0.0, strictly_above=True),
            contrast=(None if config["balancer_contrast"] is None
                      else number(config, "balancer_contrast", minimum=0.0, strictly_above=True)),
            ema_decay=ema_decay,
            mgda_entropy_weight=number(config, "mgda_entropy_weight", minimum=0.0),
            dro_step_size=number(config, "dro_step_size", minimum=0.0, strictly_above=True),
            fixed_group_weights=fixed_group_weights(config) if strategy == "fixed" else None,
            learned_weight_learning_rate=number(config, "learned_weight_learning_rate", minimum=0.0,
                                                strictly_above=True),
        )


def fixed_group_weights(config):
    """``fixed_group_weights``: non-negative numbers, not all 0 (their count is checked against
    the item groups when they are built)."""
    weights = config["fixed_group_weights"]
    if (not isinstance(weights, (list, tuple)) or not weights
            or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights)
            or sum(weights) <= 0):
        raise BiFairInputError(
            f"balancer 'fixed' needs fixed_group_weights: non-negative numbers, one per item group "
            f"(not all 0), got {weights!r}.")
    return tuple(float(w) for w in weights)


@dataclass(frozen=True)
class GroupFairSettings:
    """The inner level's loss: how examples are weighted, and the spread penalty."""

    inner_weighting: str
    balancer: BalancerSettings
    ips_power: float
    loss_spread_weight: float

    @classmethod
    def from_config(cls, config):
        return cls(
            inner_weighting=choice(config, "inner_weighting", INNER_WEIGHTINGS),
            balancer=BalancerSettings.from_config(config, config["balancer"]),
            ips_power=number(config, "ips_power", minimum=0.0),
            loss_spread_weight=number(config, "loss_spread_weight", minimum=0.0),
        )


@dataclass(frozen=True)
class OuterLevelSettings:
    """BiFair's outer level: whether and where E is updated, how often, by which optimiser,
    with which group weights and which hypergradient."""

    inner_strategy: str
    enabled: bool
    llm_update: str
    every: int
    learner: str
    learning_rate: float
    balancer: BalancerSettings
    diagnostic_every: int
    hypergradient: HypergradientSettings
    prior_weight: float
    prior_temperature: float
    prior_balancer: Optional[BalancerSettings]
    meta_split: Optional[str]
    llm_table: bool
    gate_learning_rate: Optional[float]

    @property
    def takes_outer_steps(self):
        """E is updated by the outer level's steps (not off, not the joint control)."""
        return self.enabled and self.llm_update == "outer"

    @property
    def trains_jointly(self):
        """The joint control: E takes the inner loss's gradient in the inner step."""
        return self.enabled and self.llm_update == "joint"

    @property
    def learns_group_weights(self):
        """The inner level's group weights are outer variables (``balancer: learned``)."""
        return self.takes_outer_steps and self.inner_strategy == "learned"

    @classmethod
    def from_config(cls, config):
        settings = cls._from_config(config)
        if settings.inner_strategy == "learned":
            check_learned_weights(settings)
        return settings

    @classmethod
    def _from_config(cls, config):
        outer_strategy = config["outer_balancer"] or (
            "uniform" if config["balancer"] == "learned" else config["balancer"])
        return cls(
            inner_strategy=config["balancer"],
            enabled=flag(config, "bifair_outer"),
            llm_update=choice(config, "llm_update", LLM_UPDATES),
            every=positive_int(config, "outer_every"),
            learner=config["outer_learner"],
            learning_rate=number(config, "outer_learning_rate", minimum=0.0, strictly_above=True),
            balancer=BalancerSettings.from_config(config, outer_strategy),
            diagnostic_every=non_negative_int(config, "hypergradient_diagnostic_every"),
            hypergradient=hypergradient_settings(config),
            prior_weight=number(config, "outer_prior_weight", minimum=0.0),
            prior_temperature=number(config, "outer_prior_temperature", minimum=0.0, strictly_above=True),
            prior_balancer=(None if config["outer_prior_balancer"] is None
                            else BalancerSettings.from_config(config, config["outer_prior_balancer"])),
            meta_split=None if config["meta_split"] is None else choice(config, "meta_split", META_SPLITS),
            llm_table=flag(config, "outer_llm_table"),
            gate_learning_rate=(None if config["outer_gate_learning_rate"] is None
                                else number(config, "outer_gate_learning_rate", minimum=0.0, strictly_above=True)),
        )


def check_learned_weights(settings):
    """``balancer: learned`` needs outer steps and a meta split to learn from, and an outer
    objective that is not itself learned."""
    if not settings.takes_outer_steps or settings.meta_split is None:
        raise BiFairInputError(
            "balancer: learned makes the inner group weights outer variables, learned on the meta split: "
            "set bifair_outer: True, llm_update: outer and meta_split: last_train_item, or choose another balancer.")
    if settings.balancer.strategy == "learned":
        raise BiFairInputError(
            "outer_balancer: learned is not a strategy of the outer objective; use uniform (balanced group "
            "utility, the default with balancer: learned), softmax or another strategy.")


def refuse_learned_weights_outside_bifair(config):
    """The fairness baselines have no outer level to learn ``balancer: learned``'s weights."""
    if config["balancer"] == "learned":
        raise BiFairInputError(
            "balancer: learned is learned by BiFair's outer level; use a BiFair<Backbone> model, "
            f"or another balancer ({', '.join(s for s in STRATEGIES if s != 'learned')}).")


def hypergradient_settings(config):
    """:class:`HypergradientSettings` from the config, each bad value one clear error
    (``lookahead_lr: ~`` is the inner ``learning_rate``)."""
    truncate = config["lookahead_truncate"]
    update = choice(config, "lookahead_update", LOOKAHEAD_UPDATES)
    learner = str(config["learner"]).lower()
    if update == "optimizer" and learner not in LOOKAHEAD_LEARNERS:
        raise BiFairInputError(
            f"lookahead_update: optimizer follows the inner optimiser's rule, known for "
            f"{', '.join(LOOKAHEAD_LEARNERS)}; learner is {config['learner']!r}: use lookahead_update: sgd, "
            "or one of those learners.")
    settings = dict(
        mode=choice(config, "hypergradient", HYPERGRADIENT_MODES),
        xi=number(config, "lookahead_lr", minimum=0.0, default=config["learning_rate"]),
        beta=number(config, "proximity_weight", minimum=0.0),
        steps=positive_int(config, "lookahead_steps"),
        update=update,
        truncate=None if truncate is None else positive_int(config, "lookahead_truncate"),
        implicit_steps=positive_int(config, "implicit_steps"),
        implicit_lr=number(config, "implicit_lr", minimum=0.0, strictly_above=True),
        implicit_solver=choice(config, "implicit_solver", IMPLICIT_SOLVERS),
        implicit_damping=number(config, "implicit_damping", minimum=0.0),
    )
    try:
        return HypergradientSettings(**settings)
    except ValueError as error:
        raise BiFairInputError(str(error)) from None
