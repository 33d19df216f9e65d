"""The run process: ``python -m recbole_bifair.benchmark --run`` trains and tests one run of the
harness and writes its outcome. It imports none of the harness, report and plot modules."""
import hashlib
import json
import os
import sys
import time
import traceback
from logging import getLogger

import numpy as np

from recbole_bifair.benchmark.records import METRIC_DIGITS, write_json_atomic
from recbole_bifair.trainer.hooks import TrainerCallback


RUN_FLAG = "--run"


HARNESS_PID_VARIABLE = "RECBOLE_BIFAIR_HARNESS_PID"


# ---- the run process ------------------------------------------------------------------------

def child_main():
    """One run (``python -m recbole_bifair.benchmark --run``, request JSON on stdin): train and
    test, then write the outcome (result dict, costs or error) to the request's path."""
    import warnings

    _stop_with_parent()
    request = json.load(sys.stdin)
    sys.argv = sys.argv[:1]  # RecBole's Config would read --key=value options from it
    warnings.filterwarnings("ignore", category=FutureWarning)
    started = time.perf_counter()
    try:
        from recbole_bifair import quick_start

        watch = EvaluationWatch(request.get("report_k"))
        result = quick_start.run_recbole_bifair(model=request["model"], dataset=request["dataset"],
                                                config_dict=request["config"], saved=True, callbacks=[watch])
        outcome = {"status": "ok", **watch.record_fields(result), **result}
    except Exception as error:
        traceback.print_exc()
        outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                   "traceback": traceback.format_exc()}
    outcome.update(run_seconds=time.perf_counter() - started, **peak_memory(), **device_of_run())
    write_json_atomic(request["outcome"], outcome)
    return 0 if outcome["status"] == "ok" else 1


class EvaluationWatch(TrainerCallback):
    """A trainer callback (``trainer.hooks``) that keeps, from a run, what its record needs
    beyond the result dict: the epoch cap and early-stopping settings of the resolved config,
    and each test user's NDCG@k, from the rows RecBole's evaluator gets when the run tests its
    model.

    Nothing of the trainer is changed: the metrics see the same data. Only evaluations of the
    test split are kept (the model's test, then any other evaluation of the split, e.g. the
    prior-fairness one); ``record_fields(result)`` takes the one whose result dict is
    ``result["test_result"]``."""

    def __init__(self, k):
        self.k = k
        self.config = None
        self.dataset = None
        self.test_data = None
        self.test_evaluations = []  # (result dict, struct, user id of each row or None)
        self._on_test_split = False
        self._batch_users = []
        self._struct = None

    def on_run_start(self, trainer, config, dataset, test_data):
        self.config, self.dataset, self.test_data = config, dataset, test_data
        if not hasattr(getattr(trainer, "eval_collector", None), "listen"):
            getLogger().warning("Per-user test values not recorded: the trainer's collector reports no batches.")

    def on_evaluation_start(self, trainer, eval_data):
        self._on_test_split = self.test_data is not None and eval_data is self.test_data
        self._batch_users, self._struct = [], None

    def on_evaluation_batch(self, trainer, scores, interaction):
        if self._on_test_split:
            user_field = self.config["USER_ID_FIELD"]
            users = interaction[user_field] if user_field in interaction else None
            rows_are_users = users is not None and len(users) == len(scores)
            self._batch_users.append(users.detach().cpu().numpy() if rows_are_users else None)

    def on_evaluation_struct(self, trainer, struct):
        self._struct = struct

    def on_evaluation_end(self, trainer, eval_data, result):
        if self._on_test_split and self._struct is not None:
            batches = self._batch_users
            complete = bool(batches) and all(b is not None for b in batches)
            self.test_evaluations.append((result, self._struct, np.concatenate(batches) if complete else None))
        self._on_test_split, self._batch_users, self._struct = False, [], None

    def record_fields(self, result=None):
        """``epochs_cap``, ``stopping_step``, ``eval_step`` and ``test_users`` (when it could be
        computed; a problem here is logged, never fails the run)."""
        fields = {}
        if self.config is not None:
            fields.update(epochs_cap=self.config["epochs"], stopping_step=self.config["stopping_step"],
                          eval_step=self.config["eval_step"])
        try:
            users = self.test_users((result or {}).get("test_result"))
        except Exception as error:  # bookkeeping only: the run's result stands without it
            getLogger().warning(f"Per-user test values not recorded: {type(error).__name__}: {error}")
            users = None
        if users:
            fields["test_users"] = users
        return fields

    def test_users(self, test_result=None):
        """``{"k", "n", "users", "ndcg", "item_group"}`` of the evaluation that gave
        ``test_result`` (else the first one of the test split): NDCG@k per test user and the
        item group of the user's test positives (-1: several groups; absent without the
        fairness metrics' group data), users sorted by token; ``users`` is a digest of that order."""
        from recbole_bifair.evaluator.metrics import GROUP_POS

        chosen = [e for e in self.test_evaluations if e[0] is test_result] or self.test_evaluations[:1]
        if not chosen or not self.k:
            return None
        _, struct, user_ids = chosen[0]
        if user_ids is None or "rec.topk" not in struct:
            return None
        topk = struct.get("rec.topk").numpy()
        if self.k > topk.shape[1] - 1 or len(user_ids) != len(topk):
            return None
        ndcg = user_ndcg(topk[:, :-1].astype(bool), topk[:, -1], self.k)
        tokens = np.asarray(self.dataset.id2token(self.config["USER_ID_FIELD"], user_ids)).astype(str)
        order = np.argsort(tokens, kind="stable")
        users = {"k": self.k, "n": len(order),
                 "users": hashlib.sha256("\n".join(tokens[order]).encode()).hexdigest()[:16],
                 "ndcg": [round(float(v), METRIC_DIGITS) for v in ndcg[order]]}
        if GROUP_POS in struct:
            positives = struct.get(GROUP_POS).numpy() > 0
            group = np.where(positives.sum(axis=1) == 1, positives.argmax(axis=1), -1)
            users["item_group"] = [int(g) for g in group[order]]
        return users


def user_ndcg(hits, positives, k):
    """NDCG@k of each row, as RecBole's NDCG computes it: ``hits`` [n x K] (K >= k) whether
    each top-K slot holds a positive, ``positives`` [n] the row's number of positives."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discount).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(positives, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)


def peak_memory():
    """Peak resident memory of this process in MB (VmHWM on Linux, else getrusage's maxrss),
    and the peak GPU memory allocated by torch when the run used CUDA."""
    import torch

    memory = {"peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        memory["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return memory


def peak_rss_mb():
    """Peak resident memory of this process in MB: VmHWM on Linux (this address space's own;
    ru_maxrss would carry over a forking parent's peak), else getrusage's maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def device_of_run():
    """The GPU the run used (None on CPU) and torch's CPU threads."""
    import torch

    gpu = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu = torch.cuda.get_device_name(torch.cuda.current_device())
    return {"gpu": gpu, "torch_threads": torch.get_num_threads()}


def _stop_with_parent():
    """In the run process (Linux): receive SIGTERM when the harness dies, even by SIGKILL, so
    that no run goes on orphaned."""
    import ctypes
    import signal

    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != os.environ.get(HARNESS_PID_VARIABLE, str(os.getppid())):
        sys.exit(143)  # the harness died before the line above
