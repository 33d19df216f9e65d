"""The LLM representation options: preprocessing of the LLM table, the projector's forms, and
the dual view (a trainable ID table fused with the projected LLM vectors)."""
import pytest
import torch
from torch import nn

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.llm.layer import (
    DualView, LLMItemEmbedding, ResidualProjector, build_projector, pca_item_table, preprocess_llm_table,
)


def llm_table(n_items=40, dim=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(n_items, dim, generator=generator) @ torch.randn(dim, dim, generator=generator) + 3.0
    table[0] = 0
    return table


def test_center_removes_the_item_mean_and_keeps_padding_zero():
    table = llm_table()
    centred = preprocess_llm_table(table, "center")
    assert torch.allclose(centred[1:].mean(dim=0), torch.zeros(12), atol=1e-5)
    assert torch.count_nonzero(centred[0]) == 0
    assert torch.allclose(centred[1:] - table[1:], (centred[1:] - table[1:])[0].expand(39, 12), atol=1e-5)


def test_whiten_gives_identity_covariance_over_items():
    whitened = preprocess_llm_table(llm_table(), "whiten")[1:].double()
    covariance = torch.cov(whitened.T)
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(whitened.mean(dim=0), torch.zeros(12, dtype=torch.float64), atol=1e-5)


def test_l2_gives_unit_rows_and_none_changes_nothing():
    table = llm_table()
    assert torch.allclose(preprocess_llm_table(table, "l2")[1:].norm(dim=1), torch.ones(39), atol=1e-6)
    assert torch.equal(preprocess_llm_table(table, "none"), table)


def test_unknown_preprocessing_is_a_clear_error():
    with pytest.raises(BiFairInputError, match="llm_preprocess"):
        preprocess_llm_table(llm_table(), "pca")


def test_linear_projector_is_linear_and_residual_adds_a_linear_path():
    linear = build_projector(12, 4, activation="identity", dropout=0.0).eval()
    x, y = torch.randn(5, 12), torch.randn(5, 12)
    bias = linear(torch.zeros(1, 12))
    assert torch.allclose(linear(x + y) - bias, (linear(x) - bias) + (linear(y) - bias), atol=1e-5)
    residual = build_projector(12, 4, residual=True).eval()
    assert isinstance(residual, ResidualProjector)
    assert torch.allclose(residual(x), residual.mlp(x) + x @ residual.skip.weight.T, atol=1e-6)


def test_input_dropout_drops_llm_features_in_training_only():
    projector = build_projector(12, 4, input_dropout=0.5)
    assert isinstance(projector[0], nn.Dropout) and projector[0].p == 0.5
    x = torch.randn(3, 12)
    projector.eval()
    assert torch.equal(projector(x), projector(x))
    with pytest.raises(BiFairInputError, match="projector_input_dropout"):
        build_projector(12, 4, input_dropout=1.0)


def test_pca_table_holds_the_top_components_at_the_given_scale():
    table = llm_table()
    ids = pca_item_table(table, 4, std=0.02)
    assert ids.shape == (40, 4) and torch.count_nonzero(ids[0]) == 0
    assert abs(float(ids[1:].std()) - 0.02) < 1e-4
    items = table[1:].double() - table[1:].double().mean(dim=0)
    variances = torch.linalg.svdvals(items) ** 2
    column_variances = ids[1:].double().var(dim=0)
    ratio = column_variances / column_variances[0]
    assert torch.allclose(ratio, (variances[:4] / variances[0]).to(ratio.dtype), atol=1e-3)
    wide = pca_item_table(table, 16, std=0.02)
    assert wide.shape == (40, 16) and torch.count_nonzero(wide[1:, 12:]) > 0


@pytest.mark.parametrize("fusion", ["sum", "concat", "gate"])
def test_dual_view_fuses_id_and_llm_vectors(fusion):
    torch.manual_seed(0)
    table = llm_table()
    id_table = torch.randn(40, 4)
    layer = LLMItemEmbedding(table, build_projector(12, 4, dropout=0.0), dual_view=DualView(id_table, fusion)).eval()
    ids = torch.tensor([[0, 1, 5], [7, 7, 0]])
    out = layer(ids)
    assert torch.allclose(out, layer.weight[ids], atol=1e-6)
    assert torch.count_nonzero(out[0, 0]) == 0
    projected = layer.projector(table[5])
    if fusion == "sum":
        assert torch.allclose(out[0, 2], projected + id_table[5], atol=1e-6)
    out.sum().backward()
    assert layer.dual_view.id_weight.grad is not None
    assert torch.count_nonzero(layer.dual_view.id_weight.grad[[1, 5, 7]]) > 0


def test_unknown_fusion_is_a_clear_error():
    with pytest.raises(BiFairInputError, match="dual_fusion"):
        DualView(torch.zeros(3, 2), "product")


@pytest.mark.parametrize("model", ["LLMSASRec", "BiFairSASRec"])
def test_dual_view_model_keeps_e_as_the_only_outer_parameter(tiny, model):
    config, train_data, valid_data, _, built, trainer = tiny(model, llm_view="dual", dual_fusion="gate",
                                                            llm_preprocess="center")
    layer = built.llm_item_embeddings()[0]
    assert layer.dual_view is not None
    inner = {id(p) for p in built.inner_parameters()}
    assert id(layer.dual_view.id_weight) in inner and id(layer.llm_weight) not in inner
    assert [id(p) for p in built.llm_parameters()] == [id(layer.llm_weight)]
    assert torch.allclose(layer.llm_weight_init[1:].mean(dim=0), torch.zeros(layer.llm_dim), atol=1e-5)
    before = layer.dual_view.id_weight.detach().clone()
    trainer.fit(train_data, valid_data, saved=False)
    assert not torch.equal(before, layer.dual_view.id_weight.detach())


def test_pca_id_init_comes_from_the_llm_table_and_random_from_the_backbone(tiny):
    *_, pca_model, _ = tiny("LLMSASRec", llm_view="dual", dual_id_init="pca")
    *_, random_model, _ = tiny("LLMSASRec", llm_view="dual", dual_id_init="random")
    pca_layer = pca_model.llm_item_embeddings()[0]
    expected = pca_item_table(pca_layer.llm_weight_init, 16, float(random_model.llm_item_embeddings()[0].dual_view.id_weight.detach().std()))
    assert torch.allclose(pca_layer.dual_view.id_weight, expected, atol=1e-4)


@pytest.mark.parametrize("key, value", [("llm_view", "both"), ("llm_preprocess", "zca"),
                                        ("projector_residual", "yes"), ("dual_id_init", "zeros")])
def test_bad_option_values_are_one_clear_error(tiny, key, value):
    with pytest.raises(BiFairInputError, match=key):
        tiny("LLMSASRec", **{key: value})


def test_residual_projector_drops_the_same_features_on_both_paths():
    projector = build_projector(12, 4, residual=True, input_dropout=0.5, dropout=0.0).train()
    x = torch.randn(6, 12)
    torch.manual_seed(3)
    out = projector(x)
    torch.manual_seed(3)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    assert torch.allclose(out, projector.mlp(dropped) + projector.skip(dropped), atol=1e-6)


def test_pca_id_table_comes_from_the_table_as_loaded_when_whitened(tiny):
    *_, whitened, _ = tiny("LLMSASRec", llm_view="dual", dual_id_init="pca", llm_preprocess="whiten")
    *_, plain, _ = tiny("LLMSASRec", llm_view="dual", dual_id_init="pca")
    assert torch.allclose(whitened.llm_item_embeddings()[0].dual_view.id_weight,
                          plain.llm_item_embeddings()[0].dual_view.id_weight, atol=1e-6)
    column_variances = whitened.llm_item_embeddings()[0].dual_view.id_weight[1:].var(dim=0)
    assert column_variances[0] > 2 * column_variances[-1]
