"""Fairness metrics: hand-computed cases through FairnessCollector + RecBole's Evaluator, the
registration with RecBole, and end-to-end runs of plain RecBole models on the tiny dataset
(full ranking, sampled evaluation, a general model with several positives per user), with an
independent numpy re-computation from the trained model's top-K lists."""
import logging
import math
import os
import sys

import numpy as np
import pytest
import torch

from recbole_bifair.evaluator import FAIRNESS_METRICS, FairnessCollector, register_fairness_metrics

register_fairness_metrics()

from recbole.evaluator import Collector, Evaluator  # noqa: E402

DATA_PATH = os.path.join(os.path.dirname(__file__), "test_data")
D2, D3 = 1 / math.log2(3), 1 / math.log2(4)  # DCG discounts of ranks 2 and 3 (rank 1: 1)

FAIRNESS_NAMES = [m.__name__ for m in FAIRNESS_METRICS]
ITEM_METRICS = ["GiniIndex", "ItemCoverage", "AveragePopularity", "TailPercentage", "ShannonEntropy"]


class FakeDataset:
    """The parts of a RecBole training dataset that popularity groups read."""

    iid_field, uid_field = "item_id", "user_id"

    def __init__(self, train_items, item_num):
        self.inter_feat = {"item_id": torch.tensor(train_items), "user_id": torch.zeros(len(train_items))}
        self.item_num = item_num


class FakeTrainData:
    def __init__(self, dataset):
        self.dataset = dataset


# Items 1..6 trained 4, 3, 2, 1, 1, 1 times (12 in all). Three groups of equal training mass:
# g0 = {1} (share 4/12), g1 = {2, 3} (5/12), g2 = {4, 5, 6} (3/12).
TRAIN_ITEMS = [1] * 4 + [2] * 3 + [3] * 2 + [4, 5, 6]
GROUP_OF = {1: 0, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2}
TRAIN_SHARE = np.array([4, 5, 3]) / 12
# Per row: its top-3 list and its positives.
ROWS = [
    ([1, 4, 2], [4, 2]),     # slots g0 g2 g1, hits at ranks 2 (g2) and 3 (g1); P = [0, 1, 1]
    ([2, 3, 5], [1]),        # slots g1 g1 g2, no hit;                          P = [1, 0, 0]
    ([6, 1, 3], [3, 5, 1]),  # slots g2 g0 g1, hits at ranks 2 (g0) and 3 (g1); P = [1, 1, 1]
    ([3, 2, 6], [2, 3]),     # slots g1 g1 g2, hits at ranks 1 and 2 (g1);      P = [0, 2, 0]
]


def evaluator_config(metrics, topk=(1, 3), n_groups=3):
    return {"metrics": list(metrics), "topk": list(topk), "metric_decimal_place": 8,
            "eval_args": {"mode": {"valid": "full", "test": "full"}}, "device": torch.device("cpu"),
            "item_group": {"n_groups": n_groups}, "ITEM_ID_FIELD": "item_id", "USER_ID_FIELD": "user_id"}


def scores_for(rows, n_items=7, candidates=None):
    """Scores ranking each row's list first (in order); -inf for padding and non-candidates."""
    scores = torch.rand(len(rows), n_items) * 0.1
    for r, (top, _) in enumerate(rows):
        scores[r, top] = torch.tensor([3.0, 2.0, 1.0][: len(top)])
    scores[:, 0] = -np.inf
    if candidates is not None:
        outside = torch.ones_like(scores, dtype=torch.bool)
        for r, items in enumerate(candidates):
            outside[r, items] = False
        scores[outside] = -np.inf
    return scores


def positives_of(rows):
    pairs = [(r, i) for r, (_, positives) in enumerate(rows) for i in positives]
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def evaluate(metrics, rows, topk=(1, 3), n_groups=3, candidates=None, collector=None, batches=1):
    config = evaluator_config(metrics, topk, n_groups)
    if collector is None:
        collector = FairnessCollector(config)
        collector.data_collect(FakeTrainData(FakeDataset(TRAIN_ITEMS, 7)))
    scores = scores_for(rows, candidates=candidates)
    for chunk in np.array_split(np.arange(len(rows)), batches):
        batch_rows = [rows[i] for i in chunk]
        positive_u, positive_i = positives_of(batch_rows)
        collector.eval_batch_collect(scores[chunk], None, positive_u, positive_i)
    struct = collector.get_data_struct()
    return Evaluator(config).evaluate(struct), struct, collector


