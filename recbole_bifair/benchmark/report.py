"""The reports of a benchmark: the runs table, the per-model summary with the convergence and
significance columns, the markdown report and CSV of each dataset, and the provenance text
(machine, versions) kept in each run record."""
import os
import platform
from dataclasses import dataclass
from logging import getLogger

import numpy as np
import pandas as pd
import yaml

from recbole_bifair.benchmark.frontier import frontier_points, frontier_section
from recbole_bifair.benchmark.plots import group_columns, per_group_metrics, write_frontier_plots, write_plots
from recbole_bifair.benchmark.records import METRIC_DIGITS
from recbole_bifair.benchmark.spec import _safe, load_record, plan_runs
from recbole_bifair.evaluator.register import metric_is_smaller_better
from recbole_bifair.files import write_text_atomically


COST_DIGITS = {"train_epoch_seconds": 2, "epochs": 1, "wall_seconds": 1, "peak_rss_mb": 0, "peak_gpu_mb": 0}


HEADLINE_METRICS = ("ndcg", "recall", "hit", "mrr", "ndcggap", "ndcgworst", "ndcgworstquarter",
                    "exposuredisparity")


# ---- reports --------------------------------------------------------------------------------

PROVENANCE_COLUMNS = ("gpu", "cpu", "versions", "command", "finished_at")


# Per-run columns of runs_frame that are neither metrics nor costs: the best epoch, whether
# the run did not converge (None: unknown), the per-user test values (a dict).
RUN_COLUMNS = ("best_epoch", "not_converged", "test_users", "valid_result")
PRIOR_PREFIX = "prior_"


def runs_frame(spec):
    """One row per recorded run of ``spec`` (its current config): dataset, name, model, seed,
    status, error, best epoch, convergence, per-user test values, then the test metrics, the
    prior recommender's metrics (``prior_E0_<metric>``, ``prior_E_<metric>``) and costs."""
    rows = []
    for plan in plan_runs(spec):
        record = load_record(spec, plan)
        if not record or record.get("fingerprint") != plan.fingerprint:
            continue
        row = {"dataset": plan.dataset, "name": plan.entry.name, "model": plan.entry.model,
               "seed": plan.seed, "status": record.get("status"), "error": record.get("error"),
               **{key: record.get(key) for key in PROVENANCE_COLUMNS}, **dict.fromkeys(RUN_COLUMNS)}
        if record.get("status") == "ok":
            row.update(best_epoch=record.get("best_epoch"), not_converged=not_converged(record),
                       test_users=record.get("test_users"),
                       valid_result=record.get("best_valid_result") or {})
            row.update(record.get("test_result") or {})
            row.update(prior_columns(record.get("prior_fairness")))
            row.update(diagnostic_columns(record.get("hypergradient_diagnostics")))
            row.update({key: record.get(key) for key in COST_DIGITS if record.get(key) is not None})
        rows.append(row)
    return pd.DataFrame(rows)


def prior_columns(prior_fairness):
    """``{"E0": {metric: v}, "E": {...}}`` -> ``{"prior_E0_<metric>": v, "prior_E_<metric>": v}``."""
    if not isinstance(prior_fairness, dict):
        return {}
    return {f"{PRIOR_PREFIX}{stage}_{metric}": value for stage, metrics in prior_fairness.items()
            if isinstance(metrics, dict) for metric, value in metrics.items()}


SECOND_ORDER_SHARE = "second_order_share"


def diagnostic_columns(diagnostics):
    """``{"second_order_share": v}``: a BiFair run's second-order share of the hypergradient,
    the mean over all its logged outer steps (each epoch's mean weighted by its outer steps)."""
    steps = sum(entry["outer_steps"] for entry in diagnostics or [])
    if not steps:
        return {}
    return {SECOND_ORDER_SHARE: sum(e["second_order_share"] * e["outer_steps"] for e in diagnostics) / steps}


