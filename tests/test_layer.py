"""The LLM item-embedding layer: shapes, padding, frozen vs trainable, ``.weight``."""
import pytest
import torch
from torch import nn

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.llm.layer import LLMItemEmbedding, build_projector


def make_layer(freeze=True, n_extra_rows=0, dropout=0.0):
    torch.manual_seed(0)
    table = torch.randn(6, 8)
    table[0] = 0
    return LLMItemEmbedding(table, build_projector(8, 4, dropout=dropout), freeze=freeze, n_extra_rows=n_extra_rows)


def test_projector_shape_and_depth():
    projector = build_projector(384, 64)
    linears = [m for m in projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(384, 192), (192, 64)]
    deep = build_projector(16, 4, n_layers=3, hidden_dim=10, activation="relu")
    assert [(m.in_features, m.out_features) for m in deep if isinstance(m, nn.Linear)] == [(16, 10), (10, 10), (10, 4)]
    assert isinstance(build_projector(16, 4, n_layers=1)[0], nn.Linear)


@pytest.mark.parametrize("kwargs, key", [
    ({"n_layers": 0}, "projector_layers"),
    ({"activation": "swishy"}, "projector_activation"),
    ({"dropout": 1.5}, "projector_dropout"),
])
def test_projector_bad_values(kwargs, key):
    with pytest.raises(BiFairInputError, match=key):
        build_projector(8, 4, **kwargs)


def test_forward_matches_weight_and_padding_is_zero():
    layer = make_layer().eval()
    ids = torch.tensor([[0, 1, 2], [3, 3, 0]])
    out = layer(ids)
    assert out.shape == (2, 3, 4)
    assert torch.allclose(out, layer.weight[ids], atol=1e-6)
    assert torch.count_nonzero(layer.weight[0]) == 0
    assert torch.count_nonzero(out[0, 0]) == 0
    assert layer.num_embeddings == 6 and layer.embedding_dim == 4


def test_frozen_table_gets_no_gradient_and_trainable_one_does():
    frozen = make_layer(freeze=True)
    frozen.weight.sum().backward()
    assert frozen.llm_weight.grad is None
    assert frozen.projector[0].weight.grad is not None
    trainable = make_layer(freeze=False)
    trainable(torch.tensor([1, 2])).sum().backward()
    assert trainable.llm_weight.grad is not None
    assert torch.count_nonzero(trainable.llm_weight.grad[3:]) == 0


def test_extra_rows_are_trainable_vectors_after_the_llm_rows():
    layer = make_layer(n_extra_rows=1)
    assert layer.num_embeddings == 7
    assert torch.equal(layer(torch.tensor([6]))[0], layer.extra_weight[0])
    assert layer.weight.shape == (7, 4)


def test_the_whole_table_path_of_a_gpu_gives_the_same_vectors_and_gradients(monkeypatch):
    """On a GPU the layer projects every row and looks the ids up (no data-dependent shapes);
    forced here on the CPU, it agrees with the distinct-items path within float tolerance."""
    ids = torch.tensor([[0, 1, 2, 6], [3, 3, 0, 5]])
    results = []
    for whole_table in (False, True):
        monkeypatch.setattr(LLMItemEmbedding, "_projects_every_row", staticmethod(lambda ids, w=whole_table: w))
        layer = make_layer(freeze=False, n_extra_rows=1).eval()
        out = layer(ids)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), layer.llm_weight.grad.clone(), layer.extra_weight.grad.clone(),
                        layer.projector[0].weight.grad.clone()))
    for distinct, whole in zip(*results):
        assert torch.allclose(distinct, whole, atol=1e-6)
    assert torch.count_nonzero(results[1][0][0, 0]) == 0  # padding stays zero
    assert torch.count_nonzero(results[1][1][4]) == 0, "a row no id names gets no gradient"
