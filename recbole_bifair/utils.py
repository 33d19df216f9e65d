"""Name resolution for the plugin's models and trainers, plugin first, then RecBole
(the shape of RecBole-GNN's ``recbole_gnn.utils``)."""
import functools
import os

from recbole.utils import ModelType
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.files import properties_dir
from recbole_bifair.model.llm_enhanced import (
    FAMILY_PREFIXES,
    GROUP_FAIR_FAMILIES,
    build_llm_model,
    split_family_name,
)

_RECBOLE_MODEL_FAMILIES = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
]


@functools.lru_cache(maxsize=1)
def recbole_model_names():
    """Names of the models RecBole ships (read once): each has a YAML in
    ``recbole/properties/model`` and a module in one of ``recbole.model``'s families."""
    import recbole

    root = os.path.dirname(recbole.__file__)
    names = []
    for file_name in os.listdir(os.path.join(root, "properties", "model")):
        name = os.path.splitext(file_name)[0]
        if any(
            os.path.isfile(os.path.join(root, "model", family, name.lower() + ".py"))
            for family in _RECBOLE_MODEL_FAMILIES
        ):
            names.append(name)
    return tuple(sorted(names))


def _recbole_model_or_none(model_name):
    """RecBole's model class, or None where RecBole has no model of that name (RecBole's own
    lookup would end in an unrelated import error)."""
    if model_name not in recbole_model_names():
        return None
    return recbole_get_model(model_name)


def get_model(model_name):
    """The model class for ``model_name``: ``LLM<Backbone>`` / ``BiFair<Backbone>`` from the
    plugin, else RecBole's own model. An unknown name raises one BiFairInputError listing what exists."""
    family, backbone_name = split_family_name(model_name)
    if family is not None:
        backbone = _recbole_model_or_none(backbone_name)
        if backbone is not None:
            return build_llm_model(family, backbone)
    model = _recbole_model_or_none(model_name)
    if model is not None:
        return model
    known = recbole_model_names()
    raise BiFairInputError(
        f"Unknown model '{model_name}'. Use a RecBole model ({', '.join(known)}), "
        f"or one of them behind a plugin prefix ({', '.join(p + '<Model>' for p in FAMILY_PREFIXES)}), "
        "e.g. --model=BiFairSASRec or --model=LLMSASRec."
    )


def get_trainer(model_type, model_name):
    """The trainer class: ``BiFairTrainer`` for BiFair models, ``GroupFairTrainer`` for the
    fairness baselines, else the trainer RecBole would give the backbone, with the plugin's
    callbacks (``trainer.hooks.with_hooks``: a subclass of the same name)."""
    family, backbone_name = split_family_name(model_name)
    if family == "BiFair":
        from recbole_bifair.trainer import BiFairTrainer

        return BiFairTrainer
    if family in GROUP_FAIR_FAMILIES:
        from recbole_bifair.trainer import GroupFairTrainer

        return GroupFairTrainer
    from recbole_bifair.trainer.hooks import with_hooks

    return with_hooks(recbole_get_trainer(model_type, backbone_name))


__all__ = ["get_model", "get_trainer", "properties_dir", "recbole_model_names", "ModelType"]
