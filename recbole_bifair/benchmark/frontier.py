"""Frontiers, not points: each fairness method's (gap, NDCG@k) curve over its knob (a spec entry's
``sweep``), on valid and on test, summarised by the NDCG@k one method keeps at another's gaps,
and a paired bootstrap over the test users for the differences in NDCG@k, gap, worst and head
group.

- A method's curve: its swept points (mean over the seeds of each point), joined in order of
  gap. An entry without a sweep is a curve of one point.
- NDCG@k kept at matched gaps: for each point ``(gap_b, ndcg_b)`` of another method inside the
  gap range of the subject's curve, the subject's NDCG@k at ``gap_b`` (linear between its two
  neighbouring points) minus ``ndcg_b``. Positive: the subject's curve lies above that point.
- Paired bootstrap: each user's NDCG@k averaged over the seeds both runs share; users resampled
  with replacement (2,000 draws, fixed seed); per draw each model's group means (a group: the users
  whose test item is in it), then the differences of NDCG@k, gap (max - min), worst (min) and head
  group (g0). The 95% interval is the 2.5th to 97.5th percentile of the draws.
"""
from dataclasses import dataclass
from typing import List

import numpy as np
import pandas as pd

BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_METRICS = ("ndcg", "gap", "worst", "head")


@dataclass
class FrontierPoint:
    """One entry's mean over its seeds on one split: ``ndcg``, ``gap``, ``worst``, ``head``
    (NDCG@k of group 0) and their stds; ``knob`` the swept value (None for an unswept entry)."""
    method: str
    name: str
    knob: object
    seeds: int
    ndcg: float
    gap: float
    worst: float
    head: float
    ndcg_std: float
    gap_std: float


def method_of(entry):
    return entry.method or entry.name


def frontier_points(ok_runs, spec, split):
    """``{method: [FrontierPoint, ...]}`` in the spec's order, on ``split`` (``valid`` or
    ``test``), for every entry with finished runs that report NDCG@k and its gap."""
    k = spec.report_k
    keys = {"ndcg": f"ndcg@{k}", "gap": f"ndcggap@{k}", "worst": f"ndcgworst@{k}", "head": f"groupndcg@{k}_g0"}
    curves = {}
    for entry in spec.models:
        runs = ok_runs[ok_runs["name"] == entry.name]
        if runs.empty:
            continue
        values = {label: _split_values(runs, split, key) for label, key in keys.items()}
        if values["ndcg"].isna().all() or values["gap"].isna().all():
            continue
        point = FrontierPoint(
            method=method_of(entry), name=entry.name, knob=entry.knob[1] if entry.knob else None, seeds=len(runs),
            ndcg_std=_std(values["ndcg"]), gap_std=_std(values["gap"]),
            **{label: float(series.mean()) for label, series in values.items()})
        curves.setdefault(point.method, []).append(point)
    return curves


def _split_values(runs, split, key):
    if split == "valid":
        return pd.Series([(result or {}).get(key) for result in runs["valid_result"]], dtype=float)
    return pd.to_numeric(runs[key], errors="coerce") if key in runs else pd.Series([np.nan] * len(runs))


def _std(series):
    return float(series.std()) if series.notna().sum() > 1 else float("nan")


def ndcg_at_gap(curve: List[FrontierPoint], gap):
    """The curve's NDCG@k at ``gap``, linear between the neighbouring points in order of gap;
    NaN outside the curve's gap range."""
    ordered = sorted(curve, key=lambda p: p.gap)
    gaps = [p.gap for p in ordered]
    if not ordered or gap < gaps[0] or gap > gaps[-1]:
        return float("nan")
    return float(np.interp(gap, gaps, [p.ndcg for p in ordered]))


def matched_gap_rows(curves, subject):
    """Rows (method, point, its gap and NDCG@k, the subject's NDCG@k there, margin) for every
    point of every other method."""
    rows = []
    for method, points in curves.items():
        if method == subject:
            continue
        for point in points:
            at = ndcg_at_gap(curves[subject], point.gap)
            rows.append({"method": method, "point": point.name, "gap": point.gap, "ndcg": point.ndcg,
                         "subject_ndcg": at, "margin": at - point.ndcg})
    return rows


