"""Hyper-parameter search for plugin and RecBole models on RecBole's tools: hyperopt (through
RecBole's ``HyperTuning``) or Ray Tune, with a fairness-accuracy report.

    python run_hyper.py --model=BiFairSASRec --dataset=ml-100k --config_files=my.yaml \\
        --tool=hyperopt --algo=random --max_evals=20 --output_file=hyper/bifair.md
    python run_hyper.py --model=BiFairSASRec --dataset=ml-100k --tool=ray --max_evals=20

The search space is a file in RecBole's format, one parameter per line: ``name choice [a, b]``,
``name uniform low,high``, ``name quniform low,high,q``, ``name loguniform low,high``
(natural-log bounds, as hyperopt's); ``#`` starts a comment. ``BiFair*`` models default to
the shipped ``properties/hyper/BiFair.hyper`` (BiFair's fairness, LLM-layer and bi-level
settings; see the file). The settings every trial shares (model, dataset, config files,
``--key=value``) are checked once before the search: a bad one is one error, not a sweep of
failed trials. A trial whose drawn settings fail is reported as failed and the sweep goes on.

Each trial trains with ``valid_metric`` as its objective: an accuracy metric, a fairness
metric, or a named trade-off such as ``ndcg@10 - 0.5 * ndcggap@10`` (with
``valid_metric_bigger: True``), always on the validation split. The report (Markdown and CSV)
lists every trial's objective, accuracy and fairness on valid and test, and marks the trials
that are Pareto-optimal on valid (accuracy higher, fairness metric in its better direction).
"""
import argparse
import ast
import csv
import math
import os
import sys
from dataclasses import dataclass, field

from recbole_bifair.errors import BiFairInputError, exit_code_of
from recbole_bifair.evaluator.register import metric_is_smaller_better
from recbole_bifair.utils import properties_dir

KINDS = ("choice", "uniform", "quniform", "loguniform")
TOOLS = ("hyperopt", "ray")
ALGOS = ("random", "bayes", "exhaustive")


@dataclass
class SearchParameter:
    name: str
    kind: str
    values: tuple  # choice: the options; uniform/loguniform: (low, high); quniform: (low, high, q)


@dataclass
class Trial:
    params: dict
    objective: float = math.nan
    valid: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    objective_bigger: bool = True
    error: str = ""


# ----- the search space ------------------------------------------------------------------------------
def default_params_file(model):
    if model and model.startswith("BiFair"):
        return os.path.join(properties_dir(), "hyper", "BiFair.hyper")
    raise BiFairInputError(f"no shipped search space for {model}; name one with --params_file (docs/tuning.md).")


def read_search_space(path):
    """The parameters of a RecBole-format search-space file."""
    from recbole_bifair.files import existing_path, open_text

    params = []
    with open_text(existing_path(path, None, "--params_file")) as lines:
        for number, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if line:
                params.append(_parse_line(line, f"{path}, line {number}"))
    if not params:
        raise BiFairInputError(f"search space {path} names no parameter; write lines like 'balancer choice [\"softmax\", \"dro\"]'.")
    return params


def _parse_line(line, where):
    parts = line.split(None, 2)
    if len(parts) < 3 or parts[1] not in KINDS:
        raise BiFairInputError(
            f"{where}: '{line}' is not 'name kind values' with kind one of {', '.join(KINDS)}.")
    name, kind, text = parts
    try:
        values = ast.literal_eval(text.strip() if kind == "choice" else f"({text.strip()})")
    except (ValueError, SyntaxError):
        raise BiFairInputError(f"{where}: cannot read the values '{text}' of {name}.") from None
    expected = {"uniform": 2, "loguniform": 2, "quniform": 3}.get(kind)
    if kind == "choice" and not (isinstance(values, list) and values):
        raise BiFairInputError(f"{where}: a choice needs a non-empty list, e.g. [1, 2].")
    if expected and not (isinstance(values, tuple) and len(values) == expected
                         and all(isinstance(v, (int, float)) for v in values) and values[0] < values[1]):
        raise BiFairInputError(f"{where}: {kind} needs {expected} numbers, low < high, e.g. 'low,high'.")
    return SearchParameter(name, kind, tuple(values))