def not_converged(record):
    """Whether a finished run stopped without converging: its best epoch is the epoch cap, or
    it trained up to the cap without early stopping. None when the record cannot tell (no
    ``best_epoch``, e.g. an older record, or no epoch cap)."""
    best = record.get("best_epoch")
    config = record.get("config") or {}
    cap = record.get("epochs_cap", config.get("epochs"))
    if not _is_number(best) or not _is_number(cap):
        return None
    if best >= cap:
        return True
    trained = record.get("epochs")
    if not _is_number(trained) or trained < cap:
        return False
    stopping_step = record.get("stopping_step", config.get("stopping_step"))
    return not early_stopping_fired(record.get("valid_scores"), stopping_step,
                                    record.get("valid_score_bigger", True))


def early_stopping_fired(valid_scores, stopping_step, bigger=True):
    """Whether RecBole's early stopping (``recbole.utils.early_stopping``: a score equal to the
    best counts as an improvement; stop after more than ``stopping_step`` validations without
    one) stopped training at one of ``valid_scores`` ([[epoch, score], ...]). False when the
    scores or ``stopping_step`` are unknown."""
    if not valid_scores or not _is_number(stopping_step):
        return False
    best, steps = None, 0
    for _, score in valid_scores:
        if best is None or (score >= best if bigger else score <= best):
            best, steps = score, 0
        else:
            steps += 1
            if steps > stopping_step:
                return True
    return False


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not pd.isna(value)


def metric_columns(runs):
    """Test metric columns in result order (then the prior recommender's), then the cost
    columns."""
    fixed = {"dataset", "name", "model", "seed", "status", "error", *PROVENANCE_COLUMNS, *RUN_COLUMNS}
    metrics = [c for c in runs.columns if c not in fixed and c not in COST_DIGITS]
    costs = [c for c in COST_DIGITS if c in runs.columns and runs[c].notna().any()]
    return metrics + costs


def summary_table(runs, spec):
    """Per model (spec order): status, seeds, the best epoch (``best_epoch_mean``,
    ``best_epochs`` per seed, ``not_converged`` runs and their seeds), then ``<metric>_mean`` /
    ``<metric>_std`` (sample std over seeds, ddof=1) for every metric and cost; with a
    ``reference``, ``<metric>_p``, ``<metric>_vs_reference`` (better, worse, not significant)
    and ``<metric>_test`` for the metrics of :func:`compared_metrics`."""
    columns = metric_columns(runs)
    comparisons = compare_to_reference(runs, spec)
    rows = []
    for entry in spec.models:
        model_runs = runs[runs["name"] == entry.name]
        if model_runs.empty:
            continue
        ok = model_runs[model_runs["status"] == "ok"]
        values = ok[columns].apply(pd.to_numeric, errors="coerce")
        row = {"name": entry.name, "model": entry.model, "status": _status_text(model_runs, len(spec.seeds)),
               "seeds": len(ok), **best_epoch_summary(ok)}
        for column in columns:
            row[f"{column}_mean"] = values[column].mean()
            row[f"{column}_std"] = values[column].std(ddof=1)
        for metric, comparison in comparisons.get(entry.name, {}).items():
            row.update({f"{metric}_p": comparison.p, f"{metric}_vs_reference": comparison.verdict,
                        f"{metric}_test": comparison.test})
        rows.append(row)
    return pd.DataFrame(rows)


NOT_AVAILABLE = "n/a"


def best_epochs_of(ok_runs):
    """[(seed, best epoch or None, not converged: True/False/None)] of a model's finished runs,
    in seed order."""
    values = []
    for _, run in ok_runs.iterrows():
        epoch = pd.to_numeric(run.get("best_epoch"), errors="coerce")
        flag = run.get("not_converged")
        values.append((run["seed"], None if pd.isna(epoch) else int(epoch), None if pd.isna(flag) else bool(flag)))
    return values


