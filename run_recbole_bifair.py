"""Train and test a plugin model (LLM<Backbone>, BiFair<Backbone>) or any RecBole model.

    python run_recbole_bifair.py --model=BiFairSASRec --dataset=ml-100k
    python run_recbole_bifair.py --model=SASRec --dataset=ml-100k --config_files=my.yaml --epochs=20
    python run_recbole_bifair.py --prepare=ml-1m --raw=ml-1m.zip
    python run_recbole_bifair.py --benchmark=benchmarks/ml-100k.yaml
    python run_recbole_bifair.py --model=BiFairSASRec --nproc=2          # 2 processes (DDP)
"""
import argparse
import os
import sys
import warnings

from recbole_bifair.errors import BiFairInputError, exit_code_of


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="BiFairSASRec", help="model name (default: BiFairSASRec)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default: ml-100k)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML config files")
    parser.add_argument("--prepare", default=None, help="prepare a dataset's atomic files and exit (e.g. ml-1m)")
    parser.add_argument("--benchmark", default=None, help="run a benchmark spec (YAML), e.g. benchmarks/ml-100k.yaml")
    # multi-process training, RecBole's launcher arguments
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (default: 1)")
    parser.add_argument("--world_size", type=int, default=-1, help="processes on all machines (default: nproc)")
    parser.add_argument("--ip", default="localhost", help="address of the machine running rank 0")
    parser.add_argument("--port", default="5678", help="free port on the machine running rank 0")
    parser.add_argument("--group_offset", type=int, default=0, help="processes on the machines before this one")
    args, _ = parser.parse_known_args(argv)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # RecBole 1.2.1 calls pandas/torch APIs that announce their own future changes on every run.
    warnings.filterwarnings("ignore", category=FutureWarning)
    return exit_code_of(run_command, argv)


def run_command(argv):
    """Run what ``argv`` asks for; returns the exit code."""
    args = parse_args(argv)
    if args.benchmark:
        from recbole_bifair.benchmark.cli import benchmark_main

        return benchmark_main(argv, prog="python run_recbole_bifair.py")
    if args.prepare:
        from recbole_bifair.data import prepare_main

        return prepare_main(argv)
    from recbole_bifair.quick_start import run

    config_files = args.config_files.split() if args.config_files else None
    missing = [path for path in config_files or [] if not os.path.isfile(path)]
    if missing:
        raise BiFairInputError(f"config file(s) not found: {', '.join(missing)}; check --config_files.")
    if args.nproc < 1:
        raise BiFairInputError(f"--nproc must be at least 1, got {args.nproc}.")
    run(args.model, args.dataset, config_files, nproc=args.nproc, world_size=args.world_size,
        ip=args.ip, port=args.port, group_offset=args.group_offset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
