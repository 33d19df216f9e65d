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
    reference: SASRec           # optional; a display name of `models`: the tables mark the
                                # NDCG@k, gap, worst-group and per-group NDCG@k means that
                                # differ significantly from this model's

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

A record also keeps what the convergence and significance columns need: ``best_epoch``,
``valid_scores``, the epoch cap and ``stopping_step`` of the resolved config, and
``test_users``, each test user's NDCG@report_k (rounded to 4 digits, users sorted by token)
with the item group of its test positives. The tables show each model's best epoch (mean and
per seed), flag runs that did not converge (best epoch = the epoch cap, or training ended at
the cap without early stopping), mark significant differences to ``reference`` (paired t-test
over test users for NDCG@k and per-group NDCG@k, over seeds for the gap and the worst group;
p < 0.05) and, when a record has ``prior_fairness``, its E0 and E columns.
"""
import argparse
import contextlib
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

from recbole_bifair.errors import INTERRUPTED_EXIT_CODE, BiFairInputError, exit_code_of
from recbole_bifair.llm.atomic_file import replaced_atomically, write_text_atomically

RUN_FLAG = "--run"
DEFAULT_PROG = "python -m recbole_bifair.benchmark"
COST_DIGITS = {"train_epoch_seconds": 2, "epochs": 1, "wall_seconds": 1, "peak_rss_mb": 0, "peak_gpu_mb": 0}
METRIC_DIGITS = 4
HEADLINE_METRICS = ("ndcg", "recall", "hit", "mrr", "ndcggap", "ndcgworst", "ndcgworstquarter",
                    "exposuredisparity")
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")
PROGRESS_LINE = re.compile(r"(epoch \d+ (training|evaluating).*|Finished training.*|test result.*)")
SPEC_KEYS = {"name", "datasets", "seeds", "shared", "models", "output_dir", "report_k", "keep_checkpoints",
             "reference"}


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
    reference: str = None


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
    models = model_entries(raw.get("models"))
    return Spec(
        name=name, datasets=datasets, seeds=[int(s) for s in seeds], shared=shared, models=models,
        output_dir=raw.get("output_dir") or os.path.join("results", name),
        report_k=_report_k(raw.get("report_k") or 10),
        keep_checkpoints=bool(raw.get("keep_checkpoints", False)),
        reference=_reference(raw.get("reference"), models),
    )


def _reference(value, models):
    """``reference``: None, or the display name of one of ``models``."""
    if value is None:
        return None
    names = [entry.name for entry in models]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a display name YAML reads as a number
    if not isinstance(value, str) or value not in names:
        raise BiFairInputError(f"Benchmark spec: reference {value!r} is not a model of the spec: give the "
                               f"display name (`name`) of one of its models {names}.")
    return value


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
    identity = {"dataset": dataset, "model": entry.model, "seed": seed,
                **resolved_identity(entry.model, dataset, config)}
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    run_id = f"{_safe(dataset)}__{_safe(entry.name)}__seed{seed}"
    return RunPlan(dataset=dataset, seed=seed, entry=entry, config=config, run_id=run_id, fingerprint=fingerprint)


# Keys that say how a run is carried out, not what it computes: a default added for them does not
# make finished runs stale.
RUN_CONTROL_KEYS = ("resume",)


def resolved_identity(model, dataset, config):
    """What decides a run's result besides its seed: ``config`` over the plugin's defaults (the
    values of every plugin YAML file layered under the run, merged as the plugin's ``Config``
    merges them), and the plugin's and RecBole's versions. A run recorded before a default it
    uses changed gets another fingerprint and is run again, not reused; a default it does not
    load (the LLM keys, for a plain RecBole model) leaves it alone."""
    import recbole

    import recbole_bifair
    from recbole_bifair.config import plugin_yaml_files
    from recbole_bifair.model.llm_enhanced import split_family_name

    defaults = {}
    for path in plugin_yaml_files(model, split_family_name(model)[0], dataset):
        with open(path, encoding="utf-8") as file:
            defaults.update(yaml.safe_load(file) or {})
    for key in RUN_CONTROL_KEYS:
        defaults.pop(key, None)
    return {"config": {**defaults, **config},
            "versions": {"recbole_bifair": recbole_bifair.__version__, "recbole": recbole.__version__}}


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
        with sigterm_as_ctrl_c():
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
               "outcome": os.path.abspath(outcome_path), "report_k": spec.report_k}
    started = time.perf_counter()
    try:
        returncode, tail = stream_child(request, log_path, label, verbose)
        outcome = _read_json(outcome_path) or {
            "status": "failed", "error": f"the run process ended with code {returncode} before reporting "
                                         f"(killed, out of memory, or crashed): {_last_line(tail)}"}
    finally:
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
        with open(log_path, "w", encoding="utf-8", buffering=1) as log:  # line by line, for tail -f
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


def _stop_with_parent():
    """In the run process (Linux): receive SIGTERM when the harness dies, even by SIGKILL, so
    that no run goes on orphaned."""
    import ctypes
    import signal

    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != os.environ.get(HARNESS_PID_VARIABLE, str(os.getppid())):
        sys.exit(143)  # the harness died before the line above


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """While runs execute, SIGTERM (what ``timeout`` and ``kill`` send) stops the harness as
    Ctrl-C does: the run process is stopped, its outcome file removed and the finished runs
    reported."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _progress_part(line, limit=160):
    match = PROGRESS_LINE.search(line)
    if not match:
        return None
    text = match.group(0).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


