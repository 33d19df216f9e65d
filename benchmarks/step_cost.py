"""Per-step training cost of a backbone, its LLM form and its BiFair form on one dataset, as
ratios to the plain backbone measured in the same process (absolute seconds swing with machine
load).

    python benchmarks/step_cost.py --dataset=ml-100k --steps=10 [--backbone=SASRec] [--MAX_ITEM_LIST_LENGTH=20 ...]
    python benchmarks/step_cost.py --dataset=ml-100k --steps=10 --anomaly --profile=8 --variants=first_order

``--anomaly`` also times every model with autograd's anomaly detection on (what importing
RecBole's SINE module leaves switched on; ``recbole_bifair.compat`` switches it off) and
prints the ratio; ``--profile=N`` prints the N operators with the most CPU time over the timed
steps of each model (``torch.profiler``). Extra ``--key=value`` options are RecBole config
overrides for every model.
"""
import argparse
import contextlib
import sys
import time

import torch
from recbole.utils import init_seed

from recbole_bifair.benchmark.spec import parse_overrides
from recbole_bifair.config import Config
from recbole_bifair.model.llm_enhanced import TESTED_BACKBONES
from recbole_bifair.quick_start import prepare_run

BIFAIR_VARIANTS = {
    "outer off": {"bifair_outer": False},
    # one SGD look-ahead step of learning_rate (lookahead_lr: ~), the default before it became 0
    "first_order": {"hypergradient": "first_order", "lookahead_lr": None},
    "finite_difference": {"hypergradient": "finite_difference", "lookahead_lr": None},
    "exact": {"hypergradient": "exact", "lookahead_lr": None},
    # the bi-level step's controls and the look-aheads that see the inner level's response
    "joint": {"llm_update": "joint"},
    "alternating": {"lookahead_lr": 0},  # the default
    "exact-adam1": {"hypergradient": "exact", "lookahead_update": "optimizer"},
    "exact-adam3": {"hypergradient": "exact", "lookahead_update": "optimizer", "lookahead_steps": 3},
    "implicit-neumann": {"hypergradient": "implicit", "implicit_solver": "neumann"},
}


def measured_models(backbone, variants=None):
    """(label, model name, settings) of every measured row, the plain backbone first."""
    rows = [(backbone, backbone, {}), (f"LLM{backbone}", f"LLM{backbone}", {})]
    return rows + [(f"BiFair{backbone} ({variant})", f"BiFair{backbone}", settings)
                   for variant, settings in BIFAIR_VARIANTS.items() if not variants or variant in variants]


def seconds_per_step(model, settings, dataset, overrides, steps, anomaly=False, profile=0):
    config = Config(model=model, dataset=dataset, config_dict={**overrides, **settings})
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, _, built, trainer = prepare_run(config)
    if hasattr(trainer, "set_up"):
        trainer.set_up(train_data)
        trainer.training_step.start_epoch(0)
    batches = [b.to(config["device"]) for _, b in zip(range(steps + 1), train_data)]
    built.train()

    def step(i, batch):
        if hasattr(trainer, "set_up"):
            trainer.training_step.batch_index = i
            trainer.training_step.step(batches[i - 1] if i else None, batch)
        else:
            trainer.optimizer.zero_grad()
            built.calculate_loss(batch).backward()
            trainer.optimizer.step()

    step(0, batches[0])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    with torch.autograd.set_detect_anomaly(anomaly), profiled(profile) as profiler:
        start = time.perf_counter()
        for i, batch in enumerate(batches[1:], start=1):
            step(i, batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / (len(batches) - 1)
    if profiler is not None:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile))
    return seconds


@contextlib.contextmanager
def profiled(rows):
    if not rows:
        yield None
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        yield profiler


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--backbone", default="SASRec", choices=TESTED_BACKBONES)
    parser.add_argument("--anomaly", action="store_true", help="also time each model with anomaly detection on")
    parser.add_argument("--profile", type=int, default=0, help="print the N operators with the most CPU time")
    parser.add_argument("--variants", default=None, help=f"comma-separated BiFair variants (default all: {', '.join(BIFAIR_VARIANTS)})")
    args, rest = parser.parse_known_args(argv)
    overrides = {"state": "WARNING", "show_progress": False, "outer_every": 4}
    overrides.update(parse_overrides(item.lstrip("-") for item in rest))
    sys.argv = sys.argv[:1]
    base = None
    print(f"dataset {args.dataset}, {args.steps} steps, overrides {overrides}, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    variants = args.variants.split(",") if args.variants else None
    for label, model, settings in measured_models(args.backbone, variants):
        seconds = seconds_per_step(model, settings, args.dataset, overrides, args.steps, profile=args.profile)
        base = base or seconds
        line = f"{label:34s} {seconds * 1000:9.1f} ms/step   x{seconds / base:.2f}"
        if args.anomaly:
            with_anomaly = seconds_per_step(model, settings, args.dataset, overrides, args.steps, anomaly=True)
            line += f"   anomaly detection on: {with_anomaly * 1000:9.1f} ms/step (x{with_anomaly / seconds:.2f})"
        print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