def best_epoch_summary(ok_runs):
    """``best_epoch_mean``, ``best_epochs`` ("9 / 12 / n/a", seed order), ``not_converged``
    (number of runs) and ``not_converged_seeds`` ("2020, 2022") of a model's finished runs."""
    values = best_epochs_of(ok_runs)
    epochs = [epoch for _, epoch, _ in values if epoch is not None]
    flagged = [str(seed) for seed, _, flag in values if flag]
    return {"best_epoch_mean": float(np.mean(epochs)) if epochs else float("nan"),
            "best_epochs": " / ".join(NOT_AVAILABLE if e is None else str(e) for _, e, _ in values),
            "not_converged": len(flagged), "not_converged_seeds": ", ".join(flagged)}


def best_epoch_cell(ok_runs):
    """``10.3 (9 / 12‡ / 10)``: mean best epoch over the seeds, then each seed's (n/a for a record
    without one), ‡ on a run that did not converge; ``n/a`` when no run has one."""
    values = best_epochs_of(ok_runs)
    epochs = [epoch for _, epoch, _ in values if epoch is not None]
    if not epochs:
        return NOT_AVAILABLE
    per_seed = " / ".join(NOT_AVAILABLE if e is None else f"{e}{NOT_CONVERGED_MARK if flag else ''}"
                          for _, e, flag in values)
    return per_seed if len(values) == 1 else f"{np.mean(epochs):.1f} ({per_seed})"


# ---- significance against the reference -------------------------------------------------

SIGNIFICANCE_LEVEL = 0.05
BETTER_MARK, WORSE_MARK, NOT_CONVERGED_MARK = "*", "†", "‡"


@dataclass
class Comparison:
    """A model against the reference on one metric: two-sided p-value of a paired t-test (NaN:
    no test), the mean difference model - reference over the pairs, and the test in words."""
    p: float
    difference: float
    test: str
    bigger_is_better: bool = True

    @property
    def significant(self):
        return not pd.isna(self.p) and self.p < SIGNIFICANCE_LEVEL

    @property
    def verdict(self):
        if pd.isna(self.p):
            return ""
        if not self.significant:
            return "not significant"
        return "better" if (self.difference > 0) == self.bigger_is_better else "worse"


def compared_metrics(columns, k):
    """(over users, over seeds): the metrics compared with the reference. NDCG@k and the
    per-group NDCG@k are means over test users; the NDCG@k gap and worst group are group-level."""
    per_user = [m for m in [f"ndcg@{k}"] if m in columns] + per_group_metrics(columns, k)
    return per_user, [m for m in (f"ndcggap@{k}", f"ndcgworst@{k}") if m in columns]


def compare_to_reference(runs, spec):
    """``{model name: {metric: Comparison}}`` for every model but the reference (none without
    a ``reference`` or finished reference runs). Over users (NDCG@k, per-group NDCG@k): paired
    t-test over the test users of each user's NDCG@k averaged over the seeds both models share,
    when both models' records hold the per-user values of the same users; otherwise, and for
    the group-level metrics (gap, worst group), paired t-test over the shared seeds."""
    if not spec.reference or runs.empty:
        return {}
    ok = runs[runs["status"] == "ok"]
    reference = ok[ok["name"] == spec.reference].set_index("seed")
    if reference.empty:
        return {}
    per_user, per_seed = compared_metrics(metric_columns(runs), spec.report_k)
    comparisons = {}
    for entry in spec.models:
        model = ok[ok["name"] == entry.name].set_index("seed")
        if entry.name == spec.reference or model.empty:
            continue
        shared = [seed for seed in model.index if seed in reference.index]
        users = paired_user_values(model, reference, shared, spec.report_k)
        found = {}
        for metric in per_user + per_seed:
            bigger = not metric_is_smaller_better(metric)
            found[metric] = (_user_comparison(metric, users, bigger) if metric in per_user else None) or \
                _seed_comparison(model.loc[shared, metric], reference.loc[shared, metric], bigger)
        comparisons[entry.name] = found
    return comparisons