HARNESS_PID_VARIABLE = "RECBOLE_BIFAIR_HARNESS_PID"


def child_environment():
    """The parent's environment, unbuffered, with this copy of the package first on the path."""
    import recbole_bifair

    env = dict(os.environ, PYTHONUNBUFFERED="1", **{HARNESS_PID_VARIABLE: str(os.getpid())})
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
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (indented, with
    each list of numbers on one line, so that a record's per-user values stay compact)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomically(path, json_text(data))


# A list of numbers as json.dumps(indent=2) writes it: one element a line. A string never holds a
# raw line break (JSON escapes it), so the pattern matches structure only.
_NUMBER = r"-?\d[\d.eE+-]*"
_NUMBER_LIST = re.compile(rf"\[\n\s*({_NUMBER}(?:,\n\s*{_NUMBER})*)\n\s*\]")


def json_text(data):
    """``data`` as indented JSON, lists of numbers on one line each."""
    text = json.dumps(data, indent=2, default=_json_default)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(re.split(r",\n\s*", m.group(1))) + "]", text)


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

    _stop_with_parent()
    request = json.load(sys.stdin)
    sys.argv = sys.argv[:1]  # RecBole's Config would read --key=value options from it
    warnings.filterwarnings("ignore", category=FutureWarning)
    started = time.perf_counter()
    try:
        from recbole_bifair import quick_start

        watch = EvaluationWatch(request.get("report_k"))
        with watch.watching(quick_start):
            result = quick_start.run_recbole_bifair(model=request["model"], dataset=request["dataset"],
                                                    config_dict=request["config"], saved=True)
        outcome = {"status": "ok", **watch.record_fields(result), **result}
    except Exception as error:
        traceback.print_exc()
        outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                   "traceback": traceback.format_exc()}
    outcome.update(run_seconds=time.perf_counter() - started, **peak_memory(), **device_of_run())
    write_json_atomic(request["outcome"], outcome)
    return 0 if outcome["status"] == "ok" else 1


