"""Device check of BiFair on CUDA: every hypergradient mode and balancer for one short epoch on
ml-100k, and the training-epoch time of BiFairSASRec against LLMSASRec on the same device.

    python benchmarks/gpu_check.py [--key=value ...]     # RecBole overrides for every run

Prints one line per run: model, settings, seconds per training epoch, test NDCG@10 and gap.
"""
import sys

import torch

from recbole_bifair.benchmark.spec import parse_overrides
from recbole_bifair.quick_start import run_recbole_bifair

RUNS = [
    ("LLMSASRec", {}),
    ("BiFairSASRec", {}),
    ("BiFairSASRec", {"hypergradient": "finite_difference"}),
    ("BiFairSASRec", {"hypergradient": "exact"}),
    ("BiFairSASRec", {"balancer": "mgda"}),
    ("BiFairSASRec", {"balancer": "dro"}),
    ("BiFairSASRec", {"balancer": "uniform"}),
    ("BiFairSASRec", {"balancer": "inverse_frequency"}),
    ("BiFairSASRec", {"outer_every": 1}),
]


def main(argv):
    overrides = {"epochs": 2, "state": "WARNING", "show_progress": False, "stopping_step": 10, **parse_overrides(arg.lstrip("-") for arg in argv)}
    sys.argv = sys.argv[:1]
    print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}; torch {torch.__version__}")
    print(f"overrides: {overrides}")
    seconds = {}
    for model, settings in RUNS:
        result = run_recbole_bifair(model, "ml-100k", config_dict={**overrides, **settings}, saved=False)
        test = result["test_result"]
        label = f"{model} {settings or '(default)'}"
        seconds[label] = result["train_epoch_seconds"]
        print(
            f"{label:60s} {result['train_epoch_seconds']:7.2f} s/epoch  x{result['train_epoch_seconds'] / seconds['LLMSASRec (default)']:.2f}"
            f"  ndcg@10 {test['ndcg@10']:.4f}  ndcggap@10 {test['ndcggap@10']:.4f}  ndcgworst@10 {test['ndcgworst@10']:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
