"""Training-epoch time with RecBole's loader against the device-resident one (``fast_loader``),
for SASRec, LLMSASRec and BiFairSASRec, as ratios measured in one process (absolute seconds
swing with machine load; each model's two loaders are timed alternately, ``--repeats`` times).
Both loaders give the same batches in the same order, so the difference is the loading alone.

    python benchmarks/loader_speed.py --dataset=ml-100k --epochs=1 --repeats=2 [--MAX_ITEM_LIST_LENGTH=20 ...]

Prints, per model: the seconds of one pass over the training batches without training (the
loading alone), and of one training epoch, with each loader, and the ratio on / off. Extra
``--key=value`` options are RecBole config overrides for every run.
"""
import argparse
import statistics
import sys
import time

import torch
from recbole.utils import init_seed

from recbole_bifair.benchmark.spec import parse_overrides
from recbole_bifair.config import Config
from recbole_bifair.quick_start import prepare_run

MODELS = ("SASRec", "LLMSASRec", "BiFairSASRec")


def prepared(model, dataset, overrides, mode):
    config = Config(model=model, dataset=dataset, config_dict={**overrides, "fast_loader": mode})
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, _, _, trainer = prepare_run(config)
    if hasattr(trainer, "set_up"):
        trainer.set_up(train_data)
    return config, train_data, trainer


def loading_seconds(train_data, device):
    started = time.perf_counter()
    for batch in train_data:
        batch.to(device)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def epoch_seconds(trainer, train_data):
    started = time.perf_counter()
    trainer._train_epoch(train_data, 0)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs timed per loader and repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    args, rest = parser.parse_known_args(argv)
    overrides = parse_overrides([a[2:] for a in rest if a.startswith("--")])
    sys.argv = sys.argv[:1]
    overrides.setdefault("show_progress", False)
    for model in args.models.split(","):
        runs = {mode: prepared(model, args.dataset, overrides, mode) for mode in ("off", "on")}
        loading, training = {"off": [], "on": []}, {"off": [], "on": []}
        for _ in range(args.repeats):
            for mode, (config, train_data, trainer) in runs.items():
                loading[mode].append(loading_seconds(train_data, config["device"]))
                training[mode] += [epoch_seconds(trainer, train_data) for _ in range(args.epochs)]
        load_off, load_on = statistics.median(loading["off"]), statistics.median(loading["on"])
        train_off, train_on = statistics.median(training["off"]), statistics.median(training["on"])
        device = runs["on"][0]["device"]
        print(f"{model:14s} loading: RecBole {load_off:7.2f} s, device {load_on:7.2f} s (x{load_on / load_off:.2f}); "
              f"epoch: RecBole {train_off:7.2f} s, device {train_on:7.2f} s (x{train_on / train_off:.3f})  [{device}]",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
