"""The prior-fairness report: the cosine recommender over the LLM tables E0 / E, evaluated like
the run's model."""
import math

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.utils import ModelType

from conftest import tiny_config
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.evaluator import CosineRecommender, prior_fairness
from recbole_bifair.evaluator.prior import PriorLoss

FIELDS = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
          "ITEM_LIST_LENGTH_FIELD": "item_length"}
TABLE = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [-1.0, 1.0]]  # row 0: padding


def cosine(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    norms = math.hypot(*u) * math.hypot(*v)
    return 0.0 if norms == 0 else dot / norms


def mean_rows(items):
    if not items:
        return [0.0, 0.0]
    return [sum(TABLE[i][d] for i in items) / len(items) for d in range(2)]


def test_cosine_scores_match_a_hand_computation():
    sequential = CosineRecommender(torch.tensor(TABLE), {**FIELDS, "MODEL_TYPE": ModelType.SEQUENTIAL}, True)
    # row 2 has length 2: its third position (item 1) is not history
    rows = Interaction({"item_id_list": torch.tensor([[1, 2, 0], [3, 0, 0], [2, 4, 1]]),
                        "item_length": torch.tensor([2, 1, 2]), "item_id": torch.tensor([3, 4, 1])})
    histories = [[1, 2], [3], [2, 4]]
    expected = [[cosine(mean_rows(h), row) for row in TABLE] for h in histories]
    torch.testing.assert_close(sequential.full_sort_predict(rows), torch.tensor(expected))
    targets = [3, 4, 1]
    assert sequential.predict(rows).tolist() == pytest.approx(
        [expected[r][i] for r, i in enumerate(targets)], abs=1e-6)

    # general model: the (user, item) history pairs; user 0 has none and scores 0 everywhere
    general = CosineRecommender(torch.tensor(TABLE), {**FIELDS, "MODEL_TYPE": ModelType.GENERAL}, False,
                                history=(torch.tensor([1, 1, 2, 2, 2]), torch.tensor([1, 3, 4, 4, 2])), n_users=3)
    users = Interaction({"user_id": torch.tensor([2, 0, 1])})
    histories = [[4, 4, 2], [], [1, 3]]
    expected = [[cosine(mean_rows(h), row) for row in TABLE] for h in histories]
    torch.testing.assert_close(general.full_sort_predict(users), torch.tensor(expected))
    with pytest.raises(BiFairInputError, match="train_data"):
        CosineRecommender(torch.tensor(TABLE), {**FIELDS, "MODEL_TYPE": ModelType.GENERAL}, False)


@pytest.mark.parametrize("model_type", [ModelType.SEQUENTIAL, ModelType.GENERAL])
def test_prior_loss_is_the_cosine_recommenders_cross_entropy_and_moves_the_table(model_type):
    """The outer level's prior term: per example, cross-entropy of the cosine recommender's
    scores / temperature at the example's item, padding never a candidate; differentiable in E."""
    config = {**FIELDS, "MODEL_TYPE": model_type}
    table = torch.tensor(TABLE, requires_grad=True)
    if model_type == ModelType.SEQUENTIAL:
        rows = Interaction({"item_id_list": torch.tensor([[1, 2, 0], [3, 0, 0]]),
                            "item_length": torch.tensor([2, 1]), "item_id": torch.tensor([3, 4])})
        recommender = CosineRecommender(table, config, True)
        loss = PriorLoss(config, temperature=0.5)
    else:
        history = (torch.tensor([0, 0, 1]), torch.tensor([1, 2, 3]))
        rows = Interaction({"user_id": torch.tensor([0, 1]), "item_id": torch.tensor([3, 4])})
        recommender = CosineRecommender(table, config, False, history=history, n_users=2)
        dataset = type("Train", (), {"inter_feat": {"user_id": history[0], "item_id": history[1]},
                                     "user_num": 2, "item_num": len(TABLE)})()
        loss = PriorLoss(config, temperature=0.5, train_dataset=dataset)
    losses, items = loss.example_losses(table, rows)
    scores = recommender.full_sort_predict(rows) / 0.5
    log_softmax = torch.log_softmax(scores[:, 1:], dim=1)  # items 1..4: padding excluded
    expected = -log_softmax[torch.arange(2), items - 1]
    torch.testing.assert_close(losses, expected)
    losses.sum().backward()
    assert table.grad[1:].abs().sum() > 0 and table.grad[0].abs().sum() == 0


def hand_metrics_at_10(table, config, train_data, test_data):
    """hit@10 and ndcg@10 of the cosine recommender, computed here from scratch (histories from
    the sequences, or from ``history_item_matrix`` of the training split)."""
    unit = torch.nn.functional.normalize(table.detach().float(), dim=1)
    seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        history, _, lengths = train_data._dataset.history_item_matrix()
    hits, ndcgs = [], []
    for interaction, history_index, positive_u, positive_i in test_data:
        if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            seqs = [s[:n].tolist() for s, n in zip(interaction[seq_field], interaction[config["ITEM_LIST_LENGTH_FIELD"]])]
        else:
            seqs = [history[u][: lengths[u]].tolist() for u in interaction[config["USER_ID_FIELD"]].tolist()]
        users = torch.stack([table[[i for i in s if i > 0]].float().mean(dim=0) for s in seqs])
        scores = torch.nn.functional.normalize(users, dim=1) @ unit.t()
        scores[:, 0] = -np.inf
        if history_index is not None:
            scores[history_index] = -np.inf
        top = np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :10]
        positives = [set() for _ in range(len(seqs))]
        for u, i in zip(positive_u.tolist(), positive_i.tolist()):
            positives[u].add(i)
        for row, items in enumerate(positives):
            ranks = [r for r, i in enumerate(top[row]) if i in items]
            hits.append(float(bool(ranks)))
            idcg = sum(1 / np.log2(r + 2) for r in range(min(len(items), 10)))
            ndcgs.append(sum(1 / np.log2(r + 2) for r in ranks) / idcg)
    return np.mean(hits), np.mean(ndcgs)