def _integer_steps(p):
    """A ``quniform`` over whole numbers (e.g. ``outer_every``) draws ints, not ``4.0``."""
    return p.kind == "quniform" and all(float(v).is_integer() for v in p.values)


def hyperopt_space(params):
    from hyperopt import hp
    from hyperopt.pyll import scope

    build = {
        "choice": lambda p: hp.choice(p.name, list(p.values)),
        "uniform": lambda p: hp.uniform(p.name, *p.values),
        "quniform": lambda p: (scope.int(hp.quniform(p.name, *p.values)) if _integer_steps(p)
                               else hp.quniform(p.name, *p.values)),
        "loguniform": lambda p: hp.loguniform(p.name, *p.values),
    }
    return {p.name: build[p.kind](p) for p in params}


def ray_space(params):
    from ray import tune

    build = {
        "choice": lambda p: tune.choice(list(p.values)),
        "uniform": lambda p: tune.uniform(*p.values),
        "quniform": lambda p: (tune.qrandint(*map(int, p.values)) if _integer_steps(p) else tune.quniform(*p.values)),
        "loguniform": lambda p: tune.loguniform(math.exp(p.values[0]), math.exp(p.values[1])),
    }
    return {p.name: build[p.kind](p) for p in params}


# ----- running trials ---------------------------------------------------------------------------------
def run_trial(params, fixed_config, config_files):
    """One training run with ``params`` over the fixed settings."""
    from recbole_bifair.quick_start import objective_function

    result = objective_function(config_dict={**fixed_config, **params}, config_file_list=config_files)
    return Trial(dict(params), float(result["best_valid_score"]), dict(result["best_valid_result"]),
                 dict(result["test_result"]), bool(result["valid_score_bigger"]))


def search_with_hyperopt(params, fixed_config, config_files, algo="random", max_evals=10):
    """RecBole's ``HyperTuning`` over the space; returns every trial."""
    from recbole.trainer import HyperTuning

    trials = []

    def objective(config_dict, config_file_list):
        try:
            trial = run_trial(config_dict, fixed_config, config_file_list)
        except Exception as error:  # a failed trial is reported; the sweep goes on
            trial = Trial(dict(config_dict), error=f"{type(error).__name__}: {error}")
        trials.append(trial)
        bigger = trial.objective_bigger
        score = trial.objective if not trial.error else (-math.inf if bigger else math.inf)
        return {"model": fixed_config.get("model"), "best_valid_score": score, "valid_score_bigger": bigger,
                "best_valid_result": trial.valid, "test_result": trial.test}

    tuner = HyperTuning(objective, space=hyperopt_space(params), fixed_config_file_list=config_files,
                        algo=algo, max_evals=max_evals, early_stop=max_evals)
    tuner.run()
    return trials


FIXED = "_fixed"  # the settings every Ray trial shares travel in its config under this key
DRAWN = "_params"  # the trial's own settings


def _ray_trainable(config):
    from ray.air import session

    trial = run_trial(config[DRAWN], *config[FIXED])
    session.report({"objective": trial.objective, "valid": trial.valid, "test": trial.test,
                    "objective_bigger": trial.objective_bigger})


