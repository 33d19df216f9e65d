"""``LLM<Backbone>`` and ``BiFair<Backbone>``: any general or sequential RecBole model with its
item table replaced by the LLM item-embedding layer
(``recbole_bifair.llm.layer.LLMItemEmbedding``).

One generic mechanism builds every such class from RecBole's model: the backbone is built as
usual (including its own ``self.apply(init)``), then its item table is swapped for the layer,
so RecBole's init never overwrites the LLM vectors.
- ``LLM<Backbone>``: the LLM-enhanced baseline; ``E`` frozen (``llm_freeze``), trained by
  RecBole's own trainer.
- ``BiFair<Backbone>``: ``E`` trainable, updated only by ``BiFairTrainer``'s outer level.
- ``IPS<Backbone>``, ``GroupDRO<Backbone>``, ``VarReg<Backbone>``: the fairness baselines, the
  LLM-enhanced baseline trained by ``GroupFairTrainer`` with inverse-propensity weights,
  GroupDRO weights or a group-loss variance penalty.
- ``LogitAdj<Backbone>``: the logit-adjustment baseline, the LLM-enhanced baseline trained by
  RecBole's trainer on scores plus ``logit_adjust_tau * log prior_i`` and ranked without it
  (``LogitAdjustedCrossEntropy``).
"""
import functools

import torch
from recbole.utils import ModelType
from torch import nn

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.llm.layer import DualView, LLMItemEmbedding, build_projector, pca_item_table, preprocess_llm_table
from recbole_bifair.llm.settings import LLMLayerSettings
from recbole_bifair.trainer.losses import masked_item_losses

FAMILY_PREFIXES = ("BiFair", "GroupDRO", "IPS", "VarReg", "LogitAdj", "LLM")
GROUP_FAIR_FAMILIES = ("BiFair", "GroupDRO", "IPS", "VarReg")

# The backbones every family is tested with (tests/test_backbones.py); their item tables are
# ``item_embedding`` or the ``llm_item_tables`` of ``properties/model/<Backbone>.yaml``.
TESTED_BACKBONES = (
    "SASRec", "GRU4Rec", "BERT4Rec", "NARM", "STAMP", "Caser", "NextItNet", "FPMC",
    "BPR", "LightGCN", "NeuMF",
)
# RecBole model types whose items are rows of an item table the LLM layer can replace.
LLM_MODEL_TYPES = (ModelType.GENERAL, ModelType.SEQUENTIAL)


def check_backbone(family, backbone):
    """One clear error for backbones the family cannot use: models that are not general or
    sequential recommenders (context-aware, knowledge-aware, ...). A backbone whose loss
    cannot be split per example fails at its first training step (``trainer.losses``)."""
    name = backbone.__name__
    if getattr(backbone, "type", None) not in LLM_MODEL_TYPES:
        kind = getattr(getattr(backbone, "type", None), "name", "unknown").lower()
        raise BiFairInputError(
            f"{family}{name}: {name} is a {kind} model; the LLM item-embedding layer replaces the "
            "item table of general and sequential recommenders only. Backbones that take it: "
            f"{', '.join(TESTED_BACKBONES)}."
        )


def split_family_name(model_name):
    """``"BiFairSASRec" -> ("BiFair", "SASRec")``; a name without a plugin prefix gives
    ``(None, model_name)``."""
    for prefix in FAMILY_PREFIXES:
        if model_name.startswith(prefix) and len(model_name) > len(prefix):
            return prefix, model_name[len(prefix):]
    return None, model_name


def item_table_names(model, config):
    """The attributes of ``model`` that hold its item table(s): ``llm_item_tables`` from
    config, else ``item_embedding``, else the one item-sized table :func:`item_tables_by_shape`
    finds (SimpleX's ``item_emb``)."""
    names = config["llm_item_tables"]
    if not names:
        names = ["item_embedding"] if isinstance(getattr(model, "item_embedding", None), nn.Embedding) else None
    if not names:
        names = item_tables_by_shape(model)
    for name in names:
        table = getattr(model, name, None)
        if not isinstance(table, nn.Embedding):
            raise BiFairInputError(
                f"{type(model).__name__}: backbone has no item table '{name}' (an nn.Embedding) "
                "to replace with the LLM layer; set llm_item_tables to the names of its item "
                "embedding attributes (in properties/model/<Backbone>.yaml or your config), "
                f"or use one of the backbones that take it: {', '.join(TESTED_BACKBONES)}."
            )
    return names


