"""Frontiers: a spec entry's sweep, runs reused from another study by fingerprint, the curves'
matched-gap comparison, and the paired bootstrap over test users (on fabricated records)."""
import os

import numpy as np
import pytest

from recbole_bifair import benchmark
from recbole_bifair.benchmark.frontier import FrontierPoint, ndcg_at_gap, paired_bootstrap
from recbole_bifair.errors import BiFairInputError

from test_benchmark import markdown_rows, report, write_records, write_spec

BASE = {"datasets": ["tiny"], "seeds": [1]}


def test_a_sweep_is_one_entry_per_value_of_one_key():
    spec = benchmark.spec_from_dict({**BASE, "models": [
        {"name": "IPS", "model": "IPSSASRec", "config": {"epochs": 2}, "sweep": {"ips_power": [0.25, 1.0]}},
        {"name": "Rerank", "model": "LLMSASRec", "config": {"rerank": {"candidates": 50}},
         "sweep": {"rerank.candidates": [20, 100]}}]})
    assert [e.name for e in spec.models] == ["IPS ips_power=0.25", "IPS ips_power=1.0",
                                             "Rerank rerank.candidates=20", "Rerank rerank.candidates=100"]
    assert spec.models[1].config == {"epochs": 2, "ips_power": 1.0}
    assert spec.models[1].method == "IPS" and spec.models[1].knob == ("ips_power", 1.0)
    assert spec.models[3].config == {"rerank": {"candidates": 100}}


@pytest.mark.parametrize("sweep, message", [({"a": [1], "b": [2]}, "one config key"), ({"a": []}, "non-empty list"),
                                            ({"rerank.k": [1]}, None)])
def test_bad_sweeps_and_entry_keys_are_clear_errors(sweep, message):
    entry = {"name": "X", "model": "SASRec", "sweep": sweep}
    if message is None:  # a dotted key into a block that is not a mapping
        entry["config"] = {"rerank": 3}
        message = "not a mapping"
    with pytest.raises(BiFairInputError, match=message):
        benchmark.spec_from_dict({**BASE, "models": [entry]})
    with pytest.raises(BiFairInputError, match=r"unknown key\(s\) \['sweeps'\]"):
        benchmark.spec_from_dict({**BASE, "models": [{"model": "SASRec", "sweeps": {}}]})


def test_a_run_of_another_study_with_the_same_fingerprint_is_reused(tmp_path):
    other = benchmark.load_spec(write_spec(str(tmp_path), models=[{"name": "A", "model": "SASRec"}], seeds=[1]),
                                output_dir=str(tmp_path / "other"))
    write_records(other, lambda name, seed: {"test_result": {"ndcg@10": 0.5}})
    models = [{"name": "Same config", "model": "SASRec"}, {"name": "Other config", "model": "SASRec",
                                                            "config": {"epochs": 3}}]
    spec = benchmark.load_spec(write_spec(str(tmp_path), models=models, seeds=[1], reuse=[str(tmp_path / "other")]),
                               output_dir=str(tmp_path / "this"))
    same, changed = benchmark.plan_runs(spec)
    assert benchmark.load_record(spec, same)["test_result"] == {"ndcg@10": 0.5}
    assert benchmark.is_finished(benchmark.load_record(spec, same), same)
    assert benchmark.load_record(spec, changed) is None
    assert not os.path.exists(benchmark.record_path(spec, same)), "reused, not copied"
    benchmark.write_reports(spec)  # a report of reused runs only, into a folder not made yet
    assert os.path.isfile(str(tmp_path / "this" / "tiny.md"))


def _point(gap, ndcg):
    return FrontierPoint("m", "m", None, 1, ndcg, gap, 0.0, 0.0, float("nan"), float("nan"))


def test_ndcg_at_a_gap_is_linear_between_the_neighbouring_points_and_nan_outside():
    curve = [_point(0.10, 0.07), _point(0.02, 0.05), _point(0.06, 0.065)]
    assert ndcg_at_gap(curve, 0.04) == pytest.approx(0.0575)
    assert ndcg_at_gap(curve, 0.08) == pytest.approx(0.0675)
    assert ndcg_at_gap(curve, 0.06) == pytest.approx(0.065)
    assert np.isnan(ndcg_at_gap(curve, 0.01)) and np.isnan(ndcg_at_gap(curve, 0.11))