def paired_user_values(model, reference, seeds, k):
    """(model's, reference's per-user NDCG@k averaged over the seeds, item group per user or
    None, seeds used) from the ``test_users`` of both models' runs of ``seeds`` that cover the
    same users at cut-off ``k``; None when no seed has them."""
    pairs = []
    for seed in seeds:
        a, b = model.at[seed, "test_users"], reference.at[seed, "test_users"]
        if not (isinstance(a, dict) and isinstance(b, dict) and a.get("k") == k == b.get("k")):
            continue
        if a.get("users") != b.get("users") or len(a.get("ndcg", [])) != len(b.get("ndcg", [])):
            continue
        if pairs and a.get("users") != pairs[0][0].get("users"):
            continue  # another user set than the first seed's (a changed split): not averaged together
        pairs.append((a, b))
    if not pairs:
        return None
    model_values = np.mean([np.asarray(a["ndcg"], dtype=float) for a, _ in pairs], axis=0)
    reference_values = np.mean([np.asarray(b["ndcg"], dtype=float) for _, b in pairs], axis=0)
    groups = [tuple(record.get("item_group") or ()) for pair in pairs for record in pair]
    same_groups = groups[0] and len(groups[0]) == len(model_values) and all(g == groups[0] for g in groups)
    return model_values, reference_values, np.asarray(groups[0]) if same_groups else None, len(pairs)


def _user_comparison(metric, users, bigger):
    """The over-users comparison of NDCG@k or of NDCG@k within one item group (users whose
    test positives all lie in it); None when the per-user values cannot give it."""
    if users is None:
        return None
    model_values, reference_values, groups, n_seeds = users
    if metric.startswith("groupndcg@"):
        # A group's NDCG is the mean over its users of their NDCG only when each user's
        # positives lie in one group (-1 marks a user whose positives span several).
        if groups is None or (groups < 0).any():
            return None
        chosen = groups == int(metric.rsplit("_g", 1)[1])
        model_values, reference_values = model_values[chosen], reference_values[chosen]
    return _paired_t_test(model_values, reference_values, bigger,
                          f"paired t-test over {len(model_values)} users ({_seeds_text(n_seeds)})")


def _seed_comparison(model_values, reference_values, bigger):
    values = pd.DataFrame({"model": pd.to_numeric(model_values, errors="coerce"),
                           "reference": pd.to_numeric(reference_values, errors="coerce")}).dropna()
    return _paired_t_test(values["model"].to_numpy(), values["reference"].to_numpy(), bigger,
                          f"paired t-test over {len(values)} shared seeds")


def _paired_t_test(model_values, reference_values, bigger, test):
    """Two-sided paired t-test (scipy.stats.ttest_rel); p is NaN with fewer than 2 pairs or
    when every pair is equal."""
    import warnings

    from scipy import stats

    difference = float(np.mean(model_values - reference_values)) if len(model_values) else float("nan")
    if len(model_values) < 2:
        return Comparison(float("nan"), difference, f"no test: {test}", bigger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(model_values, reference_values).pvalue)
    return Comparison(p, difference, test, bigger)


def _seeds_text(n_seeds):
    return "1 seed" if n_seeds == 1 else f"mean of {n_seeds} seeds"


def _status_text(model_runs, n_seeds):
    """``ok``; ``ok, 1 of 3 seeds run``; ``failed: <error>``; ``1 of 3 runs failed: <error>``."""
    n_ok = int((model_runs["status"] == "ok").sum())
    n_failed = len(model_runs) - n_ok
    if n_failed == 0:
        return "ok" if n_ok == n_seeds else f"ok, {n_ok} of {n_seeds} seeds run"
    error = model_runs.loc[model_runs["status"] != "ok", "error"].dropna()
    text = "failed" if n_ok == 0 else f"{n_failed} of {len(model_runs)} runs failed"
    return text + (f": {error.iloc[0]}" if len(error) else "")