def population_cv(values):
    values = np.asarray(values)
    return values.std() / values.mean()


# ---- hand-computed cases -----------------------------------------------------------------

def test_groups_of_the_constructed_case():
    _, _, collector = evaluate(["GroupNDCG"], ROWS)
    assert collector.item_groups.item_group.tolist() == [-1, 0, 1, 1, 2, 2, 2]
    assert np.allclose(collector.item_groups.train_share.numpy(), TRAIN_SHARE)


def test_per_group_utilities_at_3_and_1():
    result, _, _ = evaluate(["GroupNDCG", "GroupRecall", "GroupHit"], ROWS)
    expected = {
        # g0: users 1, 2 (user 2 hits item 1 at rank 2); g1: users 0, 2, 3; g2: users 0, 2
        "groupndcg@3_g0": (0 + D2) / 2, "groupndcg@3_g1": (D3 + D3 + 1) / 3, "groupndcg@3_g2": (D2 + 0) / 2,
        "grouprecall@3_g0": 0.5, "grouprecall@3_g1": 1.0, "grouprecall@3_g2": 0.5,
        "grouphit@3_g0": 0.5, "grouphit@3_g1": 1.0, "grouphit@3_g2": 0.5,
        # K=1: only user 3 hits (item 3, g1); IDCG uses min(P_ug, 1) = 1; Recall = 1/2
        "groupndcg@1_g0": 0.0, "groupndcg@1_g1": 1 / 3, "groupndcg@1_g2": 0.0,
        "grouprecall@1_g0": 0.0, "grouprecall@1_g1": (0 + 0 + 0.5) / 3, "grouprecall@1_g2": 0.0,
        "grouphit@1_g0": 0.0, "grouphit@1_g1": 1 / 3, "grouphit@1_g2": 0.0,
    }
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-7), key


def test_group_utilities_are_computed_once_per_evaluation(monkeypatch):
    """Four NDCG metrics and one Recall metric at two cut-offs: one table per (utility, k) per
    evaluation, the same values as each metric computing its own, and a new evaluation
    computes afresh."""
    from recbole_bifair.evaluator import metrics as fairness_metrics

    calls = []
    original = fairness_metrics.group_utility

    def counted(group_topk, group_hits, group_pos, k, utility):
        calls.append((utility, k))
        return original(group_topk, group_hits, group_pos, k, utility)

    names = ["GroupNDCG", "NDCGGap", "NDCGWorst", "NDCGWorstQuarter", "RecallGap"]
    separately = {}
    for name in names:
        separately.update(evaluate([name], ROWS)[0])
    monkeypatch.setattr(fairness_metrics, "group_utility", counted)
    together, _, collector = evaluate(names, ROWS)
    assert sorted(calls) == [("ndcg", 1), ("ndcg", 3), ("recall", 1), ("recall", 3)]
    assert together == separately
    evaluate(names, ROWS, collector=collector)
    assert len(calls) == 8


def test_ndcg_disparities():
    metrics = ["NDCGGap", "NDCGWorst", "NDCGCV", "NDCGWorstQuarter"]
    result, _, _ = evaluate(metrics, ROWS)
    at3 = [D2 / 2, (2 * D3 + 1) / 3, D2 / 2]
    at1 = [0.0, 1 / 3, 0.0]
    assert result["ndcggap@3"] == pytest.approx(at3[1] - at3[0])
    assert result["ndcgworst@3"] == pytest.approx(D2 / 2)
    assert result["ndcgcv@3"] == pytest.approx(population_cv(at3))
    assert result["ndcgworstquarter@3"] == pytest.approx(min(at3) / np.mean(at3))  # ceil(3/4) = 1 group
    assert result["ndcggap@1"] == pytest.approx(1 / 3)
    assert result["ndcgworst@1"] == 0.0
    assert result["ndcgcv@1"] == pytest.approx(math.sqrt(2))  # mean 1/9, std sqrt(2)/9
    assert result["ndcgworstquarter@1"] == 0.0


