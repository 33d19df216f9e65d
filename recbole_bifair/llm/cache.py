"""Cache of generated item vectors.

Generated vectors are written once as ``<dataset>.<key>.itememb`` (the atomic format, so the
file can be reused as ``llm_emb_file``) plus ``<dataset>.<key>.itememb.json``, a sidecar with
the full key and what it is made of: the encoder (path, kind and a fingerprint of its files'
names, sizes and modification times), the pooling, the text template and a hash of the item
tokens and texts. A change to any of them gives a new key, hence a new file. A user's own
``<dataset>.itememb`` is never written or shadowed.

Folder: ``llm_emb_cache_dir`` if set; else the dataset folder, or the user cache
(``$XDG_CACHE_HOME/recbole_bifair``, default ``~/.cache/recbole_bifair``) when the dataset
folder is not writable.
"""
import datetime
import hashlib
import json
import logging
import os

from recbole_bifair import files
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.llm import vector_files

CACHE_FORMAT = 1
SHORT_KEY_LENGTH = 12


def cache_record(dataset_name, spec, template, item_tokens, texts):
    """What the cached vectors depend on, with its ``key`` (a sha256 of the rest)."""
    items = hashlib.sha256()
    for token, text in zip(item_tokens, texts):
        items.update(f"{token}\t{text}\n".encode("utf-8"))
    record = {
        "format": CACHE_FORMAT,
        "dataset": dataset_name,
        "encoder": spec.name,
        "encoder_path": spec.path,
        "encoder_kind": spec.kind,
        "encoder_fingerprint": spec.fingerprint,
        "pooling": spec.pooling,
        "text_template": template,
        "items": len(item_tokens),
        "items_hash": items.hexdigest(),
    }
    record["key"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()
    return record


def cache_file_name(record):
    """``<dataset>.<short key>.itememb``."""
    return f"{record['dataset']}.{record['key'][:SHORT_KEY_LENGTH]}.itememb"


def user_cache_dir():
    """``$XDG_CACHE_HOME/recbole_bifair`` (default ``~/.cache/recbole_bifair``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "recbole_bifair")


def cache_dirs(config):
    """The folders to look in and write to, in order."""
    if config["llm_emb_cache_dir"]:
        return [os.path.abspath(os.path.expanduser(str(config["llm_emb_cache_dir"])))]
    return [config["data_path"], user_cache_dir()]


def find_cached(config, record):
    """The path of the cached vectors for ``record``, or None."""
    for directory in cache_dirs(config):
        path = os.path.join(directory, cache_file_name(record))
        if os.path.isfile(path) and sidecar_key(path + ".json") == record["key"]:
            return path
    return None


def sidecar_key(sidecar_path):
    """The key recorded in a sidecar, or None if it is missing or unreadable."""
    try:
        with open(sidecar_path, encoding="utf-8") as f:
            return json.load(f).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def store(config, record, tokens, matrix, id_field="item_id"):
    """Writes the vectors and their sidecar to the first writable cache folder; returns the path."""
    logger = logging.getLogger()
    directories = cache_dirs(config)
    for position, directory in enumerate(directories):
        try:
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, cache_file_name(record))
            write_cache_files(config, path, record, tokens, matrix, id_field)
            return path
        except OSError as error:
            if position + 1 == len(directories):
                raise BiFairInputError(
                    f"Cannot write the LLM item vector cache in {directory} ({error}). Set "
                    "llm_emb_cache_dir to a writable folder."
                ) from None
            logger.info(f"Cannot cache LLM item vectors in {directory} ({error}); using {directories[position + 1]}.")


def write_cache_files(config, path, record, tokens, matrix, id_field):
    """The ``.itememb`` first, then the sidecar that makes it count as a cache entry."""
    vector_files.write_itememb(path, tokens, matrix, id_field=id_field, **vector_files.atomic_format(config))
    sidecar = dict(record, dimension=int(matrix.shape[1]),
                   created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    files.write_text_atomically(path + ".json", json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
