"""Typed settings of the LLM item-embedding layer (``properties/llm.yaml``), each value checked
once: the plugin's ``Config`` builds them when it is made, so a bad value stops a run before
any data is read, and the models build their layers from them."""
from dataclasses import dataclass
from typing import Optional

from recbole_bifair.config_values import choice, flag
from recbole_bifair.llm.layer import DUAL_FUSIONS, ID_INITS, LLM_PREPROCESSING, LLM_VIEWS, check_projector


@dataclass(frozen=True)
class LLMLayerSettings:
    """How the LLM table is preprocessed and projected, and the dual view."""

    preprocess: str
    view: str
    dual_fusion: str
    dual_id_init: str
    freeze: bool
    projector_layers: int
    projector_hidden: Optional[int]
    projector_activation: str
    projector_dropout: float
    projector_input_dropout: float
    projector_residual: bool

    def __post_init__(self):
        check_projector(self.projector_layers, self.projector_hidden, self.projector_activation,
                        self.projector_dropout, self.projector_input_dropout)

    @classmethod
    def from_config(cls, config):
        return cls(
            preprocess=choice(config, "llm_preprocess", LLM_PREPROCESSING),
            view=choice(config, "llm_view", LLM_VIEWS),
            dual_fusion=choice(config, "dual_fusion", DUAL_FUSIONS),
            dual_id_init=choice(config, "dual_id_init", ID_INITS),
            freeze=flag(config, "llm_freeze"),
            projector_layers=config["projector_layers"],
            projector_hidden=config["projector_hidden"],
            projector_activation=config["projector_activation"],
            projector_dropout=config["projector_dropout"],
            projector_input_dropout=config["projector_input_dropout"],
            projector_residual=flag(config, "projector_residual"),
        )
