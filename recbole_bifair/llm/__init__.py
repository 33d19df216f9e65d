"""LLM item representations: ``load_item_embeddings(config, dataset)`` gives the item table
``[dataset.item_num, d]`` from a vector file or from a text encoder (cached)."""
from recbole_bifair.llm.item_embeddings import load_item_embeddings

__all__ = ["load_item_embeddings"]
