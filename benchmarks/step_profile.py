"""Where a training step's time goes, split into its parts, for SASRec, LLMSASRec and BiFairSASRec,
and full-ranking evaluation with the fairness collector (``torch.profiler``, one process).

    python benchmarks/step_profile.py --dataset=ml-100k --steps=20 [--fast_loader=on] [--key=value ...]

Per model: milliseconds per step in each part (loading and collation, the copy to the device,
forward with the loss, backward, the optimiser, BiFair's outer step), the host synchronisations
per step (``aten::item`` / ``_local_scalar_dense``, ``nonzero`` from boolean masks,
``unique``; the calls are counted on CPU tensors too, e.g. a CPU Adam's step counters, which
cost no device synchronisation), the copies per step (``aten::copy_``), then one evaluation of
the test split. The
step is the trainers' own: RecBole's ``calculate_loss`` for RecBole's trainer, the group-aware
loss (and E held) for the plugin's. Extra ``--key=value`` options are config overrides.
"""
import argparse
import sys
import time

import torch
from recbole.utils import init_seed
from torch.profiler import ProfilerActivity, profile, record_function

from recbole_bifair.benchmark.spec import parse_overrides
from recbole_bifair.config import Config
from recbole_bifair.quick_start import prepare_run

MODELS = ("SASRec", "LLMSASRec", "BiFairSASRec")
PARTS = ("load+collate", "to device", "forward+loss", "backward", "optimizer", "outer step", "loss.item")
SYNC_OPS = {"aten::_local_scalar_dense": "item", "aten::nonzero": "nonzero", "aten::_unique2": "unique",
            "aten::unique_dim": "unique", "aten::_unique": "unique"}


def training_step(trainer, previous, batch, step):
    """One step in the trainer's order, each part in its own profiler region; returns the loss.
    The plugin's trainers: their ``TrainingStep`` (the outer update, then the inner update's
    parts as ``inner_update`` does them); RecBole's: ``calculate_loss``, backward, Adam."""
    unit = getattr(trainer, "training_step", None)
    outer = unit.outer if unit is not None else None
    if outer is not None and outer.takes_outer_steps and previous is not None and step % outer.every == 0:
        with record_function("outer step"):
            meta_batch = batch if unit.meta_split is None else unit.meta_split.next_batch().to(unit.device)
            unit.outer_update(previous, meta_batch)
    held = trainer.model.llm_parameters() + trainer.model.outer_parameters() if unit is not None else []
    flags = [p.requires_grad for p in held]
    for p in held:
        p.requires_grad_(False)
    trainer.optimizer.zero_grad()
    with record_function("forward+loss"):
        loss = unit.policy.loss(trainer.model, batch, update_balancer=True) if unit is not None \
            else trainer.model.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
    with record_function("backward"):
        loss.backward()
    for p, flag in zip(held, flags):
        p.requires_grad_(flag)
    with record_function("optimizer"):
        trainer.optimizer.step()
    with record_function("loss.item"):
        loss.item()
    return loss


def profiled(model, dataset, overrides, steps):
    config = Config(model=model, dataset=dataset, config_dict=overrides)
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, test_data, built, trainer = prepare_run(config)
    if hasattr(trainer, "set_up"):
        trainer.set_up(train_data)
    trainer.eval_collector.data_collect(train_data)
    built.train()
    batches, previous = iter(train_data), None
    for step in range(2):  # warm-up, outside the profile
        previous = next(batches).to(config["device"])
        training_step(trainer, None, previous, step)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])) as prof:
        started = time.perf_counter()
        for step in range(2, steps + 2):
            with record_function("load+collate"):
                batch = next(batches)
            with record_function("to device"):
                batch = batch.to(config["device"])
            training_step(trainer, previous, batch, step)
            previous = batch
        step_seconds = (time.perf_counter() - started) / steps
    evaluation_started = time.perf_counter()
    trainer.evaluate(test_data, load_best_model=False)
    evaluation_seconds = time.perf_counter() - evaluation_started
    return prof.key_averages(), step_seconds, evaluation_seconds


def report_line(model, events, step_seconds, evaluation_seconds, steps):
    totals = {e.key: e for e in events}
    parts = ", ".join(f"{part} {totals[part].cpu_time_total / 1e3 / steps:.1f}" for part in PARTS if part in totals)
    syncs = {}
    for key, label in SYNC_OPS.items():
        if key in totals:
            syncs[label] = syncs.get(label, 0) + totals[key].count / steps
    copies = totals["aten::copy_"].count / steps if "aten::copy_" in totals else 0
    sync_text = ", ".join(f"{label} {count:.1f}" for label, count in sorted(syncs.items())) or "none"
    return (f"{model:14s} {step_seconds * 1e3:7.1f} ms/step; per step, ms: {parts}\n"
            f"{'':14s} host syncs per step: {sync_text}; copies per step: {copies:.1f}; "
            f"test evaluation (full ranking, fairness collector): {evaluation_seconds:.2f} s")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", default=",".join(MODELS))
    args, rest = parser.parse_known_args(argv)
    overrides = {"show_progress": False, "state": "WARNING",
                 **parse_overrides([a[2:] for a in rest if a.startswith("--")])}
    sys.argv = sys.argv[:1]
    print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; overrides {overrides}")
    for model in args.models.split(","):
        events, step_seconds, evaluation_seconds = profiled(model, args.dataset, overrides, args.steps)
        print(report_line(model, events, step_seconds, evaluation_seconds, args.steps), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