def format_cell(mean, std, digits=METRIC_DIGITS):
    """``mean ± std`` (mean alone for one seed, empty for no value)."""
    if pd.isna(mean):
        return ""
    if pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def headline_metrics(columns, k):
    return [f"{name}@{k}" for name in HEADLINE_METRICS if f"{name}@{k}" in columns]


def prior_headline_columns(columns, k):
    """The prior recommender's NDCG@k and gap, before (E0) and after (E) training, that ``columns`` has."""
    return [f"{PRIOR_PREFIX}{stage}_{metric}@{k}" for stage in ("E0", "E") for metric in ("ndcg", "ndcggap")
            if f"{PRIOR_PREFIX}{stage}_{metric}@{k}" in columns]


def markdown_tables(table, columns, k, best_epochs=None, reference=None):
    """The headline table (models x main metrics, best epoch, prior columns, costs), the
    per-group NDCG@k table (models x item groups; empty without per-group metrics) and the full
    table (metrics x models); means that differ significantly from the reference's carry its
    mark. ``best_epochs``: the best-epoch cell of each model name."""
    shown = (headline_metrics(columns, k) + prior_headline_columns(columns, k)
             + [c for c in [SECOND_ORDER_SHARE] if c in columns]
             + [c for c in COST_DIGITS if c in columns and c != "wall_seconds"])
    names = [f"{name} (reference)" if name == reference else name for name in table["name"]]
    headline = pd.DataFrame({
        "model": names, "status": table["status"].map(_markdown_safe), "seeds": table["seeds"],
        "best epoch": [(best_epochs or {}).get(name, NOT_AVAILABLE) for name in table["name"]],
        **{c: [_marked_cell(row, c) for _, row in table.iterrows()] for c in shown}})
    groups = group_columns(table, k)
    per_group = pd.DataFrame({"model": names, **{f"g{g.rsplit('_g', 1)[1]}": [
        _marked_cell(row, g) for _, row in table.iterrows()] for g in groups}})
    full = pd.DataFrame({name: [_marked_cell(row, c) for c in columns]
                         for name, (_, row) in zip(names, table.iterrows())}, index=columns)
    full.index.name = "metric"
    return (headline.to_markdown(index=False, disable_numparse=True),
            per_group.to_markdown(index=False, disable_numparse=True) if groups else "",
            full.to_markdown(disable_numparse=True))


def _marked_cell(row, column):
    """``mean ± std`` of a summary-table row, with ``*`` / ``†`` when it is significantly better /
    worse than the reference's."""
    text = format_cell(row[f"{column}_mean"], row[f"{column}_std"], _digits(column))
    mark = {"better": BETTER_MARK, "worse": WORSE_MARK}.get(row.get(f"{column}_vs_reference"), "")
    return f"{text} {mark}" if text and mark else text


def _digits(column):
    return COST_DIGITS.get(column, METRIC_DIGITS)


def _markdown_safe(text, limit=120):
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_reports(spec, command=""):
    """Per dataset: ``<dataset>.md`` (header, tables, plots), ``<dataset>.csv`` and the PNG plots,
    from every recorded run of ``spec``. Returns the paths written."""
    logger = getLogger()
    runs = runs_frame(spec)
    written = []
    for dataset in spec.datasets:
        dataset_runs = runs[runs["dataset"] == dataset] if not runs.empty else runs
        if dataset_runs.empty:
            logger.info(f"{dataset}: no finished runs yet, no report.")
            continue
        table = summary_table(dataset_runs, spec)
        columns = metric_columns(dataset_runs)
        os.makedirs(spec.output_dir, exist_ok=True)  # a study of reused runs only has no folder yet
        base = os.path.join(spec.output_dir, _safe(dataset) + spec.report_suffix)
        write_text_atomically(base + ".csv", table.to_csv(index=False))
        plots, plot_notes = write_plots(table, base, spec.report_k)
        ok = dataset_runs[dataset_runs["status"] == "ok"]
        if any(entry.knob for entry in spec.models):
            plots += write_frontier_plots({split: frontier_points(ok, spec, split) for split in ("valid", "test")},
                                          base, spec.report_k)
        for note in plot_notes:
            logger.warning(note)
        write_text_atomically(base + ".md", markdown_report(spec, dataset, table, columns, dataset_runs, command,
                                                            plots, plot_notes))
        written += [base + ".md", base + ".csv"] + plots
    if written:
        logger.info("Reports: " + ", ".join(written))
    return written


