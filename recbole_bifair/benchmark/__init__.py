"""Benchmark harness: trains and tests every (model, dataset, seed) of a YAML spec, each run in
a fresh process, and writes per-dataset tables (mean and std over seeds) and plots.

    python run_recbole_bifair.py --benchmark=benchmarks/ml-100k.yaml
    python -m recbole_bifair.benchmark benchmarks/ml-100k.yaml [--models SASRec,LLMSASRec]
        [--datasets ml-100k] [--seeds 2020] [--set epochs=1 --set MAX_ITEM_LIST_LENGTH=10]
        [--output_dir DIR] [--force] [--report-only] [--reference NAME] [--verbose]

Spec::

    name: ml-100k               # results go to results/<name>/ unless output_dir is set
    datasets: [ml-100k]
    seeds: [2020, 2021, 2022]
    shared: {...}               # config of every run: split, evaluation, metrics, training
    models:
      - name: SASRec            # display name, unique
        model: SASRec           # any name run_recbole_bifair accepts
        config: {...}           # overrides of `shared` for this model (optional)
        sweep: {ips_power: [0.25, 0.5, 1.0]}   # optional: one entry per value of one key (the
                                # method's knob), named "<name> ips_power=0.25"; a dotted key
                                # (rerank.candidates) sets one key of a config block
    reuse: [results/ml-100k-main]   # optional: studies whose finished runs of the same
                                # fingerprint (config, dataset, seed, versions) are taken, not repeated
    output_dir: ~               # optional; relative to the working folder
    report_k: 10                # optional; the cut-off of the headline columns and plots
    keep_checkpoints: false     # optional; keep each run's best-validation checkpoint
    reference: SASRec           # optional; a display name of `models`: the tables mark the
                                # NDCG@k, gap, worst-group and per-group NDCG@k means that
                                # differ significantly from this model's
    ratio_to: [SASRec, LLMSASRec]   # optional (default: the reference); the report's ratio
                                # table divides every model's means by each of these models'

A run's config is ``shared``, then the model's ``config``, then the ``--set`` overrides, then
its seed. A relative ``data_path`` is taken from the working folder when it exists there,
else from the spec's folder.

Each run is ``python -m recbole_bifair.benchmark --run`` (request on stdin) in a fresh process,
so its peak memory (VmHWM, or ``getrusage`` maxrss off Linux; plus
``torch.cuda.max_memory_allocated`` on a GPU) is its own and a crash does not stop the
benchmark. When it ends, ``runs/<run id>.json`` is written atomically (status, error, result
dict, costs); its full log is ``logs/<run id>.log``. A run already recorded as finished with
the same config is skipped (``--force`` re-runs it); failed runs and runs whose config changed
are run again. ``<dataset>.md``, ``<dataset>.csv`` and the plots ``<dataset>_group_ndcg.png``,
``<dataset>_tradeoff.png`` (matplotlib, ``pip install recbole-bifair[plot]``) cover every
recorded run of the spec, ``--report-only`` rebuilds them without running anything.
``--reference NAME`` marks significance against another model of the spec than its
``reference`` and writes ``<dataset>_vs_<NAME>.*`` beside the spec's own report.

A record also keeps what the convergence and significance columns need: ``best_epoch``,
``valid_scores``, the epoch cap and ``stopping_step`` of the resolved config, and
``test_users``, each test user's NDCG@report_k (rounded to 4 digits, users sorted by token)
with the item group of its test positives. The tables show each model's best epoch (mean and
per seed), flag runs that did not converge (best epoch = the epoch cap, or training ended at
the cap without early stopping), mark significant differences to ``reference`` (paired t-test
over test users for NDCG@k and per-group NDCG@k, over seeds for the gap and the worst group;
p < 0.05), give every model's means as ratios to the ``ratio_to`` models' over the seeds both
have (NDCG@k, gap, worst, head and tail group; test and valid) and, when a record has
``prior_fairness``, its E0 and E columns. A spec that sweeps adds the frontier section
(``frontier``): each method's (gap, NDCG@k) points over its knob on valid and test, the NDCG@k
the first swept BiFair method keeps at the other methods' gaps, a paired bootstrap over test
users, and the plots ``<dataset>_frontier_valid.png`` / ``_test.png``.
"""
import importlib

# The names of the package, each imported from its module on first use: importing the package
# imports none of its modules, so that the run process (``python -m recbole_bifair.benchmark
# --run``) loads ``child`` and ``records`` only, not the harness, report or plot code. Patch a
# function in the module that looks it up (``runner.execute_run``, ``report.cpu_description``).
_EXPORTS = {
    "spec": ("SPEC_KEYS", "ModelEntry", "Spec", "RunPlan", "load_spec", "spec_from_dict", "model_entries",
             "parse_overrides", "select", "plan_runs", "plan_run", "RUN_CONTROL_KEYS", "resolved_identity",
             "record_path", "load_record", "is_finished", "child_config", "resolve_data_path", "checkpoint_dir"),
    "records": ("METRIC_DIGITS", "write_json_atomic", "json_text"),
    "runner": ("Summary", "run_benchmark"),
    "child": ("RUN_FLAG", "child_main", "EvaluationWatch", "user_ndcg", "peak_memory", "peak_rss_mb",
              "device_of_run"),
    "report": ("not_converged", "early_stopping_fired", "runs_frame", "summary_table", "write_reports"),
    "cli": ("COMMAND_VARIABLE", "benchmark_main", "parse_benchmark_args"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