def test_recall_and_hit_disparities():
    metrics = ["RecallGap", "RecallWorst", "RecallCV", "RecallWorstQuarter",
               "HitGap", "HitWorst", "HitCV", "HitWorstQuarter"]
    result, _, _ = evaluate(metrics, ROWS)
    recall3, recall1, hit1 = [0.5, 1.0, 0.5], [0.0, 1 / 6, 0.0], [0.0, 1 / 3, 0.0]
    assert result["recallgap@3"] == pytest.approx(0.5)
    assert result["recallworst@3"] == pytest.approx(0.5)
    assert result["recallcv@3"] == pytest.approx(population_cv(recall3))
    assert result["recallworstquarter@3"] == pytest.approx(0.5 / np.mean(recall3))
    assert result["recallgap@1"] == pytest.approx(1 / 6)
    assert result["recallcv@1"] == pytest.approx(population_cv(recall1))
    assert result["hitgap@3"] == pytest.approx(0.5)
    assert result["hitworst@3"] == pytest.approx(0.5)
    assert result["hitgap@1"] == pytest.approx(1 / 3)
    assert result["hitcv@1"] == pytest.approx(population_cv(hit1))
    assert result["hitworstquarter@1"] == 0.0 and result["hitworst@1"] == 0.0


def test_exposure():
    result, _, _ = evaluate(["GroupExposure", "ExposureDisparity", "ExposureGap"], ROWS)
    # top-3 slots per group: g0 2, g1 6, g2 4 of 12; top-1 slots: g0 1, g1 2, g2 1 of 4
    share3, share1 = np.array([2, 6, 4]) / 12, np.array([1, 2, 1]) / 4
    for g in range(3):
        assert result[f"groupexposure@3_g{g}"] == pytest.approx(share3[g])
        assert result[f"groupexposure@1_g{g}"] == pytest.approx(share1[g])
    assert result["exposuredisparity@3"] == pytest.approx(np.abs(share3 - TRAIN_SHARE).mean())  # 1/9
    assert result["exposuregap@3"] == pytest.approx(3 / 12)
    assert result["exposuredisparity@1"] == pytest.approx(np.abs(share1 - TRAIN_SHARE).mean())  # 1/18
    assert result["exposuregap@1"] == pytest.approx(2 / 12)


def test_group_without_positives_is_nan_and_left_out(caplog):
    rows = [ROWS[0], ROWS[3]]  # no positive in g0
    metrics = ["GroupNDCG", "NDCGGap", "NDCGWorst", "NDCGCV", "NDCGWorstQuarter", "ExposureDisparity"]
    with caplog.at_level(logging.WARNING):
        result, _, _ = evaluate(metrics, rows)
    assert math.isnan(result["groupndcg@3_g0"])
    g1, g2 = (D3 + 1) / 2, D2
    assert result["groupndcg@3_g1"] == pytest.approx(g1) and result["groupndcg@3_g2"] == pytest.approx(g2)
    assert result["ndcggap@3"] == pytest.approx(g1 - g2)
    assert result["ndcgworst@3"] == pytest.approx(g2)
    assert result["ndcgcv@3"] == pytest.approx(population_cv([g1, g2]))
    assert result["ndcgworstquarter@3"] == pytest.approx(g2 / ((g1 + g2) / 2))
    assert not math.isnan(result["exposuredisparity@3"])
    assert any("without evaluation positives: g0 head" in r.message for r in caplog.records)


def test_no_hits_at_all_gives_zero_cv_and_unit_worst_quarter():
    rows = [([1, 4, 2], [3]), ([2, 3, 5], [1]), ([6, 1, 3], [5])]
    result, _, _ = evaluate(["NDCGGap", "NDCGCV", "NDCGWorstQuarter"], rows)
    assert result["ndcggap@3"] == 0.0 and result["ndcgcv@3"] == 0.0 and result["ndcgworstquarter@3"] == 1.0


