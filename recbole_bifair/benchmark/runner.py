"""The harness loop: each pending run of a spec in its own process (``python -m
recbole_bifair.benchmark --run``), its output streamed to its log and its record written when it
ends, then the reports of every recorded run."""
import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from logging import getLogger
from typing import List

from recbole_bifair.benchmark.child import HARNESS_PID_VARIABLE, RUN_FLAG
from recbole_bifair.benchmark.records import _read_json, write_json_atomic
from recbole_bifair.benchmark.report import cpu_description, versions_text, write_reports
from recbole_bifair.benchmark.spec import (checkpoint_dir, child_config, is_finished, load_record, plan_runs,
                                           record_path)


ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")
CHECKPOINT_FINGERPRINT = "fingerprint.json"  # in a run's checkpoint folder: the plan its checkpoints belong to
PROGRESS_LINE = re.compile(r"(epoch \d+ (training|evaluating).*|Finished training.*|test result.*)")


# ---- running --------------------------------------------------------------------------------

@dataclass
class Summary:
    executed: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    interrupted: bool = False


def run_benchmark(spec, selected=None, force=False, verbose=False, command=""):
    """Run the pending runs of ``selected`` (a selection of ``spec``; default all), then write
    the reports of every recorded run of ``spec``. Returns a :class:`Summary`."""
    logger = getLogger()
    selected = selected or spec
    plans = plan_runs(selected)
    pending = [p for p in plans if force or not is_finished(load_record(spec, p), p)]
    summary = Summary(skipped=[p.run_id for p in plans if p not in pending])
    if summary.skipped:
        logger.info(f"{len(summary.skipped)} of {len(plans)} runs already finished, skipped "
                    f"(--force runs them again).")
    started = time.perf_counter()
    made_by = provenance(command)
    try:
        with sigterm_as_ctrl_c():
            for index, plan in enumerate(pending, start=1):
                label = f"[{index}/{len(pending)}] {plan.dataset} {plan.entry.name} seed {plan.seed}"
                logger.info(f"{label}: started ({_eta(started, index - 1, len(pending))})")
                record = {**execute_run(spec, plan, label, verbose, fresh=force), **made_by}
                write_json_atomic(record_path(spec, plan), record)
                summary.executed.append(plan.run_id)
                if record["status"] != "ok":
                    summary.failed.append(plan.run_id)
                logger.info(f"{label}: {_outcome_text(record)}; "
                            f"{_eta(started, index, len(pending))}")
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning(f"Interrupted after {len(summary.executed)} run(s); finished runs are saved in "
                       f"{os.path.join(spec.output_dir, 'runs')}: run the same command again to resume.")
    write_reports(spec, command)
    return summary


def provenance(command=""):
    """Where and how a run was made, kept in its record so that a report rebuilt elsewhere
    still names the machine, versions and command of the runs."""
    return {"cpu": cpu_description(), "versions": versions_text(), "command": command or None}


def _outcome_text(record):
    took = _duration(record.get("wall_seconds") or 0)
    if record["status"] == "ok":
        return (f"done in {took} ({record.get('epochs')} epochs, {record.get('train_epoch_seconds', 0):.1f} s "
                f"per training epoch, peak RSS {record.get('peak_rss_mb') or 0:.0f} MB)")
    return f"FAILED after {took}: {record.get('error')} (log: {record.get('log')})"


def _eta(started, done, total):
    elapsed = time.perf_counter() - started
    text = f"elapsed {_duration(elapsed)}"
    if done == 0:
        return text + f", {total} run(s) to go"
    left = elapsed / done * (total - done)
    return text + f", about {_duration(left)} left for {total - done} run(s)"


def _duration(seconds):
    return str(datetime.timedelta(seconds=int(round(seconds))))