def default_subject(spec):
    """The method whose curve the others are read against: the first swept ``BiFair`` method, or,
    in a spec without one, the first ``BiFair`` entry."""
    bifair = [entry for entry in spec.models if entry.model.startswith("BiFair")]
    swept = [entry for entry in bifair if entry.method]
    return method_of((swept or bifair)[0]) if bifair else None


# ---- paired bootstrap over test users ---------------------------------------------------------

def seed_averaged_users(runs, seeds, k):
    """(per-user NDCG@k averaged over ``seeds``, each user's item group) from the runs'
    ``test_users``, or None when a seed lacks them or the seeds' users or groups differ."""
    by_seed = runs.set_index("seed")
    values, groups, users = [], None, None
    for seed in seeds:
        record = by_seed.at[seed, "test_users"] if seed in by_seed.index else None
        if not isinstance(record, dict) or record.get("k") != k or not record.get("item_group"):
            return None
        if users is not None and (record.get("users") != users or record["item_group"] != groups):
            return None
        users, groups = record.get("users"), record["item_group"]
        values.append(np.asarray(record["ndcg"], dtype=float))
    if not values:
        return None
    return np.mean(values, axis=0), np.asarray(groups, dtype=int)


def _group_means(values, groups, n_groups, draws):
    """``[draws, n_groups]`` group means of ``values`` over the resampled users ``draws``."""
    n_draws = draws.shape[0]
    offsets = (np.arange(n_draws)[:, None] * n_groups + groups[draws]).ravel()
    sums = np.bincount(offsets, weights=values[draws].ravel(), minlength=n_draws * n_groups)
    counts = np.bincount(offsets, minlength=n_draws * n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).reshape(n_draws, n_groups)


def _summaries(values, groups, n_groups, draws):
    means = _group_means(values, groups, n_groups, draws)
    return {"ndcg": values[draws].mean(axis=1), "gap": np.nanmax(means, axis=1) - np.nanmin(means, axis=1),
            "worst": np.nanmin(means, axis=1), "head": means[:, 0]}


def paired_bootstrap(model_values, other_values, groups, draws=BOOTSTRAP_DRAWS, seed=BOOTSTRAP_SEED):
    """``{metric: (difference, low, high)}``: model - other on the full user set, and the 95%
    percentile interval of the difference over ``draws`` resamplings of the users."""
    groups = np.asarray(groups, dtype=int)
    if (groups < 0).any():
        raise ValueError("the bootstrap's group means need one item group per user (leave-one-out test items)")
    n_groups, n_users = int(groups.max()) + 1, len(groups)
    full = np.arange(n_users)[None, :]
    resampled = np.random.default_rng(seed).integers(0, n_users, size=(draws, n_users))
    found = {}
    model_full, other_full = (_summaries(v, groups, n_groups, full) for v in (model_values, other_values))
    model_draws, other_draws = (_summaries(v, groups, n_groups, resampled) for v in (model_values, other_values))
    for metric in BOOTSTRAP_METRICS:
        difference = model_draws[metric] - other_draws[metric]
        low, high = np.nanpercentile(difference, [2.5, 97.5])
        found[metric] = (float(model_full[metric][0] - other_full[metric][0]), float(low), float(high))
    return found


def bootstrap_between(ok_runs, name, other, k):
    """:func:`paired_bootstrap` of entry ``name`` against entry ``other`` over the seeds both
    ran, with the number of seeds; None when the records lack per-user values."""
    a, b = ok_runs[ok_runs["name"] == name], ok_runs[ok_runs["name"] == other]
    seeds = sorted(set(a["seed"]) & set(b["seed"]))
    users_a, users_b = seed_averaged_users(a, seeds, k), seed_averaged_users(b, seeds, k)
    if users_a is None or users_b is None or not np.array_equal(users_a[1], users_b[1]):
        return None
    return paired_bootstrap(users_a[0], users_b[0], users_a[1]), len(seeds)


# ---- the report section ---------------------------------------------------------------------------

