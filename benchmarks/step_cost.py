"""Per-step training cost of SASRec, LLMSASRec and BiFairSASRec on one dataset, as ratios to
SASRec measured in the same process (absolute seconds swing with machine load).

    python benchmarks/step_cost.py --dataset=ml-100k --steps=10 [--MAX_ITEM_LIST_LENGTH=20 ...]

Extra ``--key=value`` options are RecBole config overrides for every model.
"""
import argparse
import sys
import time

import torch
from recbole.utils import init_seed

from recbole_bifair.benchmark import parse_overrides
from recbole_bifair.config import Config
from recbole_bifair.quick_start import prepare_run

MODELS = {
    "SASRec": {},
    "LLMSASRec": {},
    "BiFairSASRec (outer off)": {"bifair_outer": False},
    "BiFairSASRec (first_order)": {"hypergradient": "first_order"},
    "BiFairSASRec (finite_difference)": {"hypergradient": "finite_difference"},
    "BiFairSASRec (exact)": {"hypergradient": "exact"},
}


def seconds_per_step(model_label, dataset, overrides, steps):
    model = model_label.split(" ")[0]
    config = Config(model=model, dataset=dataset, config_dict={**overrides, **MODELS[model_label]})
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, _, built, trainer = prepare_run(config)
    if hasattr(trainer, "_set_up_groups"):
        trainer._set_up_groups(train_data)
    batches = [b.to(config["device"]) for _, b in zip(range(steps + 1), train_data)]
    built.train()

    def step(i, batch):
        if hasattr(trainer, "_inner_step"):
            trainer._before_inner_step(batches[i - 1] if i else None, batch, 0, i)
            trainer._inner_step(batch, 0, i)
        else:
            trainer.optimizer.zero_grad()
            built.calculate_loss(batch).backward()
            trainer.optimizer.step()

    step(0, batches[0])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i, batch in enumerate(batches[1:], start=1):
        step(i, batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--steps", type=int, default=10)
    args, rest = parser.parse_known_args(argv)
    overrides = {"state": "WARNING", "show_progress": False, "outer_every": 4}
    overrides.update(parse_overrides(item.lstrip("-") for item in rest))
    sys.argv = sys.argv[:1]
    base = None
    print(f"dataset {args.dataset}, {args.steps} steps, overrides {overrides}, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    for label in MODELS:
        seconds = seconds_per_step(label, args.dataset, overrides, args.steps)
        base = base or seconds
        print(f"{label:34s} {seconds * 1000:9.1f} ms/step   x{seconds / base:.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
