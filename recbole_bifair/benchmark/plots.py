"""The plots of a benchmark report (matplotlib, imported only when plots are written)."""
import re

import numpy as np

from recbole_bifair.files import replaced_atomically


# ---- plots ----------------------------------------------------------------------------------

def write_plots(table, base, k):
    """The per-group NDCG bars and the accuracy-fairness trade-off; returns (paths, notes on
    what was skipped and why)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ["Plots skipped: matplotlib is not installed (pip install recbole-bifair[plot])."]
    paths, notes = [], []
    for plot, suffix in ((plot_group_ndcg, "_group_ndcg.png"), (plot_tradeoff, "_tradeoff.png")):
        figure, note = plot(plt, table, k)
        if figure is None:
            notes.append(note)
            continue
        with replaced_atomically(base + suffix, "wb") as png:
            figure.savefig(png, format="png", dpi=120, bbox_inches="tight")
        plt.close(figure)
        paths.append(base + suffix)
    return paths, notes


def per_group_metrics(names, k):
    """The ``groupndcg@k_g<id>`` names among ``names``, by group id (head group first)."""
    per_group = re.compile(rf"^groupndcg@{k}_g(\d+)$")
    return [m.group(0) for m in sorted(filter(None, map(per_group.match, names)), key=lambda m: int(m.group(1)))]


def group_columns(table, k):
    """The ``groupndcg@k_g<id>`` metrics of the table (its ``<metric>_mean`` columns), by group id."""
    return per_group_metrics([c[: -len("_mean")] for c in table.columns if c.endswith("_mean")], k)


def plot_group_ndcg(plt, table, k):
    """Grouped bars: NDCG@k per item group (x), one bar per model, error bars over seeds."""
    groups = group_columns(table, k)
    if not groups:
        return None, f"Per-group plot skipped: no groupndcg@{k}_g* metrics (add GroupNDCG to metrics)."
    ok = table[table["seeds"] > 0]
    width = 0.8 / max(len(ok), 1)
    figure, axes = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 0.4 * len(ok)), 4))
    x = np.arange(len(groups))
    for offset, (_, row) in enumerate(ok.iterrows()):
        means = [row[f"{g}_mean"] for g in groups]
        stds = np.nan_to_num([row[f"{g}_std"] for g in groups])
        axes.bar(x + (offset - (len(ok) - 1) / 2) * width, means, width, yerr=stds if stds.any() else None,
                 capsize=2, label=row["name"])
    axes.set_xticks(x)
    axes.set_xticklabels([f"g{g.rsplit('_g', 1)[1]}" for g in groups])
    axes.set_xlabel("item group (g0: most training interactions, e.g. the popularity head)")
    axes.set_ylabel(f"NDCG@{k} within the group")
    axes.legend(fontsize="small", ncol=2)
    return figure, None


def plot_tradeoff(plt, table, k):
    """NDCG@k (y) against the NDCG@k gap between item groups (x), one point per model."""
    needed = [f"ndcg@{k}_mean", f"ndcggap@{k}_mean"]
    if not all(c in table.columns for c in needed):
        return None, f"Trade-off plot skipped: it needs ndcg@{k} and ndcggap@{k} (add NDCG and NDCGGap to metrics)."
    ok = table[table["seeds"] > 0]
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for _, row in ok.iterrows():
        axes.errorbar(row[f"ndcggap@{k}_mean"], row[f"ndcg@{k}_mean"],
                      xerr=np.nan_to_num(row[f"ndcggap@{k}_std"]), yerr=np.nan_to_num(row[f"ndcg@{k}_std"]),
                      fmt="o", capsize=3, label=row["name"])
        axes.annotate(row["name"], (row[f"ndcggap@{k}_mean"], row[f"ndcg@{k}_mean"]),
                      textcoords="offset points", xytext=(4, 4), fontsize="small")
    axes.set_xlabel(f"NDCG@{k} gap between item groups (max - min; lower is fairer)")
    axes.set_ylabel(f"NDCG@{k} (higher is better)")
    axes.grid(alpha=0.3)
    return figure, None


def write_frontier_plots(curves_by_split, base, k):
    """``<base>_frontier_<split>.png`` for each split of ``curves_by_split`` (``{split: {method:
    [FrontierPoint]}}``) that has a swept method; returns the paths (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    for split, curves in curves_by_split.items():
        if not any(len(points) > 1 for points in curves.values()):
            continue
        figure = plot_frontier(plt, curves, k, split)
        path = f"{base}_frontier_{split}.png"
        with replaced_atomically(path, "wb") as png:
            figure.savefig(png, format="png", dpi=120, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths


def plot_frontier(plt, curves, k, split):
    """NDCG@k (y) against the gap (x): each method's points joined in order of gap, error bars
    over seeds, each point labelled with its knob value."""
    figure, axes = plt.subplots(figsize=(7, 5))
    for method, points in curves.items():
        ordered = sorted(points, key=lambda p: p.gap)
        line = axes.errorbar([p.gap for p in ordered], [p.ndcg for p in ordered],
                             xerr=np.nan_to_num([p.gap_std for p in ordered]),
                             yerr=np.nan_to_num([p.ndcg_std for p in ordered]),
                             fmt="o-" if len(ordered) > 1 else "s", capsize=2, label=method)
        for p in ordered:
            if p.knob is not None:
                axes.annotate(str(p.knob), (p.gap, p.ndcg), textcoords="offset points", xytext=(3, 3),
                              fontsize="x-small", color=line[0].get_color())
    axes.set_xlabel(f"NDCG@{k} gap between item groups (max - min; lower is fairer)")
    axes.set_ylabel(f"NDCG@{k} (higher is better)")
    axes.set_title(f"{split}: each method over its knob")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small")
    return figure
