"""Any RecBole backbone behind the plugin's families: LLM<Backbone> and BiFair<Backbone> for the
sequential and general backbones of the README's table, each trained one short epoch and
evaluated with the fairness metrics; the per-backbone item tables, per-example losses,
checkpoints, and one clear error for backbones that cannot take the layer."""
import math
import pickle

import pytest
import torch

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.llm.layer import LLMItemEmbedding
from recbole_bifair.model.llm_enhanced import TESTED_BACKBONES
from recbole_bifair.trainer.losses import example_losses
from recbole_bifair.utils import get_model

# Tiny sizes on top of conftest's (hidden/embedding 16, 1 layer): NeuMF's widths, short
# sequences, one NextItNet block, few Caser filters.
SMALL = dict(
    mf_embedding_size=16, mlp_embedding_size=16, mlp_hidden_size=[16], n_layers=1,
    MAX_ITEM_LIST_LENGTH=5, block_num=1, nh=2, nv=2,
)

# The attributes that hold each backbone's item tables (its properties/model/<Backbone>.yaml).
ITEM_TABLES = {"FPMC": ["IU_emb", "LI_emb", "IL_emb"], "NeuMF": ["item_mf_embedding", "item_mlp_embedding"]}
GENERAL = {"BPR", "LightGCN", "NeuMF"}
CHECKPOINTED = {"LLMBPR", "BiFairGRU4Rec"}  # one general and one sequential model, saved=True

CASES = [
    pytest.param(family, backbone, id=family + backbone)
    for backbone in TESTED_BACKBONES
    for family in ("LLM", "BiFair")
]


def _llm_tables(model):
    return [layer.llm_weight.detach().clone() for layer in model.llm_item_embeddings()]


@pytest.mark.parametrize("family, backbone", CASES)
def test_backbone_trains_and_is_evaluated_with_fairness_metrics(tiny, family, backbone):
    name = family + backbone
    config, train_data, valid_data, test_data, model, trainer = tiny(model=name, **SMALL)
    assert type(model).__name__ == name
    for table in ITEM_TABLES.get(backbone, ["item_embedding"]):
        assert isinstance(getattr(model, table), LLMItemEmbedding), table
    if backbone in GENERAL:
        assert config["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]}
    before = _llm_tables(model)

    saved = name in CHECKPOINTED
    _, valid_result = trainer.fit(train_data, valid_data, saved=saved)
    test_result = trainer.evaluate(test_data, load_best_model=saved)

    for result in (valid_result, test_result):
        for metric in ("ndcg@10", "groupndcg@10_g0", "ndcggap@10", "exposuredisparity@10"):
            assert math.isfinite(result[metric]), (metric, result)
    moved = [not torch.equal(b, a) for b, a in zip(before, _llm_tables(model))]
    # E: frozen in LLM<Backbone>; moved by BiFair's outer level (one step every 4 batches).
    assert any(moved) if family == "BiFair" else not any(moved)
    if saved:
        _check_checkpoint(trainer.saved_model_file, model)


def _check_checkpoint(model_file, model):
    """The checkpoint pickles the Config with the built class: the module's ``__getattr__``
    finds it by name, and the reloaded model has the trained weights."""
    from recbole_bifair.quick_start import load_data_and_model

    checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    assert checkpoint["config"]["model"] == type(model).__name__
    assert pickle.loads(pickle.dumps(type(model))) is type(model)
    _, loaded, *_ = load_data_and_model(model_file)
    assert type(loaded) is type(model)
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value.cpu(), expected[key].cpu()), key


# ----- BERT4Rec: the mask row, and one example per masked position ------------------------------
def test_bert4rec_mask_row_is_a_trainable_extra_row(tiny):
    config, train_data, *_, model, _ = tiny(model="LLMBERT4Rec", **SMALL)
    layer = model.item_embedding
    assert layer.num_embeddings == model.n_items + 1 == layer.n_llm_rows + 1
    assert layer.extra_weight.shape == (1, config["hidden_size"]) and layer.extra_weight.requires_grad
    mask_vector = layer(torch.tensor([model.mask_token]))
    assert torch.equal(mask_vector[0], layer.extra_weight[0])
    assert layer.weight.shape == (model.n_items + 1, config["hidden_size"])


@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
def test_bert4rec_examples_are_its_masked_positions(tiny, loss_type):
    """One loss per masked position, about the item masked there; their mean is BERT4Rec's
    own loss, and padding positions are not examples."""
    settings = {**SMALL, "MAX_ITEM_LIST_LENGTH": 10}  # two masked positions per sequence
    _, train_data, *_, model, trainer = tiny(model="BiFairBERT4Rec", loss_type=loss_type, **settings)
    trainer.set_up(train_data)
    model.eval()
    batch = next(iter(train_data))
    losses, items = example_losses(model, batch)
    masked = batch[model.MASK_INDEX] > 0
    assert losses.shape == items.shape == (int(masked.sum()),)
    assert torch.equal(items, batch[model.POS_ITEMS][masked])
    assert masked.shape == (len(batch), 2) and 0 < int(masked.sum()) < masked.numel()
    assert torch.allclose(losses.mean(), model.calculate_loss(batch), rtol=1e-5, atol=1e-6)
    assert int(trainer.training_step.policy.item_group[items].min()) >= 0


