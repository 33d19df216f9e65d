"""The benchmark spec (reading and validating the YAML, ``--set`` overrides, selections) and the
planning of its runs: what each run computes (its config and fingerprint) and where its record,
log and checkpoints go."""
import copy
import functools
import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import List

import yaml

from recbole_bifair.benchmark.records import _read_json
from recbole_bifair.errors import BiFairInputError


SPEC_KEYS = {"name", "datasets", "seeds", "shared", "models", "output_dir", "report_k", "keep_checkpoints",
             "reference", "ratio_to", "reuse"}
MODEL_ENTRY_KEYS = {"name", "model", "config", "sweep"}


@dataclass
class ModelEntry:
    """One model of a spec. An entry expanded from a ``sweep`` has ``method`` (the display name
    of the swept entry) and ``knob`` (``(key, value)``): the points of that method's frontier."""
    name: str
    model: str
    config: dict = field(default_factory=dict)
    method: str = None
    knob: tuple = None


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
    ratio_to: List[str] = field(default_factory=list)
    report_suffix: str = ""
    reuse: List[str] = field(default_factory=list)


@dataclass
class RunPlan:
    dataset: str
    seed: int
    entry: ModelEntry
    config: dict
    run_id: str
    fingerprint: str


# ---- the spec ----------------------------------------------------------------------------

def load_spec(path, output_dir=None, overrides=None, reference=None):
    """The :class:`Spec` of a YAML file, validated (BiFairInputError). ``reference``, a display
    name of its models, replaces the spec's for the report, which is then written as
    ``<dataset>_vs_<reference>.*`` so that the report against the spec's own reference stays."""
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
    if reference is not None:
        spec.reference = _reference(reference, spec.models, "--reference")
        spec.report_suffix = "_vs_" + _safe(reference)
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
        ratio_to=_ratio_to(raw.get("ratio_to"), raw.get("reference"), models),
        reuse=_string_list(raw["reuse"], "reuse") if raw.get("reuse") else [],
    )


def _reference(value, models, key="reference"):
    """``reference`` (or ``key``): None, or the display name of one of ``models``."""
    if value is None:
        return None
    names = [entry.name for entry in models]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a display name YAML reads as a number
    if not isinstance(value, str) or value not in names:
        raise BiFairInputError(f"Benchmark spec: {key} {value!r} is not a model of the spec: give the "
                               f"display name (`name`) of one of its models {names}.")
    return value


def _ratio_to(value, reference, models):
    """``ratio_to``: the display names the report divides every model's means by; the
    ``reference`` when not given."""
    if value is None:
        return [_reference(reference, models)] if reference is not None else []
    return [_reference(name, models, "ratio_to") for name in (value if isinstance(value, list) else [value])]


