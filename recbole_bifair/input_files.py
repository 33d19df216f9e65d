"""Finding and opening the user's input files: each problem is one ``BiFairInputError``."""
import codecs
import contextlib
import os

from recbole_bifair.errors import BiFairInputError


def existing_path(value, data_path, key):
    """``value`` as given (absolute or relative to the working folder), else inside the dataset
    folder ``data_path``; a missing file is an error naming ``key``."""
    path = os.path.expanduser(str(value))
    candidates = [path] if os.path.isabs(path) else [os.path.abspath(path)]
    if data_path and not os.path.isabs(path):
        candidates.append(os.path.join(data_path, path))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise BiFairInputError(
        f"{key} {value!r} not found (looked for {' and '.join(candidates)}). Give the path of an "
        "existing file, absolute or relative to the working folder or the dataset folder."
    )


@contextlib.contextmanager
def open_text(path, encoding="utf-8", encoding_key=None):
    """``open(path, encoding=encoding)``; an unknown encoding, or bytes that are not text in it,
    is one error naming the file (and ``encoding_key``, the config key that sets the encoding)."""
    setting = f" (config key {encoding_key})" if encoding_key else ""
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise BiFairInputError(
            f"Cannot read {path}: unknown encoding {encoding!r}{setting}. Use a Python codec name "
            "such as utf-8.") from None
    try:
        with open(path, encoding=encoding) as f:
            yield f
    except UnicodeDecodeError as error:
        hint = f", or set {encoding_key} to the encoding it is in" if encoding_key else ""
        raise BiFairInputError(
            f"{path} must be {encoding} text, but it is not ({error.reason} at byte {error.start}). "
            f"Save it as {encoding}{hint}.") from None