def item_tables_by_shape(model, extra_rows=(0, 1)):
    """``[name]`` of the backbone's one ``nn.Embedding`` attribute with an item table's shape:
    ``n_items`` rows plus ``extra_rows`` (BERT4Rec-style mask rows) and a width above 1 (so bias
    tables are not taken). None found, or several (a user table of the same size), is one
    clear error asking for ``llm_item_tables``."""
    found = [
        name for name, module in model.named_children()
        if isinstance(module, nn.Embedding) and module.embedding_dim > 1
        and module.num_embeddings - model.n_items in extra_rows
    ]
    if len(found) == 1:
        return found
    what = f"several tables of the item table's shape ({', '.join(found)})" if found else "no item_embedding table"
    raise BiFairInputError(
        f"{type(model).__name__}: backbone has {what}, so the LLM layer cannot tell which holds its "
        "items; set llm_item_tables to the names of its item embedding attributes (in "
        "properties/model/<Backbone>.yaml or your config)."
    )


def llm_item_embedding_for(table, llm_table, settings, freeze, item_counts=None):
    """The LLM layer (``settings``: ``llm.settings.LLMLayerSettings``) that replaces the
    ``nn.Embedding`` ``table``: same output width, same padding row, and trainable extra rows
    where the table has more rows than items. ``llm_table`` is preprocessed
    (``llm_preprocess``) here, so ``E`` and ``E0`` are the preprocessed table. ``item_counts``
    (training interactions per item) feed ``dual_fusion: popularity_gate``."""
    n_extra_rows = table.num_embeddings - llm_table.shape[0]
    if n_extra_rows < 0:
        raise BiFairInputError(
            f"The LLM table has {llm_table.shape[0]} rows but the backbone's item table only "
            f"{table.num_embeddings}: the embedding file does not match this dataset."
        )
    padding_idx = 0 if table.padding_idx is None else table.padding_idx
    raw_llm_table = llm_table
    llm_table = preprocess_llm_table(llm_table, settings.preprocess, padding_idx)
    projector = build_projector(
        llm_table.shape[1],
        table.embedding_dim,
        n_layers=settings.projector_layers,
        hidden_dim=settings.projector_hidden,
        activation=settings.projector_activation,
        dropout=settings.projector_dropout,
        residual=settings.projector_residual,
        input_dropout=settings.projector_input_dropout,
    )
    dual_view = None
    if settings.view == "dual":
        id_table = id_table_for(table, raw_llm_table, settings.dual_id_init, padding_idx)
        dual_view = DualView(id_table, settings.dual_fusion, item_counts)
    return LLMItemEmbedding(llm_table, projector, freeze=freeze, padding_idx=padding_idx,
                            n_extra_rows=n_extra_rows, dual_view=dual_view)


def id_table_for(table, llm_table, id_init, padding_idx):
    """The dual view's ID table: the backbone's own initialised item table (``random``), or the
    principal components of the LLM table as loaded (before ``llm_preprocess``: whitened
    vectors have no leading components) at the backbone's initial scale (``pca``)."""
    own = table.weight.detach()[: llm_table.shape[0]]
    if id_init == "random":
        return own.clone()
    return pca_item_table(llm_table, table.embedding_dim, float(own.std()), padding_idx)


class LLMEnhancedMixin:
    """What every LLM-enhanced model adds to its backbone."""

    bifair = False

    def _install_llm_item_embeddings(self, config, dataset):
        from recbole_bifair.llm import load_item_embeddings

        from recbole_bifair.evaluator.groups import training_item_counts

        settings = LLMLayerSettings.from_config(config)
        llm_table = load_item_embeddings(config, dataset)
        freeze = False if self.bifair else settings.freeze
        counts = training_item_counts(dataset) if settings.dual_fusion == "popularity_gate" else None
        for name in item_table_names(self, config):
            layer = llm_item_embedding_for(getattr(self, name), llm_table, settings, freeze, counts)
            setattr(self, name, layer)
        self._outer_llm_table = bool(config["outer_llm_table"]) if self.bifair else True

    def llm_item_embeddings(self):
        """The model's LLM layers (one per replaced item table)."""
        return [m for m in self.modules() if isinstance(m, LLMItemEmbedding)]

    def llm_parameters(self):
        """``E``: the LLM tables."""
        return [layer.llm_weight for layer in self.llm_item_embeddings()]

    def outer_parameters(self):
        """What BiFair's outer level updates: ``E`` (unless ``outer_llm_table: False``) and the
        popularity gates of the dual view (``dual_fusion: popularity_gate``); empty for the
        other families, whose gates are trained with ``theta``."""
        if not self.bifair:
            return []
        return (self.llm_parameters() if self._outer_llm_table else []) + self.gate_parameters()

    def gate_parameters(self):
        """The popularity gates' ``(a, b)`` of every LLM layer (``dual_fusion: popularity_gate``)."""
        return [p for layer in self.llm_item_embeddings() if layer.dual_view is not None
                for p in layer.dual_view.gate_parameters()]

    def outer_parameter_summary(self):
        """Where the outer level took its parameters: ``llm_table_shift``, ``||E - E0|| / ||E0||``
        over the LLM tables, and the popularity gates' learned ``[a, b]`` where there are any."""
        layers = self.llm_item_embeddings()
        with torch.no_grad():
            moved = sum(float((layer.llm_weight - layer.llm_weight_init).pow(2).sum()) for layer in layers)
            initial = sum(float(layer.llm_weight_init.pow(2).sum()) for layer in layers)
        summary = {"llm_table_shift": (moved / initial) ** 0.5 if initial else 0.0}
        gates = [[p.item() for p in layer.dual_view.gate_parameters()] for layer in layers
                 if layer.dual_view is not None and layer.dual_view.fusion == "popularity_gate"]
        if gates:
            summary["popularity_gate"] = gates
        return summary

    def inner_parameters(self):
        """``theta``: projector and backbone, everything but ``E`` and the outer parameters."""
        outer = {id(p) for p in self.llm_parameters() + self.outer_parameters()}
        return [p for p in self.parameters() if id(p) not in outer]


class LogitAdjustedCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy on ``logits + tau * log prior`` (logit adjustment, Menon et al., ICLR 2021;
    balanced softmax, Ren et al., NeurIPS 2020, at ``tau = 1``): training sees each item's score
    shifted by its log training share, ranking (which does not use the loss) sees the score
    alone, so popular items must earn their place without the prior. ``prior`` holds the
    training interaction count of each item column; items never seen in training (padding
    included) count as 1."""

    def __init__(self, item_counts, tau):
        super().__init__()
        counts = torch.as_tensor(item_counts, dtype=torch.float64).clamp(min=1)
        self.tau = float(tau)
        self.register_buffer("log_prior", (counts / counts.sum()).log().float())

    def forward(self, logits, target):
        return super().forward(logits + self.tau * self.log_prior[: logits.shape[-1]], target)


def install_logit_adjustment(model, config, dataset):
    """Replaces the backbone's cross-entropy module by :class:`LogitAdjustedCrossEntropy` with
    the items' training counts. One clear error for a backbone without a full-softmax loss
    module (``loss_type: BPR``, or a CE built inside ``calculate_loss`` as BERT4Rec's)."""
    from recbole_bifair.config_values import number
    from recbole_bifair.evaluator.groups import training_item_counts

    modules = [name for name, module in model.named_children() if isinstance(module, nn.CrossEntropyLoss)]
    if len(modules) != 1 or getattr(model, "loss_type", "CE") != "CE":
        raise BiFairInputError(
            f"{type(model).__name__}: logit adjustment shifts the scores of a full-softmax "
            "cross-entropy loss, and this backbone has none (set loss_type: CE, or use a backbone with a "
            "CrossEntropyLoss module such as SASRec, GRU4Rec, NARM, STAMP).")
    tau = number(config, "logit_adjust_tau", minimum=0.0)
    setattr(model, modules[0], LogitAdjustedCrossEntropy(training_item_counts(dataset), tau))


def own_example_losses(backbone):
    """How to split ``backbone``'s loss into examples when they are not its training rows
    (``trainer.losses.example_losses``): BERT4Rec's examples are its masked positions."""
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec

    return masked_item_losses if issubclass(backbone, BERT4Rec) else None


@functools.lru_cache(maxsize=None)
def build_llm_model(family, backbone):
    """The class ``<family><Backbone>`` built from RecBole model class ``backbone``."""
    check_backbone(family, backbone)

    def __init__(self, config, dataset):
        backbone.__init__(self, config, dataset)
        self._install_llm_item_embeddings(config, dataset)
        if family == "LogitAdj":
            install_logit_adjustment(self, config, dataset)

    doc = f"{backbone.__name__} with its item table replaced by the LLM item-embedding layer ({family} family)."
    members = {"__init__": __init__, "__doc__": doc, "bifair": family == "BiFair", "__module__": __name__}
    if own_example_losses(backbone) is not None:
        members["calculate_example_losses"] = own_example_losses(backbone)
    return type(family + backbone.__name__, (LLMEnhancedMixin, backbone), members)


def __getattr__(name):
    """Lets pickle find built classes by name (RecBole's checkpoints pickle the Config,
    which holds the model class)."""
    family, backbone_name = split_family_name(name)
    if family is None:
        raise AttributeError(name)
    from recbole.utils import get_model as recbole_get_model

    return build_llm_model(family, recbole_get_model(backbone_name))
