"""Shared helpers for writing RecBole atomic files safely.

Files are written with a ``field:type`` header, tab separated, UTF-8, and standard CSV
quoting: RecBole reads atomic files with ``pandas.read_csv``, which fails on a field that
starts with an unquoted ``"`` but decodes quoted fields, so text with double quotes
survives the round trip. Every conversion writes into a staging folder next to the dataset
folder and moves the files into place only when all of them are complete.
"""
import contextlib
import csv
import gzip
import hashlib
import io
import os
import shutil
import tempfile
import zlib

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; processes must not prepare one dataset at once
    fcntl = None

from tqdm.auto import tqdm
from tqdm.utils import CallbackIOWrapper

from recbole_bifair.errors import BiFairInputError

GZIP_MAGIC = b"\x1f\x8b"


def one_line(value):
    """``value`` as one line of text: None/NaN become '', whitespace runs (tabs and line
    breaks included) become one space."""
    if value is None or value != value:
        return ""
    return " ".join(str(value).split())


def write_atomic_file(frame, path, field_types):
    """Write ``frame`` as a RecBole atomic file; ``field_types`` maps each column to its
    RecBole type (token, token_seq, float, float_seq), in column order."""
    header = "\t".join(f"{field}:{kind}" for field, kind in field_types.items())
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(header + "\n")
        frame[list(field_types)].to_csv(
            out, sep="\t", header=False, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n"
        )


def refuse_to_overwrite(dataset_dir, file_names):
    """Raise if any of ``file_names`` already exists in ``dataset_dir``."""
    existing = [name for name in file_names if os.path.exists(os.path.join(dataset_dir, name))]
    if existing:
        raise BiFairInputError(
            f"{dataset_dir} already holds {', '.join(existing)} but no interaction file: "
            "preparing the dataset would overwrite them. Move or delete those files, or prepare "
            "into another folder (--data_path / --dataset)."
        )


@contextlib.contextmanager
def preparation_lock(dataset_dir):
    """Holds an exclusive lock on ``dataset_dir`` for the block, so that processes started
    together on one machine (benchmark runs, DDP ranks) prepare a dataset one after another:
    the first writes it, the others find it prepared. The lock file lives in the temporary
    folder, not beside the user's data."""
    key = hashlib.sha1(os.path.abspath(dataset_dir).encode("utf-8")).hexdigest()[:16]
    try:
        handle = open(os.path.join(tempfile.gettempdir(), f"recbole_bifair-prepare-{key}.lock"), "a")
    except OSError:  # e.g. another user's lock file: prepare unlocked, as before locks existed
        handle = None
    try:
        if handle is not None and fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        if handle is not None:
            handle.close()


@contextlib.contextmanager
def staging_folder(dataset_dir):
    """A temporary folder beside ``dataset_dir`` (same file system, so moves are renames),
    removed with whatever is left in it when the block ends."""
    parent = os.path.dirname(os.path.abspath(dataset_dir))
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(dataset_dir))}.partial-", dir=parent)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage, dataset_dir, names):
    """Move the files ``names`` from ``stage`` into ``dataset_dir`` in that order (the last
    one, the ``.inter``, marks a prepared dataset). Existing files are never replaced."""
    refuse_to_overwrite(dataset_dir, names)
    os.makedirs(dataset_dir, exist_ok=True)
    for name in names:
        os.rename(os.path.join(stage, name), os.path.join(dataset_dir, name))


def is_gzip(path):
    """Whether ``path`` starts with the gzip magic number."""
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


@contextlib.contextmanager
def open_dump(path, description, encoding="utf-8"):
    """A text stream over ``path`` (plain or gzip), with a tqdm bar over the bytes read
    from disk."""
    if not os.path.isfile(path):
        raise BiFairInputError(f"Input file not found: {path}")
    compressed = is_gzip(path)
    with open(path, "rb") as raw, tqdm(
        total=os.path.getsize(path), unit="B", unit_scale=True, desc=description, disable=None, leave=False
    ) as bar:
        counted = CallbackIOWrapper(bar.update, raw, "read")
        binary = gzip.GzipFile(fileobj=counted, mode="rb") if compressed else counted
        text = io.TextIOWrapper(binary, encoding=encoding, errors="replace", newline="")
        try:
            yield text
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise BiFairInputError(f"Cannot read {path}: {error}. Is the file complete?") from error