def model_entries(models):
    """The ``models`` list as :class:`ModelEntry` objects (unique display names), each
    ``sweep`` expanded into one entry per value."""
    if not isinstance(models, list) or not models:
        raise BiFairInputError("Benchmark spec: models must be a non-empty list of {name, model, config}.")
    entries = []
    for item in models:
        if isinstance(item, str):
            item = {"name": item, "model": item}
        if not isinstance(item, dict) or not item.get("model"):
            raise BiFairInputError(f"Benchmark spec: each model needs at least `model: <ModelName>`, got {item!r}.")
        unknown = sorted(set(item) - MODEL_ENTRY_KEYS)
        if unknown:
            raise BiFairInputError(f"Benchmark spec: unknown key(s) {unknown} in model {item['model']!r}: "
                                   f"the keys are {sorted(MODEL_ENTRY_KEYS)}.")
        config = item.get("config") or {}
        if not isinstance(config, dict):
            raise BiFairInputError(f"Benchmark spec: config of model {item['model']!r} must be a mapping.")
        entry = ModelEntry(name=str(item.get("name") or item["model"]), model=str(item["model"]), config=config)
        entries.extend(swept_entries(entry, item["sweep"]) if "sweep" in item else [entry])
    names = [entry.name for entry in entries]
    with_commas = [n for n in names if "," in n]
    if with_commas:
        raise BiFairInputError(f"Benchmark spec: model names cannot contain commas (--models takes a "
                               f"comma-separated list of them): rename {with_commas}.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BiFairInputError(f"Benchmark spec: model names must be unique; repeated: {duplicates}.")
    return entries


def swept_entries(entry, sweep):
    """``sweep: {key: [v1, v2, ...]}`` (one key, the method's knob): one entry per value, named
    ``"<name> key=value"``, its config the entry's with ``key: value``. A dotted key sets one
    key of a config block (``rerank.candidates``)."""
    if not isinstance(sweep, dict) or len(sweep) != 1:
        raise BiFairInputError(f"Benchmark spec: sweep of model {entry.name!r} must map one config key to a "
                               f"list of values, e.g. sweep: {{ips_power: [0.25, 0.5, 1.0]}}; got {sweep!r}.")
    (key, values), = sweep.items()
    if not isinstance(values, list) or not values:
        raise BiFairInputError(f"Benchmark spec: sweep {key!r} of model {entry.name!r} needs a non-empty list "
                               f"of values, got {values!r}.")
    return [ModelEntry(name=f"{entry.name} {key}={_value_text(value)}", model=entry.model,
                       config=_with_value(entry.config, key, value), method=entry.name, knob=(key, value))
            for value in values]


def _with_value(config, key, value):
    block, dot, inner = key.partition(".")
    if not dot:
        return {**config, key: value}
    given = config.get(block) or {}
    if not isinstance(given, dict):
        raise BiFairInputError(f"Benchmark spec: sweep {key!r} sets a key of block {block!r}, which is {given!r}, "
                               "not a mapping.")
    return {**config, block: {**given, inner: value}}


def _value_text(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


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
# Settings that change nothing at the value given here (a term switched off), each with the keys
# that only matter when it is on: at that value they are left out of a run's identity, so adding
# such a setting keeps the runs recorded before it.
INERT_SETTINGS = {"outer_prior_weight": (0.0, ("outer_prior_temperature", "outer_prior_balancer")),
                  "outer_prior_balancer": (None, ()),
                  "balancer_contrast": (None, ()),
                  "learned_weight_learning_rate": (0.01, ()),
                  "meta_split": (None, ()),
                  "outer_llm_table": (True, ()),
                  "outer_gate_learning_rate": (None, ()),
                  "fast_loader": (False, ()),  # YAML reads `off` as false
                  "item_group": (None, ())}


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
    return {"config": _without_inert_settings({**defaults, **config}),
            "versions": {"recbole_bifair": recbole_bifair.__version__, "recbole": recbole.__version__}}


def _without_inert_settings(config):
    config = dict(config)
    for key, (inert_value, dependents) in INERT_SETTINGS.items():
        if key in config and config[key] == inert_value:
            for name in (key, *dependents):
                config.pop(name, None)
    return config


def _safe(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def record_path(spec, plan):
    return os.path.join(spec.output_dir, "runs", plan.run_id + ".json")


def load_record(spec, plan):
    """The saved record of ``plan``, or None when there is none or it is unreadable. Without one
    of its own, a finished run of the same fingerprint recorded by another study of ``reuse``
    (its ``runs/`` folder) is taken: the same config, dataset, seed and versions, so the same
    run."""
    record = _read_json(record_path(spec, plan))
    if record is None and spec.reuse:
        record = reusable_records(tuple(_reuse_dirs(spec))).get(plan.fingerprint)
    return record


def _reuse_dirs(spec):
    return [resolve_data_path(path, spec.spec_dir) for path in spec.reuse]


@functools.lru_cache(maxsize=None)
def reusable_records(study_dirs):
    """``{fingerprint: record}`` of the finished runs recorded in ``study_dirs``."""
    found = {}
    for study in study_dirs:
        for path in sorted(glob.glob(os.path.join(study, "runs", "*.json"))):
            record = _read_json(path)
            if record and record.get("status") == "ok" and record.get("fingerprint"):
                found.setdefault(record["fingerprint"], record)
    return found


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