def draw_settings(params, max_evals, search_seed=None):
    """``max_evals`` random settings from Ray Tune's distributions for the space, drawn with
    a generator of their own: trials seed numpy's global one (``seed``), so Tune's lazy
    sampling from it would give every trial the same settings."""
    import numpy as np

    rng = np.random.default_rng(search_seed)
    space = ray_space(params)
    return [{name: _plain(domain.sample(random_state=rng)) for name, domain in space.items()} for _ in range(max_evals)]


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def search_with_ray(params, fixed_config, config_files, max_evals=10, cpus_per_trial=1, local_mode=False,
                    results_dir="ray_results", search_seed=None):
    """Ray Tune runs ``max_evals`` random settings of the space (``draw_settings``); returns
    every trial."""
    import ray
    from ray import tune

    ray.init(local_mode=local_mode, include_dashboard=False, log_to_driver=False,
             configure_logging=False, ignore_reinit_error=True)
    try:
        analysis = tune.run(
            _ray_trainable,
            config={DRAWN: tune.grid_search(draw_settings(params, max_evals, search_seed)),
                    FIXED: (fixed_config, config_files)},
            resources_per_trial={"cpu": cpus_per_trial},
            local_dir=os.path.abspath(results_dir), verbose=0, raise_on_failed_trial=False,
            chdir_to_trial_dir=False,  # relative paths in the settings keep their meaning
        )
    finally:
        ray.shutdown()
    trials = []
    for ray_trial in analysis.trials:
        result = ray_trial.last_result or {}
        params = ray_trial.config[DRAWN]
        if "objective" in result:
            trials.append(Trial(params, result["objective"], result["valid"], result["test"], result["objective_bigger"]))
        else:
            trials.append(Trial(params, error=f"failed: {ray_trial.error_file or 'no result'}"))
    return trials


# ----- the report ---------------------------------------------------------------------------------------
def pareto_optimal(points, bigger):
    """For each point (a tuple of objectives), whether no other point is at least as good on
    every objective and better on one; ``bigger[i]`` says which way objective ``i`` improves."""
    def at_least(a, b):
        return all((x >= y) if up else (x <= y) for x, y, up in zip(a, b, bigger))

    marks = []
    for i, point in enumerate(points):
        if any(math.isnan(v) for v in point):
            marks.append(False)
            continue
        dominated = any(
            j != i and not any(math.isnan(v) for v in other) and at_least(other, point) and other != point
            for j, other in enumerate(points)
        )
        marks.append(not dominated)
    return marks