class EvaluationWatch:
    """Keeps, from the trainer of a run, what its record needs beyond the result dict: the
    epoch cap and early-stopping settings of the resolved config, and each test user's
    NDCG@k, from the rows RecBole's evaluator gets when the run tests its model.

    ``watching(quick_start)`` wraps ``quick_start.prepare_run`` for the run; the trainer's
    ``evaluate``, collector and evaluator are wrapped, not changed: the metrics see the same
    data. Only evaluations of the test split are kept (the model's test, then any other
    evaluation of the split, e.g. the prior-fairness one); ``record_fields(result)`` takes the
    one whose result dict is ``result["test_result"]``."""

    def __init__(self, k):
        self.k = k
        self.config = None
        self.dataset = None
        self.test_evaluations = []  # (result dict, struct, user id of each row or None)
        self._on_test_split = False
        self._batch_users = []

    @contextlib.contextmanager
    def watching(self, quick_start):
        prepare_run = quick_start.prepare_run

        def prepare_and_watch(config):
            prepared = prepare_run(config)
            self.attach(config, prepared[0], prepared[-1], prepared[3])
            return prepared

        quick_start.prepare_run = prepare_and_watch
        try:
            yield self
        finally:
            quick_start.prepare_run = prepare_run

    def attach(self, config, dataset, trainer, test_data):
        self.config, self.dataset = config, dataset
        collector, evaluator = getattr(trainer, "eval_collector", None), getattr(trainer, "evaluator", None)
        if collector is None or evaluator is None:
            getLogger().warning("Per-user test values not recorded: the trainer has no eval_collector/evaluator.")
            return
        evaluate_split, collect_batch, evaluate = trainer.evaluate, collector.eval_batch_collect, evaluator.evaluate
        user_field = config["USER_ID_FIELD"]

        def watched_evaluate_split(eval_data, *args, **kwargs):
            self._on_test_split, self._batch_users = eval_data is test_data, []
            try:
                return evaluate_split(eval_data, *args, **kwargs)
            finally:
                self._on_test_split = False

        def watched_collect_batch(scores_tensor, interaction, positive_u, positive_i):
            if self._on_test_split:
                users = interaction[user_field] if user_field in interaction else None
                rows_are_users = users is not None and len(users) == len(scores_tensor)
                self._batch_users.append(users.detach().cpu().numpy() if rows_are_users else None)
            return collect_batch(scores_tensor, interaction, positive_u, positive_i)

        def watched_evaluate(struct):
            result = evaluate(struct)
            if self._on_test_split:
                batches, self._batch_users = self._batch_users, []
                complete = bool(batches) and all(b is not None for b in batches)
                self.test_evaluations.append((result, struct, np.concatenate(batches) if complete else None))
            return result

        trainer.evaluate = watched_evaluate_split
        collector.eval_batch_collect = watched_collect_batch
        evaluator.evaluate = watched_evaluate

    def record_fields(self, result=None):
        """``epochs_cap``, ``stopping_step``, ``eval_step`` and ``test_users`` (when it could be
        computed; a problem here is logged, never fails the run)."""
        fields = {}
        if self.config is not None:
            fields.update(epochs_cap=self.config["epochs"], stopping_step=self.config["stopping_step"],
                          eval_step=self.config["eval_step"])
        try:
            users = self.test_users((result or {}).get("test_result"))
        except Exception as error:  # bookkeeping only: the run's result stands without it
            getLogger().warning(f"Per-user test values not recorded: {type(error).__name__}: {error}")
            users = None
        if users:
            fields["test_users"] = users
        return fields

    def test_users(self, test_result=None):
        """``{"k", "n", "users", "ndcg", "item_group"}`` of the evaluation that gave
        ``test_result`` (else the first one of the test split): NDCG@k per test user and the
        item group of the user's test positives (-1: several groups; absent without the
        fairness metrics' group data), users sorted by token; ``users`` is a digest of that order."""
        from recbole_bifair.evaluator.metrics import GROUP_POS

        chosen = [e for e in self.test_evaluations if e[0] is test_result] or self.test_evaluations[:1]
        if not chosen or not self.k:
            return None
        _, struct, user_ids = chosen[0]
        if user_ids is None or "rec.topk" not in struct:
            return None
        topk = struct.get("rec.topk").numpy()
        if self.k > topk.shape[1] - 1 or len(user_ids) != len(topk):
            return None
        ndcg = user_ndcg(topk[:, :-1].astype(bool), topk[:, -1], self.k)
        tokens = np.asarray(self.dataset.id2token(self.config["USER_ID_FIELD"], user_ids)).astype(str)
        order = np.argsort(tokens, kind="stable")
        users = {"k": self.k, "n": len(order),
                 "users": hashlib.sha256("\n".join(tokens[order]).encode()).hexdigest()[:16],
                 "ndcg": [round(float(v), METRIC_DIGITS) for v in ndcg[order]]}
        if GROUP_POS in struct:
            positives = struct.get(GROUP_POS).numpy() > 0
            group = np.where(positives.sum(axis=1) == 1, positives.argmax(axis=1), -1)
            users["item_group"] = [int(g) for g in group[order]]
        return users


