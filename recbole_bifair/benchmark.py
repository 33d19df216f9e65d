"""Benchmark harness: trains and tests every (model, dataset, seed) of a YAML spec, each run in
a fresh process, and writes per-dataset tables (mean and std over seeds) and plots.

    python run_recbole_bifair.py --benchmark=benchmarks/ml-100k.yaml
    python -m recbole_bifair.benchmark benchmarks/ml-100k.yaml [--models SASRec,LLMSASRec]
        [--datasets ml-100k] [--seeds 2020] [--set epochs=1 --set MAX_ITEM_LIST_LENGTH=10]
        [--output_dir DIR] [--force] [--report-only] [--verbose]

Spec::

    name: ml-100k               # results go to results/<name>/ unless output_dir is set
    datasets: [ml-100k]
    seeds: [2020, 2021, 2022]
    shared: {...}               # config of every run: split, evaluation, metrics, training
    models:
      - name: SASRec            # display name, unique
        model: SASRec           # any name run_recbole_bifair accepts
        config: {...}           # overrides of `shared` for this model (optional)
    output_dir: ~               # optional; relative to the working folder
    report_k: 10                # optional; the cut-off of the headline columns and plots
    keep_checkpoints: false     # optional; keep each run's best-validation checkpoint

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
"""
import argparse
import copy
import datetime
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from logging import getLogger
from typing import List

import numpy as np
import pandas as pd
import yaml

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.llm.atomic_file import replaced_atomically, write_text_atomically

RUN_FLAG = "--run"
DEFAULT_PROG = "python -m recbole_bifair.benchmark"
COST_DIGITS = {"train_epoch_seconds": 2, "epochs": 1, "wall_seconds": 1, "peak_rss_mb": 0, "peak_gpu_mb": 0}
METRIC_DIGITS = 4
HEADLINE_METRICS = ("ndcg", "recall", "hit", "mrr", "ndcggap", "ndcgworst", "ndcgworstquarter",
                    "exposuredisparity")
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")
PROGRESS_LINE = re.compile(r"(epoch \d+ (training|evaluating).*|Finished training.*|test result.*)")
SPEC_KEYS = {"name", "datasets", "seeds", "shared", "models", "output_dir", "report_k", "keep_checkpoints"}


@dataclass
class ModelEntry:
    name: str
    model: str
    config: dict = field(default_factory=dict)


@dataclass
class Spec:
    name: str
    datasets: List[str]
    seeds: List[int]
    shared: dict
    models: List[ModelEntry]
    output_dir: str
    spec_dir: str = "."
    report_k: int = 10
    keep_checkpoints: bool = False
    overrides: dict = field(default_factory=dict)


@dataclass
class RunPlan:
    dataset: str
    seed: int
    entry: ModelEntry
    config: dict
    run_id: str
    fingerprint: str


# ---- the spec ----------------------------------------------------------------------------

def load_spec(path, output_dir=None, overrides=None):
    """The :class:`Spec` of a YAML file, validated (BiFairInputError)."""
    if not os.path.isfile(path):
        raise BiFairInputError(f"Benchmark spec {path!r} not found: give the path of a YAML spec.")
    raw = _read_spec_mapping(path)
    if raw.get("base"):
        raw = _with_base(raw, path)
    spec = spec_from_dict(raw, default_name=os.path.splitext(os.path.basename(path))[0])
    spec.spec_dir = os.path.dirname(os.path.abspath(path))
    if output_dir:
        spec.output_dir = output_dir
    spec.overrides = dict(overrides or {})
    return spec