@pytest.mark.parametrize("family", ["IPS", "GroupDRO", "VarReg"])
def test_group_aware_bert4rec_trains_on_its_masked_positions(tiny, family):
    config, train_data, valid_data, _, model, trainer = tiny(model=family + "BERT4Rec", **SMALL)
    before = [p.detach().clone() for p in model.inner_parameters()]
    _, valid_result = trainer.fit(train_data, valid_data, saved=False)
    assert math.isfinite(valid_result["ndcggap@10"])
    assert any(not torch.equal(b, p) for b, p in zip(before, model.inner_parameters()))


def test_a_loss_that_cannot_be_split_per_example_is_one_clear_error(tiny):
    _, train_data, *_, model, _ = tiny(model="BiFairSASRec", **SMALL)
    batch = next(iter(train_data))
    model.calculate_example_losses = lambda interaction: (torch.zeros(()), interaction[model.ITEM_ID])
    with pytest.raises(BiFairInputError, match="cannot be split per training example.*calculate_example_losses"):
        example_losses(model, batch)


# ----- per-example losses ----------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["BPR", "LightGCN", "NeuMF", "Caser", "FPMC"])
def test_per_example_losses_average_to_the_backbone_loss(tiny, backbone):
    """One loss per training row, grouped by the row's item; their mean is RecBole's loss, so a
    scalar regulariser (LightGCN's, Caser's) enters every example's loss once, in full."""
    _, train_data, *_, model, trainer = tiny(model="BiFair" + backbone, **SMALL)
    trainer.set_up(train_data)
    model.eval()  # no dropout: both calls see the same network
    batch = next(iter(train_data))
    losses, items = example_losses(model, batch)
    assert torch.equal(items, batch[model.ITEM_ID])
    assert losses.shape == items.shape
    assert torch.allclose(losses.mean(), model.calculate_loss(batch).squeeze(), rtol=1e-5, atol=1e-6)
    groups = trainer.training_step.policy.item_group[items]
    assert groups.shape == items.shape and int(groups.min()) >= 0
    if backbone == "BPR":  # pairwise: several positives per user, each its own example
        _, per_user = torch.unique(batch[model.USER_ID], return_counts=True)
        assert int(per_user.max()) > 1


def test_lightgcn_propagates_over_the_llm_layer(tiny):
    _, _, _, _, model, _ = tiny(model="LLMLightGCN", **SMALL)
    model.eval()  # no projector dropout: both reads see the same table
    ego = model.get_ego_embeddings()
    assert torch.equal(ego[model.n_users:], model.item_embedding.weight)
    assert ego[model.n_users:].grad_fn is not None  # gradients reach the projector


# ----- backbones that cannot take the layer ----------------------------------------------------
@pytest.mark.parametrize("name", ["LLMFM", "BiFairDeepFM", "LLMKGAT", "BiFairCKE"])
def test_context_and_knowledge_models_fail_naming_the_backbones_that_can(name):
    with pytest.raises(BiFairInputError, match=r"general and sequential recommenders only.*SASRec, GRU4Rec"):
        get_model(name)


def test_missing_item_table_names_the_backbones_that_can(tiny):
    with pytest.raises(BiFairInputError, match="no item table 'nope'.*llm_item_tables.*SASRec, GRU4Rec"):
        tiny(model="LLMBPR", llm_item_tables=["nope"], **SMALL)


# ----- item tables found by shape --------------------------------------------------------------
def _module_with_tables(n_items, **widths_and_rows):
    module = torch.nn.Module()
    module.n_items = n_items
    for name, (rows, width) in widths_and_rows.items():
        setattr(module, name, torch.nn.Embedding(rows, width))
    return module


def test_the_one_item_sized_table_is_found_and_bias_tables_are_not():
    from recbole_bifair.model.llm_enhanced import item_tables_by_shape

    module = _module_with_tables(10, item_emb=(10, 4), item_bias=(10, 1), user_emb=(7, 4))
    assert item_tables_by_shape(module) == ["item_emb"]
    with_mask_row = _module_with_tables(10, items=(11, 4), user_emb=(7, 4))
    assert item_tables_by_shape(with_mask_row) == ["items"]


def test_a_user_table_of_the_item_tables_size_is_one_clear_error():
    from recbole_bifair.model.llm_enhanced import item_tables_by_shape

    with pytest.raises(BiFairInputError, match=r"several tables.*\(item_emb, user_emb\).*llm_item_tables"):
        item_tables_by_shape(_module_with_tables(10, item_emb=(10, 4), user_emb=(10, 4)))
    with pytest.raises(BiFairInputError, match="no item_embedding table.*llm_item_tables"):
        item_tables_by_shape(_module_with_tables(10, user_emb=(7, 4)))


def test_simplex_takes_the_llm_layer_without_configuration(tiny):
    """SimpleX names its item table ``item_emb``: found by shape. Its CCL loss averages over the
    batch inside the model, so a group-aware family stops with one clear error."""
    config, train_data, valid_data, _, model, trainer = tiny(model="LLMSimpleX", **SMALL)
    assert isinstance(model.item_emb, LLMItemEmbedding) and not isinstance(model.user_emb, LLMItemEmbedding)
    _, valid_result = trainer.fit(train_data, valid_data, saved=False)
    assert math.isfinite(valid_result["ndcggap@10"])
    *_, trainer = tiny(model="BiFairSimpleX", **SMALL)
    with pytest.raises(BiFairInputError, match="SimpleX: its loss cannot be split per training example"):
        trainer.fit(train_data, valid_data, saved=False)