def execute_run(spec, plan, label="", verbose=False, fresh=False):
    """Run ``plan`` in a fresh process, streaming its progress lines; returns its record. An
    interrupted run of the same plan continues from its last checkpoint unless ``fresh``."""
    runs_dir = os.path.join(spec.output_dir, "runs")
    logs_dir = os.path.join(spec.output_dir, "logs")
    os.makedirs(runs_dir, exist_ok=True)
    os.makedirs(logs_dir, exist_ok=True)
    outcome_path = os.path.join(runs_dir, f".{plan.run_id}.outcome.json")
    log_path = os.path.join(logs_dir, plan.run_id + ".log")
    _remove(outcome_path)
    request = {"model": plan.entry.model, "dataset": plan.dataset, "config": child_config(spec, plan),
               "outcome": os.path.abspath(outcome_path), "report_k": spec.report_k}
    resumed = interrupted_run_to_resume(spec, plan, fresh)
    if resumed:
        request["config"]["resume"] = "last"
        getLogger().info(f"{label}: continues from the last checkpoint of its interrupted run")
    started = time.perf_counter()
    try:
        returncode, tail = stream_child(request, log_path, label, verbose)
        outcome = _read_json(outcome_path) or {
            "status": "failed", "error": f"the run process ended with code {returncode} before reporting "
                                         f"(killed, out of memory, or crashed): {_last_line(tail)}"}
    finally:
        _remove(outcome_path)
    if not spec.keep_checkpoints:
        shutil.rmtree(checkpoint_dir(spec, plan), ignore_errors=True)
    return {
        "run_id": plan.run_id, "fingerprint": plan.fingerprint, "dataset": plan.dataset,
        "name": plan.entry.name, "model": plan.entry.model, "seed": plan.seed, "config": plan.config,
        **outcome, "returncode": returncode, "wall_seconds": time.perf_counter() - started,
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "log": os.path.relpath(log_path, spec.output_dir), "resumed": resumed,
    }


def interrupted_run_to_resume(spec, plan, fresh=False):
    """Whether ``plan``'s checkpoint folder holds the last checkpoint of an interrupted run of
    exactly ``plan`` (the fingerprint written there when that run started). Otherwise, or when
    ``fresh``, the run starts over: the last checkpoints there (the state of a run that will
    not be continued) go, best checkpoints stay, and the folder is marked for ``plan``."""
    from recbole_bifair.errors import BiFairInputError
    from recbole_bifair.trainer.resume import find_last_checkpoint, remove_last_checkpoints

    folder = checkpoint_dir(spec, plan)
    marker = os.path.join(folder, CHECKPOINT_FINGERPRINT)
    if not fresh and (_read_json(marker) or {}).get("fingerprint") == plan.fingerprint:
        try:
            find_last_checkpoint(folder, plan.entry.model, plan.dataset)
            return True
        except BiFairInputError:
            pass
    remove_last_checkpoints(folder)
    write_json_atomic(marker, {"fingerprint": plan.fingerprint})
    return False


def stream_child(request, log_path, label, verbose):
    """Start the run process, copy its output to ``log_path`` and show its progress lines;
    returns (exit code, last lines)."""
    logger = getLogger()
    tail = deque(maxlen=40)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "recbole_bifair.benchmark", RUN_FLAG], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=child_environment())
    try:
        process.stdin.write(json.dumps(request))
        process.stdin.close()
        with open(log_path, "w", encoding="utf-8", buffering=1) as log:  # line by line, for tail -f
            for line in process.stdout:
                line = ANSI_CODES.sub("", line)
                log.write(line)
                tail.append(line.rstrip())
                shown = line.rstrip() if verbose else _progress_part(line)
                if shown:
                    logger.info(f"    {label} [{_duration(time.perf_counter() - started)}] {shown}")
        return process.wait(), list(tail)
    except BaseException:
        process.kill()
        process.wait()
        raise


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """While runs execute, SIGTERM (what ``timeout`` and ``kill`` send) stops the harness as
    Ctrl-C does: the run process is stopped, its outcome file removed and the finished runs
    reported."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _progress_part(line, limit=160):
    match = PROGRESS_LINE.search(line)
    if not match:
        return None
    text = match.group(0).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def child_environment():
    """The parent's environment, unbuffered, with this copy of the package first on the path."""
    import recbole_bifair

    env = dict(os.environ, PYTHONUNBUFFERED="1", **{HARNESS_PID_VARIABLE: str(os.getpid())})
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(recbole_bifair.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in [package_root, env.get("PYTHONPATH")] if p)
    return env


def _last_line(lines):
    return next((line for line in reversed(lines) if line.strip()), "no output")


def _remove(path):
    if os.path.exists(path):
        os.remove(path)