def test_batches_and_reset_between_evaluations():
    whole, _, _ = evaluate(["GroupNDCG", "ExposureGap"], ROWS)
    batched, struct, collector = evaluate(["GroupNDCG", "ExposureGap"], ROWS, batches=3)
    assert batched == pytest.approx(whole)
    assert struct["rec.group_topk"].shape == (4, 3) and struct["rec.group_pos"].shape == (4, 3)
    again, struct, _ = evaluate(["GroupNDCG", "ExposureGap"], ROWS[:2], collector=collector)
    assert struct["rec.group_topk"].shape == (2, 3)
    assert "data.group_train_share" in struct


def test_sampled_rows_with_fewer_candidates_than_k():
    # row 0 ranks only its two candidates {1, 4}: its third slot recommends nothing
    candidates = [[1, 4], [2, 3, 5, 6], [1, 3, 5, 6], [2, 3, 6]]
    rows = [([1, 4], [4]), ROWS[1], ROWS[2], ROWS[3]]
    result, struct, _ = evaluate(["GroupExposure", "GroupRecall"], rows, candidates=candidates)
    assert struct["rec.group_topk"][0].tolist() == [0, 2, -1]
    # top-3 slots: g0 2, g1 5, g2 4 of 11 recommended slots
    assert result["groupexposure@3_g0"] == pytest.approx(2 / 11)
    assert result["groupexposure@3_g1"] == pytest.approx(5 / 11)
    assert result["grouprecall@3_g2"] == pytest.approx(0.5)


@pytest.fixture
def numpy_float_alias(monkeypatch):
    """RecBole's NDCG uses ``np.float``, which its Config re-creates; no Config is built here."""
    monkeypatch.setattr(np, "float", np.float64, raising=False)


def test_single_group_equals_recbole_metrics_with_several_positives(numpy_float_alias):
    rng = np.random.default_rng(0)
    rows = [(list(rng.permutation(np.arange(1, 7))[:3]),
             list(rng.choice(np.arange(1, 7), size=n, replace=False))) for n in (1, 2, 3, 1, 4, 2)]
    metrics = ["NDCG", "Recall", "Hit", "GroupNDCG", "GroupRecall", "GroupHit"]
    result, _, _ = evaluate(metrics, rows, topk=(1, 2, 3), n_groups=1)
    for name in ("ndcg", "recall", "hit"):
        for k in (1, 2, 3):
            assert result[f"group{name}@{k}_g0"] == pytest.approx(result[f"{name}@{k}"], abs=1e-7)


def test_collector_is_recbole_collector_without_fairness_metrics(numpy_float_alias):
    config = evaluator_config(["NDCG", "Recall"])
    scores = scores_for(ROWS)
    positive_u, positive_i = positives_of(ROWS)
    results = []
    for collector_class in (Collector, FairnessCollector):
        collector = collector_class(config)
        collector.data_collect(FakeTrainData(FakeDataset(TRAIN_ITEMS, 7)))
        collector.eval_batch_collect(scores, None, positive_u, positive_i)
        struct = collector.get_data_struct()
        assert sorted(struct._data_dict) == ["rec.topk"]
        results.append(Evaluator(config).evaluate(struct))
    assert results[0] == results[1]
    assert FairnessCollector(config).item_groups is None


def test_evaluating_without_training_split_says_what_to_do():
    collector = FairnessCollector(evaluator_config(["NDCGGap"]))
    positive_u, positive_i = positives_of(ROWS)
    with pytest.raises(RuntimeError, match="data_collect"):
        collector.eval_batch_collect(scores_for(ROWS), None, positive_u, positive_i)


# ---- registration ---------------------------------------------------------------------------

def test_registered_with_recbole():
    import recbole.trainer.trainer as trainer_module
    from recbole.config import configurator
    from recbole.evaluator import register

    register_fairness_metrics()
    smaller = {"ndcggap", "ndcgcv", "recallgap", "recallcv", "hitgap", "hitcv",
               "exposuredisparity", "exposuregap"}
    for metric in FAIRNESS_METRICS:
        name = metric.__name__.lower()
        assert register.metrics_dict[name] is metric
        assert register.metric_information[name] == metric.metric_need
        assert configurator.metric_types[name] == metric.metric_type
        assert (name in configurator.smaller_metrics) == (name in smaller)
    assert len(register.smaller_metrics) == len(set(register.smaller_metrics))
    assert trainer_module.Collector is FairnessCollector