def report_rows(trials, accuracy, fairness):
    """One row per trial: its settings, objective, accuracy and fairness on valid and test,
    whether it is Pareto-optimal on valid and whether it is the best by the objective."""
    accuracy, fairness = accuracy.lower(), fairness.lower()
    for trial in trials:
        for split, values in (("valid", trial.valid), ("test", trial.test)):
            missing = [m for m in (accuracy, fairness) if m not in values]
            if values and missing:
                raise BiFairInputError(
                    f"the {split} results have no {', '.join(missing)}; choose --accuracy_metric / "
                    f"--fairness_metric among {', '.join(values)} (or add the metric to `metrics`).")
    points = [(t.valid.get(accuracy, math.nan), t.valid.get(fairness, math.nan)) for t in trials]
    pareto = pareto_optimal(points, (not metric_is_smaller_better(accuracy), not metric_is_smaller_better(fairness)))
    finished = [t for t in trials if not math.isnan(t.objective)]
    best = (max if finished[0].objective_bigger else min)(t.objective for t in finished) if finished else None
    return [
        {
            "trial": number,
            "params": ", ".join(f"{k}={_short(v)}" for k, v in sorted(t.params.items())),
            "objective": t.objective,
            f"valid {accuracy}": t.valid.get(accuracy, math.nan),
            f"valid {fairness}": t.valid.get(fairness, math.nan),
            f"test {accuracy}": t.test.get(accuracy, math.nan),
            f"test {fairness}": t.test.get(fairness, math.nan),
            "pareto": "yes" if mark else "",
            "best": "yes" if best is not None and t.objective == best else "",
            "error": t.error,
        }
        for number, (t, mark) in enumerate(zip(trials, pareto), 1)
    ]


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(rows, output_file, title):
    """``output_file`` (Markdown) and the same table as CSV beside it; returns the Markdown."""
    columns = list(rows[0]) if rows else ["trial"]
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    markdown = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    with open(output_file, "w", encoding="utf-8") as out:
        out.write(markdown)
    with open(os.path.splitext(output_file)[0] + ".csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return markdown


def _cell(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "/")


# ----- command line -------------------------------------------------------------------------------------
def parse_hyper_args(argv):
    parser = argparse.ArgumentParser(prog="python run_hyper.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="BiFairSASRec")
    parser.add_argument("--dataset", "-d", default="ml-100k")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files of the fixed settings")
    parser.add_argument("--params_file", default=None, help="search space (default for BiFair*: the shipped BiFair.hyper)")
    parser.add_argument("--tool", default="hyperopt", choices=TOOLS)
    parser.add_argument("--algo", default="random", choices=ALGOS, help="hyperopt's search (ray: random)")
    parser.add_argument("--max_evals", type=int, default=10, help="number of trials")
    parser.add_argument("--output_file", default="hyper_result.md", help="Markdown report (and .csv beside it)")
    parser.add_argument("--accuracy_metric", default="ndcg@10")
    parser.add_argument("--fairness_metric", default="ndcggap@10")
    parser.add_argument("--cpus_per_trial", type=int, default=1, help="ray: CPUs per trial")
    parser.add_argument("--ray_local_mode", action="store_true", help="ray: run trials in this process")
    parser.add_argument("--search_seed", type=int, default=None, help="ray: seed of the sampler (default: fresh)")
    args, unknown = parser.parse_known_args(argv)
    if args.max_evals < 1:
        raise BiFairInputError(f"--max_evals must be at least 1, got {args.max_evals}.")
    return args, unknown


def fixed_settings(args, unknown):
    """The settings every trial shares: model, dataset and ``--key=value`` overrides."""
    from recbole_bifair.config_values import command_line_settings

    return {"model": args.model, "dataset": args.dataset, **command_line_settings(unknown)}


def hyper_main(argv=None):
    args, unknown = parse_hyper_args(sys.argv[1:] if argv is None else argv)
    fixed = fixed_settings(args, unknown)
    config_files = args.config_files.split() if args.config_files else None
    params = read_search_space(args.params_file or default_params_file(args.model))
    _require_tool(args.tool)
    if args.tool == "hyperopt" and args.algo == "exhaustive":
        _check_exhaustive(params)
    check_fixed_settings(fixed, config_files)
    if args.tool == "hyperopt":
        trials = search_with_hyperopt(params, fixed, config_files, args.algo, args.max_evals)
    else:
        results_dir = os.path.join(os.path.dirname(os.path.abspath(args.output_file)), "ray_results")
        trials = search_with_ray(params, fixed, config_files, args.max_evals, args.cpus_per_trial,
                                 args.ray_local_mode, results_dir, args.search_seed)
    rows = report_rows(trials, args.accuracy_metric, args.fairness_metric)
    title = f"{args.model} on {args.dataset}: {len(trials)} trials ({args.tool})"
    print(write_report(rows, args.output_file, title))
    return 0


def check_fixed_settings(fixed, config_files):
    """The settings every trial shares, checked as a run checks them (config files exist, the
    model is known, each value is valid, the dataset can be found), so a mistake there stops
    the search before its first trial."""
    from recbole_bifair.config import Config
    from recbole_bifair.data import ensure_dataset

    ensure_dataset(Config(config_dict=fixed, config_file_list=config_files))


def _check_exhaustive(params):
    """Exhaustive search runs every combination of choices (RecBole's ``HyperTuning`` ignores
    ``--max_evals`` then), so it needs a space of choices only."""
    others = [p.name for p in params if p.kind != "choice"]
    if others:
        raise BiFairInputError(
            f"--algo=exhaustive needs a space of choices only; {', '.join(others)} "
            "are not. Use --algo=random or bayes, or list values with 'choice'.")
    combinations = math.prod(len(p.values) for p in params)
    print(f"exhaustive search: {combinations} trials (every combination of the choices)")


def _require_tool(tool):
    module = "hyperopt" if tool == "hyperopt" else "ray.tune"
    try:
        __import__(module)
    except ImportError:
        raise BiFairInputError(
            f"--tool={tool} needs {module.split('.')[0]}: pip install 'recbole-bifair[tune]'.") from None


def main(argv=None):
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    return exit_code_of(hyper_main, argv)


if __name__ == "__main__":
    sys.exit(main())