def markdown_report(spec, dataset, table, columns, runs, command, plots, plot_notes):
    ok = runs[runs["status"] == "ok"]
    best_epochs = {entry.name: best_epoch_cell(ok[ok["name"] == entry.name]) for entry in spec.models}
    reference = spec.reference if spec.reference in set(table["name"]) else None
    headline, per_group, full = markdown_tables(table, columns, spec.report_k, best_epochs, reference)
    finished = sorted(runs["finished_at"].dropna()) if "finished_at" in runs else []
    gpus = _distinct(runs, "gpu")
    lines = [
        f"# Benchmark {spec.name}: {dataset}", "",
        *_command_lines(_distinct(runs, "command"), command),
        f"- machine: {'; '.join(_distinct(runs, 'cpu')) or NOT_RECORDED}" + (f"; GPU: {', '.join(gpus)}" if gpus else ""),
        f"- versions: {'; '.join(_distinct(runs, 'versions')) or NOT_RECORDED}",
        f"- runs finished: {_date_range(finished)}",
        f"- seeds: {', '.join(map(str, spec.seeds))} (mean ± sample std over the finished seeds)",
        "", "Shared settings" + (" (with the command's --set overrides):" if spec.overrides else ":"), "",
        "```yaml", yaml.safe_dump({**spec.shared, **spec.overrides}, sort_keys=False).rstrip(), "```", "",
        f"## Main results (@{spec.report_k})", "", headline, "",
        *convergence_notes(table, runs), *significance_notes(table, spec, columns),
        *prior_notes(columns, spec.report_k),
        *diagnostic_notes(columns),
    ]
    if per_group:
        lines += [f"## NDCG@{spec.report_k} per item group", "", per_group, ""]
    ratios = ratio_table(ok, spec)
    if ratios:
        lines += [f"## Ratios of the means (@{spec.report_k})", "",
                  "Each model's mean over the seeds it shares with the model it is divided by, over that "
                  "model's mean on the same seeds (n/a: that mean is 0). head / tail: the first / last item "
                  "group. For the gap, below 1 is fairer.", "", ratios, ""]
    validation = validation_table(ok, spec)
    if validation:
        lines += [f"## Validation split (@{spec.report_k}): where settings are chosen", "",
                  "The model each run tests is its best epoch on valid; these are its valid values, "
                  "mean ± std over the seeds. Choose settings on these, never on the test tables.", "",
                  validation, ""]
    lines += frontier_section(ok, spec)
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    lines += [f"_{note}_" for note in plot_notes]
    lines += ["", "## All test metrics", "", full, ""]
    return "\n".join(lines)


NOT_RECORDED = "not recorded in the run records"


def ratio_table(ok_runs, spec):
    """Markdown: every model's means over each ``ratio_to`` model's (seeds both have); empty
    without ``ratio_to`` models that have finished runs."""
    metrics = run_metrics(ok_runs)
    columns = ratio_columns(metrics, spec.report_k)
    rows = []
    for index, base in enumerate(spec.ratio_to):
        for entry in spec.models:
            if entry.name == base or entry.name in spec.ratio_to[:index]:
                continue  # itself, or the inverse of a row already shown
            seeds = sorted(_seeds_of(metrics, entry.name) & _seeds_of(metrics, base))
            if not seeds or not columns:
                continue
            row = {"model / base": f"{entry.name} / {base}", "seeds": len(seeds)}
            for label, split, metric in columns:
                row[label] = _ratio_cell(_seed_mean(metrics, entry.name, seeds, split, metric),
                                         _seed_mean(metrics, base, seeds, split, metric))
            rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else ""


