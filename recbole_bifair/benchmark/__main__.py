"""``python -m recbole_bifair.benchmark``: the command line, or with ``--run`` one run process
(started by the harness; it loads the run's code only)."""
import sys

from recbole_bifair.benchmark.child import RUN_FLAG, child_main

if __name__ == "__main__":
    if sys.argv[1:2] == [RUN_FLAG]:
        sys.exit(child_main())
    from recbole_bifair.benchmark.cli import benchmark_main

    sys.exit(benchmark_main())