def _read_spec_mapping(path):
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise BiFairInputError(f"Benchmark spec {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise BiFairInputError(f"Benchmark spec {path}: expected a mapping with name, datasets, seeds, models.")
    return raw


def _with_base(raw, path):
    """``base: other.yaml`` (relative to this spec): that spec's datasets, seeds, report_k and
    ``shared`` block, under this spec's own keys; ``shared`` merges key by key."""
    base_path = os.path.join(os.path.dirname(os.path.abspath(path)), raw["base"])
    if not os.path.isfile(base_path):
        raise BiFairInputError(f"Benchmark spec {path}: base {raw['base']!r} not found next to it.")
    base = _read_spec_mapping(base_path)
    merged = {key: base[key] for key in ("datasets", "seeds", "report_k") if key in base}
    merged.update({key: value for key, value in raw.items() if key != "base"})
    merged["shared"] = {**(base.get("shared") or {}), **(raw.get("shared") or {})}
    return merged


def spec_from_dict(raw, default_name="benchmark"):
    """A :class:`Spec` from a parsed YAML mapping."""
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise BiFairInputError(f"Unknown benchmark spec key(s) {unknown}: the keys are {sorted(SPEC_KEYS)}.")
    name = str(raw.get("name") or default_name)
    datasets = _string_list(raw.get("datasets"), "datasets")
    seeds = raw.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
        raise BiFairInputError(f"Benchmark spec: seeds must be a non-empty list of integers, got {seeds!r}.")
    shared = raw.get("shared") or {}
    if not isinstance(shared, dict):
        raise BiFairInputError("Benchmark spec: shared must be a mapping of config keys.")
    return Spec(
        name=name, datasets=datasets, seeds=[int(s) for s in seeds], shared=shared,
        models=model_entries(raw.get("models")),
        output_dir=raw.get("output_dir") or os.path.join("results", name),
        report_k=_report_k(raw.get("report_k") or 10),
        keep_checkpoints=bool(raw.get("keep_checkpoints", False)),
    )


def model_entries(models):
    """The ``models`` list as :class:`ModelEntry` objects (unique display names)."""
    if not isinstance(models, list) or not models:
        raise BiFairInputError("Benchmark spec: models must be a non-empty list of {name, model, config}.")
    entries = []
    for item in models:
        if isinstance(item, str):
            item = {"name": item, "model": item}
        if not isinstance(item, dict) or not item.get("model"):
            raise BiFairInputError(f"Benchmark spec: each model needs at least `model: <ModelName>`, got {item!r}.")
        config = item.get("config") or {}
        if not isinstance(config, dict):
            raise BiFairInputError(f"Benchmark spec: config of model {item['model']!r} must be a mapping.")
        entries.append(ModelEntry(name=str(item.get("name") or item["model"]), model=str(item["model"]), config=config))
    names = [entry.name for entry in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BiFairInputError(f"Benchmark spec: model names must be unique; repeated: {duplicates}.")
    return entries


def _string_list(value, key):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BiFairInputError(f"Benchmark spec: {key} must be a non-empty list, got {value!r}.")
    return [str(v) for v in value]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _report_k(value):
    """``report_k`` as a positive integer (an integer string is accepted, as ``int`` would)."""
    try:
        k = int(value) if isinstance(value, str) else value
    except ValueError:
        k = None
    if not _is_int(k) or k < 1:
        raise BiFairInputError(f"Benchmark spec: report_k must be a positive integer, got {value!r}.")
    return k


def parse_overrides(pairs):
    """``["epochs=1", "rerank={target: uniform}"]`` -> ``{"epochs": 1, "rerank": {...}}`` (YAML values)."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BiFairInputError(f"--set {pair!r}: use --set key=value, e.g. --set epochs=1.")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise BiFairInputError(
                f"--set {pair!r}: the value is not valid YAML ({error}). Quote it or fix its syntax.") from None
    return overrides


def select(spec, models=None, datasets=None, seeds=None):
    """The spec restricted to the given display names, datasets and seeds (None = all)."""
    chosen = replace(spec)
    if models:
        known = [entry.name for entry in spec.models]
        _check_known(models, known, "model", "--models")
        chosen.models = [entry for entry in spec.models if entry.name in models]
    if datasets:
        _check_known(datasets, spec.datasets, "dataset", "--datasets")
        chosen.datasets = [d for d in spec.datasets if d in datasets]
    if seeds:
        chosen.seeds = list(seeds)
    return chosen


def _check_known(given, known, what, option):
    unknown = [g for g in given if g not in known]
    if unknown:
        raise BiFairInputError(f"{option}: unknown {what}(s) {unknown}; the spec has {known}.")


# ---- planning -----------------------------------------------------------------------------

def plan_runs(spec):
    """Every (dataset, seed, model) of the spec, seed-major so that each seed's comparison
    completes before the next seed starts."""
    return [plan_run(spec, dataset, seed, entry)
            for dataset in spec.datasets for seed in spec.seeds for entry in spec.models]


def plan_run(spec, dataset, seed, entry):
    config = {**copy.deepcopy(spec.shared), **copy.deepcopy(entry.config), **copy.deepcopy(spec.overrides),
              "seed": seed}
    identity = {"dataset": dataset, "model": entry.model, "seed": seed, "config": config}
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    run_id = f"{_safe(dataset)}__{_safe(entry.name)}__seed{seed}"
    return RunPlan(dataset=dataset, seed=seed, entry=entry, config=config, run_id=run_id, fingerprint=fingerprint)


def _safe(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def record_path(spec, plan):
    return os.path.join(spec.output_dir, "runs", plan.run_id + ".json")


def load_record(spec, plan):
    """The saved record of ``plan``, or None when there is none or it is unreadable."""
    return _read_json(record_path(spec, plan))


def is_finished(record, plan):
    """Whether ``record`` is a successful run of exactly ``plan``'s config."""
    return bool(record) and record.get("status") == "ok" and record.get("fingerprint") == plan.fingerprint


def child_config(spec, plan):
    """The config_dict the run process gets: the plan's config, paths resolved, checkpoints in
    the run's own folder."""
    config = copy.deepcopy(plan.config)
    if isinstance(config.get("data_path"), str):
        config["data_path"] = resolve_data_path(config["data_path"], spec.spec_dir)
    config.setdefault("show_progress", False)
    config["checkpoint_dir"] = os.path.abspath(checkpoint_dir(spec, plan))
    return config


def resolve_data_path(path, spec_dir):
    """``path`` as given when absolute or present in the working folder, else from ``spec_dir``."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    beside_spec = os.path.join(spec_dir, path)
    return beside_spec if os.path.exists(beside_spec) else path


def checkpoint_dir(spec, plan):
    return os.path.join(spec.output_dir, "checkpoints", plan.run_id)


# ---- running --------------------------------------------------------------------------------

@dataclass
class Summary:
    executed: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    interrupted: bool = False


def run_benchmark(spec, selected=None, force=False, verbose=False, command=""):
    """Run the pending runs of ``selected`` (a selection of ``spec``; default all), then write
    the reports of every recorded run of ``spec``. Returns a :class:`Summary`."""
    logger = getLogger()
    selected = selected or spec
    plans = plan_runs(selected)
    pending = [p for p in plans if force or not is_finished(load_record(spec, p), p)]
    summary = Summary(skipped=[p.run_id for p in plans if p not in pending])
    if summary.skipped:
        logger.info(f"{len(summary.skipped)} of {len(plans)} runs already finished, skipped "
                    f"(--force runs them again).")
    started = time.perf_counter()
    made_by = provenance(command)
    try:
        for index, plan in enumerate(pending, start=1):
            label = f"[{index}/{len(pending)}] {plan.dataset} {plan.entry.name} seed {plan.seed}"
            logger.info(f"{label}: started ({_eta(started, index - 1, len(pending))})")
            record = {**execute_run(spec, plan, label, verbose), **made_by}
            write_json_atomic(record_path(spec, plan), record)
            summary.executed.append(plan.run_id)
            if record["status"] != "ok":
                summary.failed.append(plan.run_id)
            logger.info(f"{label}: {_outcome_text(record)}; "
                        f"{_eta(started, index, len(pending))}")
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning(f"Interrupted after {len(summary.executed)} run(s); finished runs are saved in "
                       f"{os.path.join(spec.output_dir, 'runs')}: run the same command again to resume.")
    write_reports(spec, command)
    return summary


def provenance(command=""):
    """Where and how a run was made, kept in its record so that a report rebuilt elsewhere
    still names the machine, versions and command of the runs."""
    return {"cpu": cpu_description(), "versions": versions_text(), "command": command or None}


def _outcome_text(record):
    took = _duration(record.get("wall_seconds") or 0)
    if record["status"] == "ok":
        return (f"done in {took} ({record.get('epochs')} epochs, {record.get('train_epoch_seconds', 0):.1f} s "
                f"per training epoch, peak RSS {record.get('peak_rss_mb') or 0:.0f} MB)")
    return f"FAILED after {took}: {record.get('error')} (log: {record.get('log')})"


def _eta(started, done, total):
    elapsed = time.perf_counter() - started
    text = f"elapsed {_duration(elapsed)}"
    if done == 0:
        return text + f", {total} run(s) to go"
    left = elapsed / done * (total - done)
    return text + f", about {_duration(left)} left for {total - done} run(s)"


def _duration(seconds):
    return str(datetime.timedelta(seconds=int(round(seconds))))


def execute_run(spec, plan, label="", verbose=False):
    """Run ``plan`` in a fresh process, streaming its progress lines; returns its record."""
    runs_dir = os.path.join(spec.output_dir, "runs")
    logs_dir = os.path.join(spec.output_dir, "logs")
    os.makedirs(runs_dir, exist_ok=True)
    os.makedirs(logs_dir, exist_ok=True)
    outcome_path = os.path.join(runs_dir, f".{plan.run_id}.outcome.json")
    log_path = os.path.join(logs_dir, plan.run_id + ".log")
    _remove(outcome_path)
    request = {"model": plan.entry.model, "dataset": plan.dataset, "config": child_config(spec, plan),
               "outcome": os.path.abspath(outcome_path)}
    started = time.perf_counter()
    returncode, tail = stream_child(request, log_path, label, verbose)
    outcome = _read_json(outcome_path) or {
        "status": "failed", "error": f"the run process ended with code {returncode} before reporting "
                                     f"(killed, out of memory, or crashed): {_last_line(tail)}"}
    _remove(outcome_path)
    if not spec.keep_checkpoints:
        shutil.rmtree(checkpoint_dir(spec, plan), ignore_errors=True)
    return {
        "run_id": plan.run_id, "fingerprint": plan.fingerprint, "dataset": plan.dataset,
        "name": plan.entry.name, "model": plan.entry.model, "seed": plan.seed, "config": plan.config,
        **outcome, "returncode": returncode, "wall_seconds": time.perf_counter() - started,
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "log": os.path.relpath(log_path, spec.output_dir),
    }


def stream_child(request, log_path, label, verbose):
    """Start the run process, copy its output to ``log_path`` and show its progress lines;
    returns (exit code, last lines)."""
    logger = getLogger()
    tail = deque(maxlen=40)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "recbole_bifair.benchmark", RUN_FLAG], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=child_environment())
    try:
        process.stdin.write(json.dumps(request))
        process.stdin.close()
        with open(log_path, "w", encoding="utf-8") as log:
            for line in process.stdout:
                line = ANSI_CODES.sub("", line)
                log.write(line)
                tail.append(line.rstrip())
                shown = line.rstrip() if verbose else _progress_part(line)
                if shown:
                    logger.info(f"    {label} [{_duration(time.perf_counter() - started)}] {shown}")
        return process.wait(), list(tail)
    except BaseException:
        process.kill()
        process.wait()
        raise


def _progress_part(line, limit=160):
    match = PROGRESS_LINE.search(line)
    if not match:
        return None
    text = match.group(0).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def child_environment():
    """The parent's environment, unbuffered, with this copy of the package first on the path."""
    import recbole_bifair

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(recbole_bifair.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in [package_root, env.get("PYTHONPATH")] if p)
    return env


def _last_line(lines):
    return next((line for line in reversed(lines) if line.strip()), "no output")


def _remove(path):
    if os.path.exists(path):
        os.remove(path)


def _read_json(path):
    """The JSON data in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json_atomic(path, data):
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomically(path, json.dumps(data, indent=2, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# ---- the run process ------------------------------------------------------------------------

def child_main():
    """One run (``python -m recbole_bifair.benchmark --run``, request JSON on stdin): train and
    test, then write the outcome (result dict, costs or error) to the request's path."""
    import warnings

    request = json.load(sys.stdin)
    sys.argv = sys.argv[:1]  # RecBole's Config would read --key=value options from it
    warnings.filterwarnings("ignore", category=FutureWarning)
    started = time.perf_counter()
    try:
        from recbole_bifair.quick_start import run_recbole_bifair

        result = run_recbole_bifair(model=request["model"], dataset=request["dataset"],
                                    config_dict=request["config"], saved=True)
        outcome = {"status": "ok", **result}
    except Exception as error:
        traceback.print_exc()
        outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                   "traceback": traceback.format_exc()}
    outcome.update(run_seconds=time.perf_counter() - started, **peak_memory(), **device_of_run())
    write_json_atomic(request["outcome"], outcome)
    return 0 if outcome["status"] == "ok" else 1


def peak_memory():
    """Peak resident memory of this process in MB (VmHWM on Linux, else getrusage's maxrss),
    and the peak GPU memory allocated by torch when the run used CUDA."""
    import torch

    memory = {"peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        memory["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return memory


def peak_rss_mb():
    """Peak resident memory of this process in MB: VmHWM on Linux (this address space's own;
    ru_maxrss would carry over a forking parent's peak), else getrusage's maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def device_of_run():
    """The GPU the run used (None on CPU) and torch's CPU threads."""
    import torch

    gpu = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu = torch.cuda.get_device_name(torch.cuda.current_device())
    return {"gpu": gpu, "torch_threads": torch.get_num_threads()}


# ---- reports --------------------------------------------------------------------------------

PROVENANCE_COLUMNS = ("gpu", "cpu", "versions", "command", "finished_at")


def runs_frame(spec):
    """One row per recorded run of ``spec`` (its current config): dataset, name, model, seed,
    status, error, then the test metrics and costs."""
    rows = []
    for plan in plan_runs(spec):
        record = load_record(spec, plan)
        if not record or record.get("fingerprint") != plan.fingerprint:
            continue
        row = {"dataset": plan.dataset, "name": plan.entry.name, "model": plan.entry.model,
               "seed": plan.seed, "status": record.get("status"), "error": record.get("error"),
               **{key: record.get(key) for key in PROVENANCE_COLUMNS}}
        if record.get("status") == "ok":
            row.update(record.get("test_result") or {})
            row.update({key: record.get(key) for key in COST_DIGITS if record.get(key) is not None})
        rows.append(row)
    return pd.DataFrame(rows)


def metric_columns(runs):
    """Test metric columns in result order, then the cost columns."""
    fixed = {"dataset", "name", "model", "seed", "status", "error", *PROVENANCE_COLUMNS}
    metrics = [c for c in runs.columns if c not in fixed and c not in COST_DIGITS]
    costs = [c for c in COST_DIGITS if c in runs.columns and runs[c].notna().any()]
    return metrics + costs


def summary_table(runs, spec):
    """Per model (spec order): status, seeds, then ``<metric>_mean`` / ``<metric>_std``
    (sample std over seeds, ddof=1) for every metric and cost."""
    columns = metric_columns(runs)
    rows = []
    for entry in spec.models:
        model_runs = runs[runs["name"] == entry.name]
        if model_runs.empty:
            continue
        ok = model_runs[model_runs["status"] == "ok"]
        values = ok[columns].apply(pd.to_numeric, errors="coerce")
        row = {"name": entry.name, "model": entry.model, "status": _status_text(model_runs, len(spec.seeds)),
               "seeds": len(ok)}
        for column in columns:
            row[f"{column}_mean"] = values[column].mean()
            row[f"{column}_std"] = values[column].std(ddof=1)
        rows.append(row)
    return pd.DataFrame(rows)


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


def markdown_tables(table, columns, k):
    """The headline table (models x main metrics and costs) and the full table (metrics x models)."""
    shown = headline_metrics(columns, k) + [c for c in COST_DIGITS if c in columns and c != "wall_seconds"]
    headline = pd.DataFrame({
        "model": table["name"], "status": table["status"].map(_markdown_safe), "seeds": table["seeds"],
        **{c: [format_cell(m, s, _digits(c)) for m, s in zip(table[f"{c}_mean"], table[f"{c}_std"])]
           for c in shown}})
    full = pd.DataFrame(
        {name: [format_cell(row[f"{c}_mean"], row[f"{c}_std"], _digits(c)) for c in columns]
         for name, (_, row) in zip(table["name"], table.iterrows())}, index=columns)
    full.index.name = "metric"
    return headline.to_markdown(index=False, disable_numparse=True), full.to_markdown(disable_numparse=True)


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
        base = os.path.join(spec.output_dir, _safe(dataset))
        write_text_atomically(base + ".csv", table.to_csv(index=False))
        plots, plot_notes = write_plots(table, base, spec.report_k)
        for note in plot_notes:
            logger.warning(note)
        write_text_atomically(base + ".md", markdown_report(spec, dataset, table, columns, dataset_runs, command,
                                                            plots, plot_notes))
        written += [base + ".md", base + ".csv"] + plots
    if written:
        logger.info("Reports: " + ", ".join(written))
    return written


def markdown_report(spec, dataset, table, columns, runs, command, plots, plot_notes):
    headline, full = markdown_tables(table, columns, spec.report_k)
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
    ]
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    lines += [f"_{note}_" for note in plot_notes]
    lines += ["", "## All test metrics", "", full, ""]
    return "\n".join(lines)


NOT_RECORDED = "not recorded in the run records"


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


def group_columns(table, k):
    """The ``groupndcg@k_g<id>`` metrics of the table, by group id."""
    pattern = re.compile(rf"^groupndcg@{k}_g(\d+)_mean$")
    found = [(int(m.group(1)), m.group(0)[: -len("_mean")]) for m in map(pattern.match, table.columns) if m]
    return [name for _, name in sorted(found)]


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


# ---- command line -------------------------------------------------------------------------

def parse_benchmark_args(argv):
    parser = argparse.ArgumentParser(prog="benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", help="the benchmark spec (YAML)")
    parser.add_argument("--benchmark", dest="spec_option", help="the benchmark spec (as run_recbole_bifair.py passes it)")
    parser.add_argument("--models", help="comma-separated display names to run (default: all)")
    parser.add_argument("--datasets", help="comma-separated datasets to run (default: all)")
    parser.add_argument("--seeds", help="comma-separated seeds to run (default: the spec's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (YAML value), repeatable; e.g. --set epochs=1")
    parser.add_argument("--output_dir", help="where results go (default: the spec's, else results/<name>)")
    parser.add_argument("--force", action="store_true", help="run finished runs again")
    parser.add_argument("--report-only", action="store_true", help="only rebuild tables and plots")
    parser.add_argument("--verbose", action="store_true", help="show every log line of the runs")
    args, unknown = parser.parse_known_args(argv)
    args.spec = args.spec or args.spec_option
    if not args.spec:
        parser.error("give a benchmark spec, e.g. benchmarks/ml-100k.yaml")
    args.unknown = unknown
    return args


def _csv_list(text):
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


# A script that starts several harness commands names itself here, so that the run records
# (and the report) give the one command that reproduces them.
COMMAND_VARIABLE = "RECBOLE_BIFAIR_COMMAND"


def benchmark_main(argv=None, prog=DEFAULT_PROG):
    """The command line: run a spec (see the module docstring). Returns the exit code: 0 all
    runs finished, 1 some failed, 2 bad input, 130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [RUN_FLAG]:
        return child_main()
    _ensure_console_logging()
    logger = getLogger()
    try:
        args = parse_benchmark_args(argv)
        if args.unknown:
            logger.warning(f"Ignored arguments: {' '.join(args.unknown)}")
        spec = load_spec(args.spec, output_dir=args.output_dir, overrides=parse_overrides(args.overrides))
        seeds = _csv_list(args.seeds)
        if seeds and not all(s.lstrip("-").isdigit() for s in seeds):
            raise BiFairInputError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. --seeds 2020,2021.")
        selected = select(spec, _csv_list(args.models), _csv_list(args.datasets), [int(s) for s in seeds or []])
    except BiFairInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = os.environ.get(COMMAND_VARIABLE) or " ".join([prog] + [shlex.quote(a) for a in argv])
    if args.report_only:
        write_reports(spec, command)
        return 0
    summary = run_benchmark(spec, selected, force=args.force, verbose=args.verbose, command=command)
    if summary.failed:
        logger.warning(f"{len(summary.failed)} run(s) failed: {', '.join(summary.failed)} "
                       f"(see {os.path.join(spec.output_dir, 'logs')}).")
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0


def _ensure_console_logging():
    """A console handler in RecBole's format when nothing is configured yet."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%d %b %H:%M"))
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(benchmark_main())