def run_metrics(ok_runs):
    """``{(name, seed): {"test": metrics, "valid": metrics}}`` of the finished runs."""
    return {(row["name"], row["seed"]): {"test": row.dropna().to_dict(), "valid": row["valid_result"] or {}}
            for _, row in ok_runs.iterrows()}


def ratio_columns(metrics, k):
    """(label, split, metric) of the ratio table: test then valid NDCG@k, gap, worst group, and
    the head and tail groups' NDCG@k, those the runs have (``metrics``: :func:`run_metrics`)."""
    groups = per_group_metrics({name for run in metrics.values() for name in run["test"]}, k)
    wanted = [("NDCG", f"ndcg@{k}"), ("gap", f"ndcggap@{k}"), ("worst", f"ndcgworst@{k}")]
    if groups:
        wanted += [("head", groups[0]), ("tail", groups[-1])]
    return [(f"{split} {label}", split, metric) for split in ("test", "valid") for label, metric in wanted
            if any(metric in run[split] for run in metrics.values())]


def _seeds_of(metrics, name):
    return {seed for run_name, seed in metrics if run_name == name}


def _seed_mean(metrics, name, seeds, split, metric):
    values = [metrics[name, seed][split].get(metric) for seed in seeds]
    values = [v for v in values if _is_number(v)]
    return float(np.mean(values)) if len(values) == len(seeds) else float("nan")


def _ratio_cell(value, base):
    if pd.isna(value) or pd.isna(base):
        return ""
    return NOT_AVAILABLE if base == 0 else f"{value / base:.2f}x"


