"""Item-vector files: RecBole's atomic ``.itememb`` text format and a ``.npy`` matrix with an
ids file. Reading checks every row; writing is atomic (``files.replaced_atomically``).

``.itememb``: a header whose first field is ``<name>:token`` and second ``<name>:float_seq``
(e.g. ``item_id:token<TAB>item_emb:float_seq``), then one ``token<TAB>v1 v2 ... vd`` row per
item. Further columns are ignored.
"""
import os

import numpy as np

from recbole_bifair import files
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.files import open_text


def atomic_format(config):
    """How the dataset's atomic files are written, as RecBole reads them: ``field_separator``,
    ``seq_separator`` and ``encoding`` of ``config``, with RecBole's defaults for unset ones."""
    return {"field_separator": config["field_separator"] or "\t",
            "seq_separator": config["seq_separator"] or " ",
            "encoding": config["encoding"] or "utf-8"}


def read_vector_file(path, ids_path=None, field_separator="\t", seq_separator=" ", encoding="utf-8"):
    """``(tokens, float32 matrix)`` from a ``.itememb`` file or a ``.npy`` matrix + ids file."""
    if not os.path.isfile(path):
        raise BiFairInputError(f"Item vector file not found: {path}. Check llm_emb_file.")
    if path.endswith(".npy"):
        return read_npy_with_ids(path, ids_path, encoding)
    return read_itememb(path, field_separator, seq_separator, encoding)


def read_itememb(path, field_separator="\t", seq_separator=" ", encoding="utf-8"):
    """``(tokens, float32 matrix)`` from an atomic ``.itememb`` file."""
    tokens, vectors, line_numbers = [], [], []
    with open_text(path, encoding, "encoding") as f:
        check_itememb_header(f.readline().rstrip("\r\n"), path, field_separator)
        for line_number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            columns = line.rstrip("\r\n").split(field_separator)
            if len(columns) < 2:
                raise BiFairInputError(
                    f"{path}, line {line_number}: expected `token{field_separator!r}vector`, got "
                    f"{line.strip()[:60]!r}. Separate the item token and its vector with {field_separator!r}."
                )
            vector = parse_vector(columns[1], seq_separator, f"{path}, line {line_number}")
            if vectors and len(vector) != len(vectors[0]):
                raise BiFairInputError(
                    f"{path}: line {line_number} has a {len(vector)}-dimensional vector but line "
                    f"{line_numbers[0]} has {len(vectors[0])} dimensions. Every item needs a vector of "
                    "the same dimension."
                )
            tokens.append(columns[0])
            vectors.append(vector)
            line_numbers.append(line_number)
    if not vectors:
        raise BiFairInputError(f"{path} has a header but no item rows. Add one `token vector` row per item.")
    matrix = np.stack(vectors).astype(np.float32)
    return checked_rows(tokens, matrix, path, lambda row: f"line {line_numbers[row]}")


def check_itememb_header(header, path, field_separator):
    """The header must declare a ``:token`` column followed by a ``:float_seq`` column."""
    fields = header.split(field_separator)
    if len(fields) < 2 or not fields[0].endswith(":token") or not fields[1].endswith(":float_seq"):
        raise BiFairInputError(
            f"{path}: the first line must be a RecBole atomic header such as "
            f"`item_id:token{field_separator}item_emb:float_seq`, got {header[:80]!r}."
        )


def parse_vector(text, seq_separator, where):
    """A float64 vector from ``seq_separator``-separated numbers."""
    values = [value for value in text.strip().split(seq_separator) if value]
    if not values:
        raise BiFairInputError(f"{where}: the vector is empty. Give every item at least one number.")
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        bad = next(value for value in values if not _is_number(value))
        raise BiFairInputError(
            f"{where}: {bad!r} is not a number. Vector values must be numbers separated by "
            f"{seq_separator!r}."
        ) from None


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_npy_with_ids(path, ids_path, encoding="utf-8"):
    """``(tokens, float32 matrix)`` from a 2-D ``.npy`` matrix whose row i belongs to the item
    token on line i of ``ids_path``."""
    if not ids_path:
        raise BiFairInputError(
            f"{path} is a .npy matrix, which carries no item ids: set llm_emb_ids_file to a text "
            "file with one item token per line (line i = row i)."
        )
    if not os.path.isfile(ids_path):
        raise BiFairInputError(f"Item ids file not found: {ids_path}. Check llm_emb_ids_file.")
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # EOFError: an empty or truncated file
        reason = str(error) or "the file is empty or cut short"
        raise BiFairInputError(f"Cannot read {path} as a .npy matrix ({reason}). Save it with numpy.save.") from None
    if matrix.ndim != 2 or matrix.shape[1] == 0 or not np.issubdtype(matrix.dtype, np.number):
        raise BiFairInputError(
            f"{path} holds a {matrix.dtype} array of shape {matrix.shape}; expected a 2-D numeric "
            "[items, dimension] matrix."
        )
    tokens = read_ids_file(ids_path, encoding)
    if len(tokens) != matrix.shape[0]:
        raise BiFairInputError(
            f"{ids_path} lists {len(tokens)} item tokens but {path} has {matrix.shape[0]} rows: "
            "give exactly one token per matrix row, in row order."
        )
    return checked_rows(tokens, matrix.astype(np.float32), path, lambda row: f"row {row} (ids line {row + 1})")


def read_ids_file(ids_path, encoding="utf-8"):
    """One item token per line; trailing blank lines are ignored, blank lines inside are not."""
    with open_text(ids_path, encoding, "encoding") as f:
        tokens = [line.strip() for line in f.read().splitlines()]
    while tokens and not tokens[-1]:
        tokens.pop()
    if "" in tokens:
        raise BiFairInputError(
            f"{ids_path}, line {tokens.index('') + 1} is blank: every line must hold the item token of "
            "the matrix row with the same position."
        )
    return tokens


def checked_rows(tokens, matrix, path, describe_row):
    """Rejects NaN/inf and a token repeated with a different vector; drops exact repeats."""
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise BiFairInputError(
            f"{path}: {int((~finite).sum())} vector(s) contain NaN or inf (or values too large for "
            f"float32), first at {describe_row(row)} (item {tokens[row]!r}). Fix or regenerate those vectors."
        )
    first_row = {}
    keep = []
    for row, token in enumerate(tokens):
        if token not in first_row:
            first_row[token] = row
            keep.append(row)
        elif not np.array_equal(matrix[first_row[token]], matrix[row]):
            raise BiFairInputError(
                f"{path}: item {token!r} appears twice with different vectors ({describe_row(first_row[token])} "
                f"and {describe_row(row)}). Keep one row per item."
            )
    return [tokens[row] for row in keep], matrix[keep]


def write_itememb(path, tokens, matrix, id_field="item_id", field_separator="\t", seq_separator=" ", encoding="utf-8"):
    """Writes ``tokens`` and their vectors as an atomic ``.itememb`` file, atomically.
    Nine significant digits reproduce float32 values exactly."""
    value_format = seq_separator.join(["%.9g"] * matrix.shape[1])
    lines = [f"{id_field}:token{field_separator}item_emb:float_seq"]
    lines += [f"{token}{field_separator}{value_format % tuple(row)}" for token, row in zip(tokens, matrix.tolist())]
    files.write_text_atomically(path, "\n".join(lines) + "\n", encoding)
