"""The command line of the harness: ``python -m recbole_bifair.benchmark SPEC [options]`` and
``python run_recbole_bifair.py --benchmark=SPEC``."""
import argparse
import logging
import os
import shlex
import sys
from logging import getLogger

from recbole_bifair import benchmark
from recbole_bifair.benchmark.child import RUN_FLAG, child_main
from recbole_bifair.benchmark.report import write_reports
from recbole_bifair.benchmark.runner import run_benchmark
from recbole_bifair.benchmark.spec import load_spec, parse_overrides, select
from recbole_bifair.errors import INTERRUPTED_EXIT_CODE, BiFairInputError, exit_code_of


DEFAULT_PROG = "python -m recbole_bifair.benchmark"


# ---- command line -------------------------------------------------------------------------

def parse_benchmark_args(argv):
    parser = argparse.ArgumentParser(prog="benchmark", description=benchmark.__doc__,
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
    parser.add_argument("--reference", help="mark significance against this model (display name) instead of the "
                                            "spec's reference; the report goes to <dataset>_vs_<name>.md")
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
    """The command line: run a spec (see the package docstring). Returns the exit code: 0 all
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
    spec = load_spec(args.spec, output_dir=args.output_dir, overrides=parse_overrides(args.overrides),
                     reference=args.reference)
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