def validation_table(ok_runs, spec):
    """Markdown: per model, the validation NDCG@k, gap, worst group and per-group NDCG@k of the
    tested (best-epoch) model, mean ± std over the seeds; empty without validation results."""
    k = spec.report_k
    rows = []
    for entry in spec.models:
        results = [r for r in ok_runs.loc[ok_runs["name"] == entry.name, "valid_result"] if r]
        if not results:
            continue
        keys = [f"ndcg@{k}", f"ndcggap@{k}", f"ndcgworst@{k}"]
        keys += per_group_metrics(results[0], k)
        row = {"model": entry.name, "seeds": len(results)}
        for key in keys:
            values = pd.Series([r.get(key) for r in results], dtype=float)
            label = key.replace(f"groupndcg@{k}_", "") if key.startswith("groupndcg@") else key
            row[label] = format_cell(values.mean(), values.std() if len(values) > 1 else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else ""


def convergence_notes(table, runs):
    """The footnote of the best-epoch column: what it is, the runs that did not converge."""
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return []
    lines = ["- best epoch: the epoch whose model is tested (the best validation score; epochs counted "
             "from 1), mean over the seeds, then each seed's; n/a: the record has no best epoch (written "
             "before best epochs were recorded)."]
    flagged = [f"{row['name']} (seed{'s' if row['not_converged'] > 1 else ''} {row['not_converged_seeds']})"
               for _, row in table.iterrows() if row.get("not_converged", 0)]
    if flagged:
        lines.append(f"- {NOT_CONVERGED_MARK} not converged: the best epoch is the epoch cap (`epochs`), or "
                     f"training ran up to the cap without early stopping; train longer to report these runs at "
                     f"convergence: {', '.join(flagged)}.")
    elif ok["best_epoch"].notna().any():
        lines.append(f"- No run is flagged {NOT_CONVERGED_MARK} (not converged): each run with a best epoch "
                     f"stopped early before its epoch cap.")
    return lines + [""]


def significance_notes(table, spec, columns):
    """The legend of the significance marks: reference, threshold, and which test each metric got."""
    if not spec.reference:
        return []
    reference = table[table["name"] == spec.reference]
    if reference.empty or reference["seeds"].iloc[0] == 0:
        return [f"- No significance marks: the reference {spec.reference} has no finished run.", ""]
    k = spec.report_k
    lines = [f"- `{BETTER_MARK}` / `{WORSE_MARK}`: significantly better / worse than the reference "
             f"{spec.reference} (two-sided paired t-test, p < {SIGNIFICANCE_LEVEL}, scipy.stats.ttest_rel; "
             f"each comparison on its own, without correction for multiple comparisons; the p-values are "
             f"in the CSV as `<metric>_p`). The tests:"]
    descriptions = {
        "users": f"over the test users, each user's NDCG@{k} averaged over the seeds both models share "
                 f"(for a group: the users whose test positives are in it)",
        "seeds": "over the seeds both models share (the gap and the worst group are computed over item "
                 "groups, not means over users; other metrics only where the records hold no per-user values)",
        "none": "not tested (fewer than 2 pairs)"}
    per_user, per_seed = compared_metrics(columns, k)
    compared = [name for name, seeds in zip(table["name"], table["seeds"]) if name != spec.reference and seeds]
    for kind, description in descriptions.items():
        items = {}
        for metric in per_user + per_seed:
            tests = table.set_index("name").get(f"{metric}_test")
            if tests is None:
                continue
            models = tuple(name for name in compared if _test_kind(tests.get(name)) == kind)
            if models:
                label = f"NDCG@{k} per item group" if metric.startswith("groupndcg@") else metric
                items.setdefault((label, models), None)
        if items:
            shown = [label if models == tuple(compared) else f"{label} ({', '.join(models)})"
                     for label, models in items]
            lines.append(f"  - {description}: {'; '.join(shown)}")
    return lines + [""]


def _test_kind(test):
    if not isinstance(test, str) or not test:
        return None
    if test.startswith("no test"):
        return "none"
    return "users" if " users" in test else "seeds"


def prior_notes(columns, k):
    if not prior_headline_columns(columns, k):
        return []
    return [f"- prior_E0_* / prior_E_*: a training-free cosine recommender over the model's LLM item "
            f"table before (E0) and after (E) training (the record's `prior_fairness`); a smaller "
            f"prior_E_ndcggap@{k} than prior_E0_ndcggap@{k} means the learned table is fairer.", ""]


def diagnostic_notes(columns):
    if SECOND_ORDER_SHARE not in columns:
        return []
    return ["- second_order_share: ||second-order part|| / ||direct part|| of BiFair's hypergradient, "
            "mean over the run's logged outer steps (a first_order run logs what exact would add, "
            "every hypergradient_diagnostic_every outer steps); docs/method.md, \"The hypergradient\"", ""]


def _command_lines(run_commands, report_command, shown=3):
    """Header lines naming the commands that made the runs (up to ``shown`` of them; the rest
    are in the run records) and the command that wrote the report when it is another."""
    lines = [f"- runs made by: `{text}`" for text in run_commands[:shown]] or [f"- runs made by: {NOT_RECORDED}"]
    if len(run_commands) > shown:
        lines.append(f"- runs made by {len(run_commands) - shown} more commands (each run's command "
                     f"is in its record under runs/)")
    if report_command and report_command not in run_commands[:shown]:
        lines.append(f"- report written by: `{report_command}`")
    return lines


def _distinct(runs, column):
    """The different non-empty values of ``column`` over ``runs``, in first-seen order."""
    if column not in runs:
        return []
    return list(dict.fromkeys(str(v) for v in runs[column].dropna() if str(v)))


def _date_range(timestamps):
    if not timestamps:
        return "unknown"
    first, last = (t.replace("T", " ")[:16] for t in (timestamps[0], timestamps[-1]))
    return first if first == last else f"{first} to {last}"


def cpu_description():
    """CPU model and logical cores of this machine."""
    return f"{cpu_model()}, {os.cpu_count()} logical cores"


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def versions_text():
    import recbole
    import torch

    import recbole_bifair

    return (f"torch {torch.__version__}, recbole {recbole.__version__}, "
            f"recbole-bifair {recbole_bifair.__version__}, python {platform.python_version()}")