def test_bootstrap_of_a_model_against_itself_is_zero_and_a_tail_gain_closes_the_gap():
    rng = np.random.default_rng(1)
    groups = np.arange(600) % 3
    base = rng.uniform(0, 1, 600) * np.array([0.3, 0.2, 0.1])[groups]
    same = paired_bootstrap(base, base, groups, draws=300)
    assert all(result == (0.0, 0.0, 0.0) for result in same.values())
    tail_gain = base + np.where(groups == 2, 0.05, 0.0)
    found = paired_bootstrap(tail_gain, base, groups, draws=300)
    means = [base[groups == g].mean() for g in range(3)]
    assert found["gap"][0] == pytest.approx(-0.05) and found["gap"][2] < 0, "fairer beyond the noise"
    assert found["worst"][0] == pytest.approx(min(means[2] + 0.05, means[1]) - means[2])
    assert found["head"] == (0.0, 0.0, 0.0)
    assert found["ndcg"][0] == pytest.approx(0.05 / 3) and found["ndcg"][1] > 0
    with pytest.raises(ValueError, match="one item group per user"):
        paired_bootstrap(base, base, np.where(groups == 0, -1, groups))


def _fields(values, groups):
    values = np.clip(values, 0, 1)
    means = [float(values[groups == g].mean()) for g in (0, 1)]
    result = {"ndcg@10": float(values.mean()), "groupndcg@10_g0": means[0], "groupndcg@10_g1": means[1],
              "ndcggap@10": abs(means[0] - means[1]), "ndcgworst@10": min(means)}
    return {"test_result": result, "best_valid_result": result,
            "test_users": {"k": 10, "n": len(values), "users": "u", "ndcg": values.tolist(),
                           "item_group": groups.tolist()}}


def test_report_draws_each_methods_frontier_and_reads_the_subject_against_the_others(tmp_path):
    models = [{"name": "Base", "model": "SASRec"},
              {"name": "BiFairX", "model": "BiFairSASRec", "sweep": {"balancer_temperature": [1.0, 3.0]}},
              {"name": "IPSX", "model": "IPSSASRec", "sweep": {"ips_power": [0.5, 1.0]}}]
    spec = benchmark.load_spec(write_spec(str(tmp_path), models=models, seeds=[2020, 2021], reference="Base"),
                               output_dir=str(tmp_path / "out"))
    n = 400
    groups = np.arange(n) % 2
    base = np.where(groups == 0, 0.3, 0.1) + np.random.default_rng(0).normal(0, 0.02, n)
    # (head shift, tail shift): the BiFair points keep the head, the IPS points level it down
    shifts = {"Base": (0, 0), "BiFairX balancer_temperature=1.0": (-0.02, 0.1),
              "BiFairX balancer_temperature=3.0": (0, 0.05),
              "IPSX ips_power=0.5": (-0.08, 0.02), "IPSX ips_power=1.0": (-0.15, 0.03)}
    write_records(spec, lambda name, seed: _fields(base + np.where(groups == 0, *shifts[name]), groups))
    markdown, _ = report(spec)
    assert "## Frontiers (@10)" in markdown
    valid = markdown_rows(markdown, "### valid")
    assert valid["BiFairX"]["knob"] in ("1.0", "3.0") and valid["IPSX"]["seeds"] == "2"
    matched = markdown_rows(markdown, "### NDCG@10 that BiFairX keeps")
    assert float(matched["IPSX ips_power=0.5"]["margin"]) > 0
    assert matched["Base"]["margin"] == "n/a", "outside BiFairX's gap range"
    assert "mean margin per method: IPSX +" in markdown
    boot = markdown_rows(markdown, "### Paired bootstrap")
    gap = boot["BiFairX balancer_temperature=1.0"]["gap"]
    assert gap.startswith("-") and gap.endswith("*")
    assert os.path.isfile(os.path.join(spec.output_dir, "tiny_frontier_valid.png"))
    assert "![tiny_frontier_test.png](tiny_frontier_test.png)" in markdown


def test_without_a_sweep_only_the_bootstrap_of_the_bifair_entry_against_the_others(tmp_path):
    models = [{"name": "Base", "model": "SASRec"}, {"name": "BiFairX", "model": "BiFairSASRec"},
              {"name": "IPSX", "model": "IPSSASRec"}]
    spec = benchmark.load_spec(write_spec(str(tmp_path), models=models, seeds=[1, 2], reference="Base"),
                               output_dir=str(tmp_path / "out"))
    groups = np.arange(200) % 2
    base = np.where(groups == 0, 0.3, 0.1)
    tail_gain = {"Base": 0.0, "BiFairX": 0.1, "IPSX": 0.02}
    write_records(spec, lambda name, seed: _fields(base + np.where(groups == 1, tail_gain[name], 0.0), groups))
    markdown, _ = report(spec)
    assert "Frontiers" not in markdown and not os.path.exists(os.path.join(spec.output_dir, "tiny_frontier_valid.png"))
    section = markdown.split("### Paired bootstrap", 1)[1].split("\n\n", 2)[2].split("\n\n")[0]
    pairs = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]) for line in section.splitlines()[2:]}
    assert pairs == {("BiFairX", "Base"), ("IPSX", "Base"), ("BiFairX", "IPSX")}
