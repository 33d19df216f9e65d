"""The exposure re-ranker (evaluator/rerank.py): quotas as the formula says, lists of K distinct
candidates without -inf items, unchanged lists when the target is met, the config block, and
the collector hook that makes every metric see the re-ranked lists."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import recbole_bifair  # noqa: F401  (registers the fairness metrics)
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.evaluator.rerank import ExposureReranker, build_reranker, rerank_config

from conftest import tiny_config

# Items 1..12: g0 = 1..6, g1 = 7..9, g2 = 10..12; item 0 is padding.
ITEM_GROUP = torch.tensor([-1] + [0] * 6 + [1] * 3 + [2] * 3)
TRAIN_SHARE = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def groups(item_group=ITEM_GROUP, train_share=TRAIN_SHARE):
    return SimpleNamespace(item_group=item_group, n_groups=len(train_share), train_share=train_share)


def reranker(k=4, candidates=12, target="train_share", lam=0.0, item_groups=None):
    return ExposureReranker(k=k, candidates=candidates, target=target, lam=lam).fit(item_groups or groups())


def descending_scores(n_rows=1, n_items=13):
    """Scores that rank item 1 first, then 2, 3, ...; padding at -inf."""
    scores = torch.arange(n_items, 0, -1, dtype=torch.float32).repeat(n_rows, 1)
    scores[:, 0] = float("-inf")
    return scores


def random_scores(n_rows, n_items=13, masked=0.3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_rows, n_items, generator=generator)
    scores[torch.rand(n_rows, n_items, generator=generator) < masked] = float("-inf")
    scores[:, 0] = float("-inf")
    return scores


def group_counts(items, n_groups=3):
    return np.bincount(ITEM_GROUP[items[items >= 0]].numpy(), minlength=n_groups)


def test_counts_follow_the_largest_remainder_quotas():
    # K = 10, target (0.5, 0.3, 0.2) -> quotas 5, 3, 2 (exact); the head-only top-10 gives up
    # its 5 lowest head items for the best g1 and g2 items.
    items = reranker(k=10).rerank(descending_scores())
    assert group_counts(items[0]).tolist() == [5, 3, 2]
    assert items[0].tolist() == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]


def test_uniform_target_rounds_by_largest_remainder_ties_to_lower_group():
    # K = 4, 3 groups: 4/3 each -> floors 1, 1, 1, the extra slot to g0.
    items = reranker(k=4, target="uniform").rerank(descending_scores())
    assert group_counts(items[0]).tolist() == [2, 1, 1]
    assert items[0].tolist() == [1, 2, 7, 10]


def test_slots_a_group_cannot_fill_go_to_the_others_by_target():
    # g2 has one candidate (11, 12 masked): quotas 5, 3, 2 -> g2 keeps 1, the freed slot is
    # shared by g0 and g1 in proportion 0.5 : 0.3 -> g0.
    scores = descending_scores()
    scores[0, [11, 12]] = float("-inf")
    items = reranker(k=10).rerank(scores)
    assert group_counts(items[0]).tolist() == [6, 3, 1]


def test_exposure_moves_to_the_target_over_many_rows():
    scores = random_scores(200, masked=0.0)
    before = torch.topk(scores, 10).indices
    after = reranker(k=10).rerank(scores)
    target = TRAIN_SHARE.numpy()
    share = lambda items: group_counts(items.flatten()) / items.numel()
    assert np.abs(share(after) - target).sum() < 1e-9
    assert np.abs(share(after) - target).sum() < np.abs(share(before) - target).sum()


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lists_hold_k_distinct_finite_candidates(lam, seed):
    scores = random_scores(300, masked=0.4, seed=seed)
    k, candidates = 4, 6
    items = reranker(k=k, candidates=candidates, target="uniform", lam=lam).rerank(scores)
    top_candidates = torch.topk(scores, candidates).indices
    finite_candidates = torch.isfinite(torch.topk(scores, candidates).values).sum(dim=1)
    for row in range(len(scores)):
        chosen = [i for i in items[row].tolist() if i >= 0]
        assert len(chosen) == min(k, int(finite_candidates[row]))
        assert len(set(chosen)) == len(chosen)
        assert set(chosen) <= set(top_candidates[row].tolist())
        assert all(torch.isfinite(scores[row, chosen]))
        assert items[row].tolist()[len(chosen):] == [-1] * (k - len(chosen))


@pytest.mark.parametrize("seed", range(10))
def test_target_equal_to_the_current_exposure_keeps_the_order(seed):
    scores = random_scores(1, masked=0.2, seed=seed)
    top = torch.topk(scores, 5).indices[0]
    current = group_counts(top) / 5
    items = reranker(k=5, target=current.tolist()).rerank(scores)
    assert items[0].tolist() == top.tolist()


def test_lambda_one_puts_the_group_furthest_below_target_first():
    # Two groups, target 1/2 each: slot by slot the group with the larger deficit s/2 - c_g
    # goes next (ties to the higher score), so the lists alternate g0, g1, g0, g1.
    item_group = torch.tensor([-1] + [0] * 6 + [1] * 6)
    two_groups = groups(item_group, torch.tensor([0.5, 0.5], dtype=torch.float64))
    items = reranker(k=4, target="uniform", lam=1.0, item_groups=two_groups).rerank(descending_scores())
    assert items[0].tolist() == [1, 7, 2, 8]
    quotas_only = reranker(k=4, target="uniform", lam=0.0, item_groups=two_groups).rerank(descending_scores())
    assert quotas_only[0].tolist() == [1, 2, 7, 8]


def test_rewritten_scores_rank_the_reranked_items_first():
    scores = random_scores(50, masked=0.3)
    model = reranker(k=4, target="uniform", lam=0.5)
    items = model.rerank(scores)
    rewritten = model.rerank_scores(scores)
    top = torch.topk(rewritten, 4)
    full = (items >= 0).all(dim=1)
    assert torch.equal(top.indices[full], items[full])
    untouched = torch.ones_like(scores, dtype=torch.bool)
    rows, slots = torch.nonzero(items >= 0, as_tuple=True)
    untouched[rows, items[rows, slots]] = False
    assert torch.equal(rewritten[untouched], scores[untouched])
    assert torch.equal(torch.isneginf(rewritten), torch.isneginf(scores))


def test_value_scores_are_left_alone():
    scores = torch.randn(7)
    assert reranker().rerank_scores(scores) is scores


def test_config_block():
    assert rerank_config({"rerank": None}) is None
    assert rerank_config({}) is None
    block = rerank_config({"rerank": {"target": "uniform"}})
    assert block == {"method": "exposure", "target": "uniform", "candidates": 50, "k": None, "lambda": 0.0}
    built = build_reranker({"rerank": {"candidates": 20}, "topk": [5, 10]})
    assert (built.k, built.candidates, built.target_spec, built.lam) == (10, 20, "train_share", 0.0)
    for bad in [{"method": "mmr"}, {"target": "popular"}, {"target": [0, 0]}, {"candidates": 0},
                {"lambda": 2}, {"k": 10, "candidates": 5}, {"beta": 1}]:
        with pytest.raises(BiFairInputError):
            rerank_config({"rerank": bad})
    with pytest.raises(BiFairInputError, match="candidates"):
        build_reranker({"rerank": {"candidates": 5}, "topk": [10]})
    with pytest.raises(BiFairInputError, match="3 item groups"):
        reranker(target=[1, 1])


def test_collector_metrics_see_the_reranked_lists(monkeypatch):
    from recbole.evaluator import Evaluator

    monkeypatch.setattr(np, "float", np.float64, raising=False)  # RecBole's NDCG; its Config adds it

    from recbole_bifair.evaluator import FairnessCollector

    config = {"metrics": ["NDCG", "GroupExposure"], "topk": [4], "metric_decimal_place": 8,
              "eval_args": {"mode": {"valid": "full", "test": "full"}}, "device": torch.device("cpu"),
              "item_group": {"n_groups": 3}, "ITEM_ID_FIELD": "item_id", "USER_ID_FIELD": "user_id",
              "rerank": {"target": "uniform", "candidates": 12}}
    train_items = [1, 1, 1, 2, 2, 3] + list(range(4, 13))
    train = SimpleNamespace(dataset=SimpleNamespace(
        iid_field="item_id", uid_field="user_id", item_num=13,
        inter_feat={"item_id": torch.tensor(train_items), "user_id": torch.zeros(len(train_items))}))
    collector = FairnessCollector(config)
    collector.data_collect(train)
    scores = descending_scores()
    expected = collector.reranker.rerank(scores)[0].tolist()
    assert expected != [1, 2, 3, 4]
    positive = expected[-1]
    collector.eval_batch_collect(scores, None, torch.tensor([0]), torch.tensor([positive]))
    result = Evaluator(config).evaluate(collector.get_data_struct())
    assert result["ndcg@4"] == pytest.approx(1 / np.log2(5))
    expected_groups = collector.item_groups.item_group[expected].numpy()
    assert [result[f"groupexposure@4_g{g}"] for g in range(3)] == pytest.approx(
        list(np.bincount(expected_groups, minlength=3) / 4))


@pytest.mark.slow
def test_run_with_rerank_meets_the_exposure_target(tmp_path):
    from recbole_bifair.quick_start import run_recbole_bifair

    metrics = ["NDCG", "GroupExposure", "ExposureDisparity"]

    def run(rerank):
        config = tiny_config(tmp_path, metrics=metrics, topk=[10], rerank=rerank, valid_metric="NDCG@10")
        return run_recbole_bifair("SASRec", "tiny", config_dict=config, saved=False)["test_result"]

    plain = run(None)
    reranked = run({"target": "uniform", "candidates": 50})
    exposure = [reranked[f"groupexposure@10_g{g}"] for g in range(5)]
    assert exposure == pytest.approx([0.2] * 5, abs=0.02)
    assert reranked["exposuredisparity@10"] < plain["exposuredisparity@10"]