def user_ndcg(hits, positives, k):
    """NDCG@k of each row, as RecBole's NDCG computes it: ``hits`` [n x K] (K >= k) whether
    each top-K slot holds a positive, ``positives`` [n] the row's number of positives."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discount).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(positives, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)


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
            row.update({key: record.get(key) for key in COST_DIGITS if record.get(key) is not None})
        rows.append(row)
    return pd.DataFrame(rows)


def prior_columns(prior_fairness):
    """``{"E0": {metric: v}, "E": {...}}`` -> ``{"prior_E0_<metric>": v, "prior_E_<metric>": v}``."""
    if not isinstance(prior_fairness, dict):
        return {}
    return {f"{PRIOR_PREFIX}{stage}_{metric}": value for stage, metrics in prior_fairness.items()
            if isinstance(metrics, dict) for metric, value in metrics.items()}


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
SMALLER_IS_BETTER = ("ndcggap",)


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
    per_group = re.compile(rf"^groupndcg@{k}_g(\d+)$")
    groups = sorted((int(m.group(1)), m.group(0)) for m in map(per_group.match, columns) if m)
    per_user = [m for m in [f"ndcg@{k}"] if m in columns] + [name for _, name in groups]
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
            bigger = metric.split("@")[0] not in SMALLER_IS_BETTER
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
    ]
    if per_group:
        lines += [f"## NDCG@{spec.report_k} per item group", "", per_group, ""]
    validation = validation_table(ok, spec)
    if validation:
        lines += [f"## Validation split (@{spec.report_k}): where settings are chosen", "",
                  "The model each run tests is its best epoch on valid; these are its valid values, "
                  "mean ± std over the seeds. Choose settings on these, never on the test tables.", "",
                  validation, ""]
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    lines += [f"_{note}_" for note in plot_notes]
    lines += ["", "## All test metrics", "", full, ""]
    return "\n".join(lines)


NOT_RECORDED = "not recorded in the run records"


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
        keys += sorted((key for key in results[0] if key.startswith(f"groupndcg@{k}_g")),
                       key=lambda key: int(key.rsplit("_g", 1)[1]))
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
    return exit_code_of(_benchmark_command, argv, prog)


def _benchmark_command(argv, prog):
    _ensure_console_logging()
    logger = getLogger()
    args = parse_benchmark_args(argv)
    if args.unknown:
        logger.warning(f"Ignored arguments: {' '.join(args.unknown)}")
    spec = load_spec(args.spec, output_dir=args.output_dir, overrides=parse_overrides(args.overrides))
    seeds = _csv_list(args.seeds)
    if seeds and not all(s.lstrip("-").isdigit() for s in seeds):
        raise BiFairInputError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. --seeds 2020,2021.")
    selected = select(spec, _csv_list(args.models), _csv_list(args.datasets), [int(s) for s in seeds or []])
    command = os.environ.get(COMMAND_VARIABLE) or " ".join([prog] + [shlex.quote(a) for a in argv])
    if args.report_only:
        write_reports(spec, command)
        return 0
    summary = run_benchmark(spec, selected, force=args.force, verbose=args.verbose, command=command)
    if summary.failed:
        logger.warning(f"{len(summary.failed)} run(s) failed: {', '.join(summary.failed)} "
                       f"(see {os.path.join(spec.output_dir, 'logs')}).")
    if summary.interrupted:
        return INTERRUPTED_EXIT_CODE
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