@pytest.mark.parametrize("model_name", ["BiFairSASRec", "BiFairBPR"])
def test_report_of_a_fresh_model(tiny, model_name):
    config, train_data, _, test_data, model, trainer = tiny(model=model_name)
    layer = model.llm_item_embeddings()[0]
    with torch.no_grad():  # items with the same text have the same row: break the ties of the top 10
        noise = 1e-3 * torch.randn(layer.llm_weight_init.shape, generator=torch.Generator().manual_seed(0))
        layer.llm_weight_init[1:] += noise[1:]
        layer.llm_weight.copy_(layer.llm_weight_init)
    report = prior_fairness(model, trainer, test_data, train_data=train_data)
    assert trainer.model is model
    own = trainer.evaluate(test_data, load_best_model=False)
    assert set(report) == {"E0", "E"}
    for name in ("E0", "E"):
        assert list(report[name]) == list(own)
        assert "ndcggap@10" in report[name] and "groupndcg@10_g4" in report[name]
        assert all(0.0 <= value <= 1.0 for value in report[name].values()), report[name]
    assert report["E"] == report["E0"]  # E == E0 before training
    assert report["E0"] != dict(own)  # the cosine recommender was evaluated, not the model
    hit, ndcg = hand_metrics_at_10(layer.llm_weight_init, config, train_data, test_data)
    assert report["E0"]["hit@10"] == pytest.approx(hit, abs=1e-4)
    assert report["E0"]["ndcg@10"] == pytest.approx(ndcg, abs=1e-4)


def test_changing_e_changes_only_the_e_report(tiny):
    _, train_data, _, test_data, model, trainer = tiny()
    before = prior_fairness(model, trainer, test_data, train_data=train_data)
    layer = model.llm_item_embeddings()[0]
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        layer.llm_weight[1:] = layer.llm_weight[1:][torch.randperm(layer.n_llm_rows - 1, generator=generator)]
    after = prior_fairness(model, trainer, test_data, train_data=train_data)
    assert after["E0"] == before["E0"]
    assert after["E"] != before["E"]
    assert after["E"]["ndcg@10"] != before["E"]["ndcg@10"]


def test_models_without_llm_layer_are_refused(tiny):
    _, train_data, _, test_data, model, trainer = tiny(model="SASRec")
    with pytest.raises(BiFairInputError, match="no LLM item layer"):
        prior_fairness(model, trainer, test_data, train_data=train_data)


@pytest.mark.slow
def test_run_reports_prior_fairness(tmp_path, tiny, embedding_cache):
    from recbole_bifair.quick_start import run_recbole_bifair

    config = tiny_config(tmp_path, llm_emb_cache_dir=embedding_cache)
    result = run_recbole_bifair("BiFairSASRec", "tiny", config_dict=config, saved=False)
    report = result["prior_fairness"]
    assert set(report) == {"E0", "E"}
    for name in ("E0", "E"):
        assert list(report[name]) == list(result["test_result"])
    _, train_data, _, test_data, fresh, trainer = tiny()
    assert report["E0"] == prior_fairness(fresh, trainer, test_data, train_data=train_data)["E0"]

    plain = run_recbole_bifair("SASRec", "tiny", config_dict=config, saved=False)
    assert "prior_fairness" not in plain
