"""``load_item_embeddings(config, dataset)``: the LLM item table ``[dataset.item_num, d]``.

Row 0 (padding) is zero; row i is the vector of item token ``dataset.field2id_token[iid][i]``.
The vectors come from (``llm_emb_source``):

- ``file``: ``llm_emb_file`` (``.itememb`` or ``.npy`` + ``llm_emb_ids_file``), default
  ``<data_path>/<dataset>.itememb``. Rows of tokens the dataset lacks are ignored; dataset items
  the file lacks are an error unless ``llm_missing_items`` is ``zero``, ``mean`` or ``random``.
- ``encoder``: generated from the item text (``item_text``) with ``llm_encoder`` and cached
  (``cache``).
- ``auto`` (default): ``llm_emb_file`` if set, else ``<data_path>/<dataset>.itememb`` if it
  exists, else the encoder.
"""
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from recbole_bifair.config_values import choice, positive_int
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.files import existing_path
from recbole_bifair.llm import cache, encoder, item_text, vector_files

SOURCES = ("auto", "file", "encoder")
MISSING_ITEM_POLICIES = ("error", "zero", "mean", "random")


@dataclass(frozen=True)
class Settings:
    """The validated ``llm_*`` config values."""

    source: str
    emb_file: str
    ids_file: str
    missing_items: str
    encoder: str
    pooling: str
    template: str
    batch_size: int


def load_item_embeddings(config, dataset):
    """The LLM item table, a CPU ``torch.FloatTensor`` of shape ``[dataset.item_num, d]``."""
    settings = read_settings(config)
    item_tokens = [str(token) for token in dataset.field2id_token[config["ITEM_ID_FIELD"]]]
    vector_file = vector_file_for(config, settings)
    if vector_file is None:
        table = generated_table(config, dataset, settings, item_tokens)
    else:
        table = table_from_file(config, settings, vector_file, item_tokens)
    return torch.from_numpy(table)


def read_settings(config):
    """The ``llm_*`` keys, checked."""
    return Settings(
        source=choice(config, "llm_emb_source", SOURCES),
        emb_file=config["llm_emb_file"] or None,
        ids_file=config["llm_emb_ids_file"] or None,
        missing_items=choice(config, "llm_missing_items", MISSING_ITEM_POLICIES),
        encoder=config["llm_encoder"] or None,
        pooling=choice(config, "llm_pooling", encoder.POOLINGS),
        template=config["llm_text_template"] or None,
        batch_size=positive_int(config, "llm_encode_batch_size", 64),
    )


def default_vector_file(config):
    """``<data_path>/<dataset>.itememb``."""
    return os.path.join(config["data_path"], f"{config['dataset']}.itememb")


def vector_file_for(config, settings):
    """The vector file to read, or None when the vectors are to be generated."""
    if settings.source == "encoder":
        return None
    if settings.emb_file:
        return existing_path(settings.emb_file, config["data_path"], "llm_emb_file")
    default = default_vector_file(config)
    if os.path.isfile(default):
        return default
    if settings.source == "file":
        raise BiFairInputError(
            f"llm_emb_source is 'file' but llm_emb_file is not set and {default} does not exist. Set "
            "llm_emb_file to your item vectors, or use llm_emb_source: auto to generate them."
        )
    return None


def table_from_file(config, settings, path, item_tokens):
    """The table from a user's vector file."""
    ids_path = None
    if path.endswith(".npy"):
        ids_path = settings.ids_file and existing_path(settings.ids_file, config["data_path"], "llm_emb_ids_file")
    elif settings.ids_file:
        logging.getLogger().warning(f"llm_emb_ids_file is ignored: {path} is not a .npy matrix.")
    tokens, matrix = vector_files.read_vector_file(path, ids_path, **vector_files.atomic_format(config))
    table = table_for_items(tokens, matrix, item_tokens, settings.missing_items, config["seed"], path)
    logging.getLogger().info(f"LLM item vectors: read from {path}, table {table.shape[0]} x {table.shape[1]}.")
    return table