# ---- end to end on the tiny dataset ------------------------------------------------------------

def tiny_config_dict(tmp_path, **overrides):
    config = {
        "data_path": DATA_PATH, "epochs": 1, "train_batch_size": 256, "eval_batch_size": 256,
        "MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1,
        "embedding_size": 16, "topk": [5, 10], "show_progress": False, "save_dataset": False,
        "save_dataloaders": False, "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING",
        "train_neg_sample_args": None, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "metric_decimal_place": 8, "valid_metric": "NDCG@10",
    }
    config.update(overrides)
    return config


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """RecBole writes log/ and log_tensorboard/ into the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    return tmp_path


def train_and_test(tmp_path, model, **overrides):
    """Plain RecBole: one epoch of ``model`` on tiny, then the test evaluation."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    config = Config(model=model, dataset="tiny", config_dict=tiny_config_dict(tmp_path, **overrides))
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    trainer.fit(train_data, valid_data, saved=False)
    result = trainer.evaluate(test_data, load_best_model=False)
    return config, train_data, test_data, net, result


def numpy_popularity_groups(train_items, n_items, n_groups):
    """The mass split, recomputed: rank by (-count, id), group = floor(K * mass before / total)."""
    counts = np.bincount(train_items, minlength=n_items)
    ids = np.arange(1, n_items)
    ranked = sorted(ids, key=lambda i: (-counts[i], i))
    groups = np.full(n_items, n_groups - 1)
    groups[0] = -1
    before = 0
    for i in ranked:
        if counts[i] > 0:
            groups[i] = min(n_groups - 1, n_groups * before // counts.sum())
        before += counts[i]
    return groups


def numpy_group_metrics(model, test_data, groups, n_groups, k):
    """Per-group NDCG@k and Recall@k from the model's own full-ranking top-k lists."""
    ndcg_sum, recall_sum, users = np.zeros(n_groups), np.zeros(n_groups), np.zeros(n_groups)
    model.eval()
    with torch.no_grad():
        for interaction, history_index, positive_u, positive_i in test_data:
            scores = model.full_sort_predict(interaction.to(model.device)).view(len(interaction), -1)
            scores[:, 0] = -np.inf
            if history_index is not None:
                scores[history_index] = -np.inf
            top = np.argsort(-scores.cpu().numpy(), axis=1, kind="stable")[:, :k]
            positives = [set() for _ in range(len(interaction))]
            for u, i in zip(positive_u.tolist(), positive_i.tolist()):
                positives[u].add(i)
            for row, items in enumerate(positives):
                for g in range(n_groups):
                    in_group = {i for i in items if groups[i] == g}
                    if not in_group:
                        continue
                    ranks = [r for r, i in enumerate(top[row]) if i in in_group]
                    dcg = sum(1 / np.log2(r + 2) for r in ranks)
                    idcg = sum(1 / np.log2(r + 2) for r in range(min(len(in_group), k)))
                    ndcg_sum[g] += dcg / idcg
                    recall_sum[g] += len(ranks) / len(in_group)
                    users[g] += 1
    return ndcg_sum / users, recall_sum / users


def test_run_recbole_sasrec_with_all_fairness_and_item_metrics(in_tmp):
    from recbole.quick_start import run_recbole

    metrics = ["NDCG", "Recall", "Hit"] + FAIRNESS_NAMES + ITEM_METRICS
    out = run_recbole(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(
        in_tmp, metrics=metrics, valid_metric="NDCGGap@10"))
    assert out["valid_score_bigger"] is False
    assert out["best_valid_score"] == out["best_valid_result"]["ndcggap@10"]
    test = out["test_result"]
    for k in (5, 10):
        for name in ["ndcg", "recall", "hit"] + [m.lower() for m in ITEM_METRICS]:
            assert f"{name}@{k}" in test
        for name in FAIRNESS_NAMES:
            if name.startswith("Group"):
                assert [f"{name.lower()}@{k}_g{g}" in test for g in range(5)] == [True] * 5
            else:
                assert f"{name.lower()}@{k}" in test
        per_group = [test[f"groupndcg@{k}_g{g}"] for g in range(5)]
        assert test[f"ndcggap@{k}"] == pytest.approx(max(per_group) - min(per_group), abs=1e-7)
        assert sum(test[f"groupexposure@{k}_g{g}"] for g in range(5)) == pytest.approx(1.0, abs=1e-6)
    assert 0 < test["itemcoverage@10"] <= 1


def test_valid_metric_bigger_follows_the_metric(in_tmp):
    from recbole.config import Config

    def bigger(valid_metric):
        return Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(
            in_tmp, metrics=["NDCG", "NDCGGap", "NDCGWorst", "ExposureDisparity", "GroupNDCG"],
            valid_metric=valid_metric))["valid_metric_bigger"]

    assert [bigger(m) for m in ["NDCGGap@10", "ExposureDisparity@10", "NDCGWorst@10",
                                "GroupNDCG@10_g4", "NDCG@10"]] == [False, False, True, True, True]