def frontier_section(ok_runs, spec):
    """Markdown lines of the report's frontier section; a spec that sweeps nothing gets its paired
    bootstrap only (every model against the reference, the BiFair entry against every other)."""
    subject = default_subject(spec)
    if not any(entry.knob for entry in spec.models):
        return bootstrap_lines(ok_runs, spec, subject)
    k = spec.report_k
    lines = [f"## Frontiers (@{k}): each method over its knob", "",
             f"Each method's points (mean over seeds) over the value of its knob, on valid (where knobs are "
             f"chosen) and test; gap = max - min of the per-group NDCG@{k}, head = group g0. A method "
             f"above another keeps more NDCG@{k} at the same gap.", ""]
    for split in ("valid", "test"):
        lines += [f"### {split}", "", points_table(frontier_points(ok_runs, spec, split)), ""]
    if subject:
        lines += matched_gap_lines(ok_runs, spec, subject)
    lines += bootstrap_lines(ok_runs, spec, subject)
    return lines


def points_table(curves):
    rows = [{"method": method, "knob": "" if p.knob is None else str(p.knob), "seeds": p.seeds,
             "NDCG": _cell(p.ndcg, p.ndcg_std), "gap": _cell(p.gap, p.gap_std), "worst": f"{p.worst:.4f}",
             "head g0": f"{p.head:.4f}"}
            for method, points in curves.items() for p in sorted(points, key=lambda p: p.gap)]
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else "(no finished runs)"


def matched_gap_lines(ok_runs, spec, subject):
    lines = [f"### NDCG@{spec.report_k} that {subject} keeps at the other methods' gaps", "",
             f"For each point of another method inside {subject}'s gap range: {subject}'s NDCG@{spec.report_k} "
             "interpolated at that point's gap, minus the point's own (positive: above it; n/a: outside the "
             "range).", ""]
    for split in ("valid", "test"):
        curves = frontier_points(ok_runs, spec, split)
        if subject not in curves:
            continue
        rows = matched_gap_rows(curves, subject)
        table = [{"point": r["point"], "gap": f"{r['gap']:.4f}", "NDCG": f"{r['ndcg']:.4f}",
                  f"{subject} there": _number(r["subject_ndcg"]), "margin": _number(r["margin"], signed=True)}
                 for r in rows]
        if table:
            lines += [f"{split}:", "", pd.DataFrame(table).to_markdown(index=False, disable_numparse=True), ""]
        margins = pd.DataFrame(rows).groupby("method")["margin"].mean().dropna() if rows else pd.Series(dtype=float)
        if not margins.empty:
            lines += [f"- {split}, mean margin per method: "
                      + "; ".join(f"{m} {v:+.4f}" for m, v in margins.items()), ""]
    return lines


def bootstrap_lines(ok_runs, spec, subject):
    """Against the reference, and each subject point against every other method's point nearest
    its test gap."""
    k = spec.report_k
    pairs = []
    if spec.reference:
        pairs += [(entry.name, spec.reference) for entry in spec.models if entry.name != spec.reference]
    if subject:
        curves = frontier_points(ok_runs, spec, "test")
        for point in curves.get(subject, []):
            for method, points in curves.items():
                if method != subject:
                    nearest = min(points, key=lambda p: abs(p.gap - point.gap))
                    pairs.append((point.name, nearest.name))
    rows = []
    for name, other in dict.fromkeys(pairs):
        found = bootstrap_between(ok_runs, name, other, k)
        if found is None:
            continue
        result, n_seeds = found
        rows.append({"model": name, "against": other, "seeds": n_seeds,
                     **{label: _interval(*result[label]) for label in BOOTSTRAP_METRICS}})
    if not rows:
        return []
    return [f"### Paired bootstrap over the test users (model - against, @{k})", "",
            f"Each user's NDCG@{k} averaged over the seeds both ran, users resampled {BOOTSTRAP_DRAWS} times; "
            "difference on all users [95% interval]. An interval that excludes 0 is a difference beyond the "
            "users' sampling noise (seed noise is in the frontier tables' stds). For the gap, below 0 is fairer.",
            "", pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]


def _interval(difference, low, high):
    mark = " *" if low > 0 or high < 0 else ""
    return f"{difference:+.4f} [{low:+.4f}, {high:+.4f}]{mark}"


def _cell(mean, std):
    return f"{mean:.4f}" if np.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _number(value, signed=False):
    if value is None or np.isnan(value):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