def table_for_items(tokens, matrix, item_tokens, missing_items, seed, origin):
    """Rows of ``matrix`` placed at the dataset's internal ids; other tokens are ignored,
    items without a row are filled by the ``missing_items`` policy."""
    logger = logging.getLogger()
    row_of = {token: row for row, token in enumerate(tokens)}
    rows = np.array([row_of.get(token, -1) for token in item_tokens[1:]], dtype=np.int64)
    found = rows >= 0
    if not found.any():
        raise BiFairInputError(
            f"None of the {len(tokens)} item tokens in {origin} is an item of the dataset (file: "
            f"{examples(tokens)}; dataset: {examples(item_tokens[1:])}). The first column must hold the "
            "dataset's item tokens."
        )
    table = np.zeros((len(item_tokens), matrix.shape[1]), dtype=np.float32)
    items = table[1:]
    items[found] = matrix[rows[found]]
    n_missing = int((~found).sum())
    if n_missing:
        missing_tokens = [token for token, ok in zip(item_tokens[1:], found) if not ok]
        if missing_items == "error":
            raise BiFairInputError(
                f"{n_missing} of the dataset's {len(found)} items have no vector in {origin} (e.g. "
                f"{examples(missing_tokens)}). Add their vectors, or set llm_missing_items to zero, mean "
                "or random to fill them."
            )
        items[~found] = fill_vectors(items[found], n_missing, missing_items, seed)
        logger.warning(
            f"{n_missing} of the dataset's {len(found)} items have no vector in {origin} (e.g. "
            f"{examples(missing_tokens)}); filled by llm_missing_items={missing_items}."
        )
    n_ignored = len(tokens) - int(found.sum())
    if n_ignored:
        logger.info(f"{n_ignored} rows of {origin} belong to tokens that are not dataset items: ignored.")
    return table


def fill_vectors(known, count, policy, seed):
    """``count`` vectors for items without one: zeros, the mean of the ``known`` vectors, or
    normal draws with the known vectors' per-dimension mean and standard deviation."""
    if policy == "zero":
        return np.zeros((count, known.shape[1]), dtype=np.float32)
    if policy == "mean":
        return np.repeat(known.mean(axis=0, keepdims=True), count, axis=0)
    generator = np.random.default_rng(0 if seed is None else seed)
    return generator.normal(known.mean(axis=0), known.std(axis=0), size=(count, known.shape[1])).astype(np.float32)


def examples(tokens, limit=5):
    """The first few tokens, quoted, for messages."""
    shown = ", ".join(repr(token) for token in list(tokens)[:limit])
    return shown + (", ..." if len(tokens) > limit else "")


def generated_table(config, dataset, settings, item_tokens):
    """The table from the encoder, read from the cache when it holds the same key."""
    logger = logging.getLogger()
    spec = encoder.resolve_encoder(settings.encoder, settings.pooling)
    texts = item_text.item_texts(config, dataset, settings.template)
    if texts.untexted:
        logger.warning(
            f"{len(texts.untexted)} of {len(texts.texts)} items have no text in {texts.origin} (e.g. "
            f"{examples(texts.untexted)}): their item token is encoded instead."
        )
    record = cache.cache_record(config["dataset"], spec, settings.template, item_tokens[1:], texts.texts)
    cached = cache.find_cached(config, record)
    if cached is not None:
        try:
            table = table_from_cache(config, cached, item_tokens)
            logger.info(f"LLM item vectors: cache hit {cached}, table {table.shape[0]} x {table.shape[1]}.")
            return table
        except BiFairInputError as error:
            logger.warning(f"Ignoring the unreadable cache {cached} ({error}); generating the vectors again.")
    vectors = encode_items(config, spec, settings, texts.texts)
    path = cache.store(config, record, item_tokens[1:], vectors, config["ITEM_ID_FIELD"])
    table = np.zeros((len(item_tokens), vectors.shape[1]), dtype=np.float32)
    table[1:] = vectors
    logger.info(
        f"LLM item vectors: generated with {spec.name} ({spec.kind}, pooling: {spec.pooling}), table "
        f"{table.shape[0]} x {table.shape[1]}, cached in {path}."
    )
    return table


def table_from_cache(config, path, item_tokens):
    tokens, matrix = vector_files.read_itememb(path, **vector_files.atomic_format(config))
    return table_for_items(tokens, matrix, item_tokens, "error", None, path)


def encode_items(config, spec, settings, texts):
    """``[len(texts), d]`` vectors from the encoder."""
    device = str(config["device"] or "cpu")
    logging.getLogger().info(f"Encoding {len(texts)} item texts with {spec.name} on {device}.")
    show_progress = bool(config["show_progress"])
    model = encoder.load_encoder(spec, device, show_progress=show_progress)
    vectors = model.encode(texts, batch_size=settings.batch_size, show_progress=show_progress)
    if not np.isfinite(vectors).all():
        raise BiFairInputError(
            f"The encoder {spec.name} produced NaN or inf vectors for {int((~np.isfinite(vectors).all(axis=1)).sum())} "
            "items. Check the model directory (a broken or half-precision model?)."
        )
    return vectors
