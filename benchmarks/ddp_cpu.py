"""Epoch time of one training process against several (DDP), in one command, as ratios to the
plain one-process run measured in the same command.

    python benchmarks/ddp_cpu.py --model=BiFairSASRec --dataset=ml-100k --nproc=2 \\
        [--epochs=1 --MAX_ITEM_LIST_LENGTH=20 ...] [--output=results/ddp_cpu.md]

Rows: the plain path (one process, RecBole's usual loop), the DDP code path with one process
(``world_size=1``: same work plus the distributed bookkeeping), and ``--nproc`` processes,
each taking ``train_batch_size / nproc`` examples per step. On a CPU the cores are shared
out: each of n processes gets ``cores / n`` torch threads (``OMP_NUM_THREADS``), so the
ratio says what splitting the same cores between processes buys. On a GPU machine, run it
with ``--nproc=1`` for the DDP-path overhead on one GPU. Extra ``--key=value`` options are
RecBole config overrides; the default settings are those of ``benchmarks/ml-100k.yaml``.
"""
import argparse
import datetime
import os
import sys
import warnings

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def spec_settings():
    with open(os.path.join(HERE, "ml-100k.yaml")) as f:
        shared = yaml.safe_load(f)["shared"]
    return {**shared, "epochs": 1, "eval_step": 1, "state": "WARNING"}


def timed_run(model, dataset, config_dict, nproc, world_size, threads):
    from recbole_bifair.distributed import free_port
    from recbole_bifair.quick_start import run

    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by the torch of spawned processes
    result = run(model, dataset, config_dict=dict(config_dict), nproc=nproc, world_size=world_size,
                 port=free_port(), saved=False)
    return result["train_epoch_seconds"], result["test_result"]["ndcg@10"]


def main(argv=None):
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="BiFairSASRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--output", default=None, help="also write the table to this Markdown file")
    args, unknown = parser.parse_known_args(argv)
    from recbole_bifair.config_values import command_line_settings

    config_dict = {**spec_settings(), **command_line_settings(unknown)}
    cores = os.cpu_count() or 1
    import torch

    on_gpu = torch.cuda.is_available() and str(config_dict.get("gpu_id", "0")) != ""
    rows = [("plain path, 1 process", 1, -1, cores)]
    rows.append(("DDP path, 1 process", 1, 1, cores))
    if args.nproc > 1:
        rows.append((f"DDP, {args.nproc} processes", args.nproc, args.nproc, max(1, cores // args.nproc)))
    measured = []
    for label, nproc, world_size, threads in rows:
        seconds, ndcg = timed_run(args.model, args.dataset, config_dict, nproc, world_size, threads)
        measured.append((label, threads, seconds, ndcg))
        print(f"{label}: {seconds:.1f} s per training epoch", flush=True)
    baseline = measured[0][2]
    device = torch.cuda.get_device_name(0) if on_gpu else f"CPU, {cores} cores"
    lines = [
        f"# {args.model} on {args.dataset}: epoch time, one process against DDP",
        "",
        f"Command: `python benchmarks/ddp_cpu.py {' '.join(sys.argv[1:] if argv is None else argv)}` on {device}, "
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}. Settings of benchmarks/ml-100k.yaml, "
        "one training epoch per row; NDCG@10 is the test value after that epoch.",
        "",
        "| run | torch threads per process | s per training epoch | ratio to the plain path | test NDCG@10 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, threads, seconds, ndcg in measured:
        lines.append(f"| {label} | {threads if not on_gpu else '-'} | {seconds:.1f} | {seconds / baseline:.2f}x | {ndcg:.4f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