def test_sasrec_ndcg_gap_matches_numpy_recomputation(in_tmp):
    metrics = ["NDCG", "GroupNDCG", "NDCGGap", "RecallGap"]
    config, train_data, test_data, model, result = train_and_test(in_tmp, "SASRec", metrics=metrics)
    train = train_data.dataset
    groups = numpy_popularity_groups(train.inter_feat["item_id"].numpy(), train.item_num, 5)
    collector_groups = model_groups(train)
    assert collector_groups.tolist() == groups.tolist()
    ndcg, recall = numpy_group_metrics(model, test_data, groups, 5, 10)
    assert result["ndcggap@10"] == pytest.approx(ndcg.max() - ndcg.min(), abs=1e-6)
    assert result["recallgap@10"] == pytest.approx(recall.max() - recall.min(), abs=1e-6)
    for g in range(5):
        assert result[f"groupndcg@10_g{g}"] == pytest.approx(ndcg[g], abs=1e-6)


def model_groups(train_dataset):
    from recbole_bifair.evaluator import build_item_groups

    return build_item_groups({"item_group": None}, train_dataset).item_group


def test_sasrec_sampled_evaluation(in_tmp):
    metrics = ["NDCG", "Recall", "Hit", "GroupNDCG", "GroupRecall", "GroupHit", "NDCGGap", "ExposureGap"]
    eval_args = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "uni20"}
    config, train_data, test_data, _, result = train_and_test(
        in_tmp, "SASRec", metrics=metrics, eval_args=eval_args)
    groups = model_groups(train_data.dataset).numpy()
    share = np.bincount(groups[test_data._dataset.inter_feat["item_id"].numpy()], minlength=5)
    share = share / share.sum()
    # one positive per row: each overall metric is the positive-weighted mean of its groups
    for name in ("ndcg", "recall", "hit"):
        for k in (5, 10):
            mixed = sum(share[g] * result[f"group{name}@{k}_g{g}"] for g in range(5))
            assert mixed == pytest.approx(result[f"{name}@{k}"], abs=1e-6)
    assert not math.isnan(result["exposuregap@10"])


def test_bpr_ratio_split_several_positives_per_user(in_tmp):
    metrics = ["NDCG", "Recall", "GroupNDCG", "GroupRecall", "NDCGGap", "RecallWorst"]
    eval_args = {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": "full"}
    config, train_data, test_data, model, result = train_and_test(
        in_tmp, "BPR", metrics=metrics, eval_args=eval_args, train_neg_sample_args={
            "distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0})
    assert max(np.bincount(test_data._dataset.inter_feat["user_id"].numpy())) > 1
    groups = model_groups(train_data.dataset).numpy()
    ndcg, recall = numpy_group_metrics(model, test_data, groups, 5, 10)
    for g in range(5):
        assert result[f"groupndcg@10_g{g}"] == pytest.approx(ndcg[g], abs=1e-6)
        assert result[f"grouprecall@10_g{g}"] == pytest.approx(recall[g], abs=1e-6)
    assert result["recallworst@10"] == pytest.approx(recall.min(), abs=1e-6)
