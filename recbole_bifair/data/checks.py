"""Checks of a dataset's atomic files before RecBole reads them, so that a problem RecBole
would report with a traceback (or not at all) is one line naming the file, the line and the
fix: the encoding, the ``name:type`` header and its separator, the columns the run needs, and
double quotes that RecBole's CSV reader would take for quoting."""
import csv
import os

from recbole_bifair.config_values import config_value
from recbole_bifair.errors import BiFairInputError

ATOMIC_SUFFIXES = ("inter", "item", "user")
FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


def check_atomic_files(config):
    """Check the ``.inter``, ``.item`` and ``.user`` files of ``config``'s dataset that exist
    (RecBole's bundled ml-100k and saved datasets are not read from atomic files)."""
    dataset_dir = config_value(config, "data_path")
    if config_value(config, "dataset_save_path") or not dataset_dir:
        return
    dataset = config_value(config, "dataset")
    separator = config_value(config, "field_separator", "\t")
    encoding = config_value(config, "encoding", "utf-8")
    for suffix in ATOMIC_SUFFIXES:
        path = os.path.join(dataset_dir, f"{dataset}.{suffix}")
        if os.path.isfile(path):
            fields = check_atomic_file(path, separator, encoding)
            if suffix == "inter":
                check_needed_columns(path, fields, config)


def check_atomic_file(path, separator, encoding):
    """The header's field names of one atomic file, after checking its text and quoting."""
    with open(path, "rb") as f:
        raw_lines = f.read().splitlines()
    if not raw_lines:
        raise BiFairInputError(f"{path} is empty; an atomic file starts with a `name:type` header line.")
    lines = [decoded(line, path, number, encoding) for number, line in enumerate(raw_lines, start=1)]
    fields = header_fields(lines[0], path, separator)
    check_quoting(lines, path, separator)
    return fields


def decoded(line, path, number, encoding):
    try:
        return line.decode(encoding)
    except UnicodeDecodeError:
        raise BiFairInputError(
            f"{path}, line {number} is not {encoding} text; give the file's encoding, e.g. "
            "--encoding=latin-1, or save it as UTF-8.") from None


def header_fields(header, path, separator):
    """The field names of a ``name:type`` header."""
    columns = header.split(separator)
    if len(columns) == 1 and " " in header.strip():
        raise BiFairInputError(
            f"{path}, line 1: the header's columns are separated by spaces; RecBole's atomic files "
            f"separate them with {separator!r} (or set field_separator).")
    names = []
    for column in columns:
        name, colon, kind = column.partition(":")
        if not colon:
            raise BiFairInputError(
                f"{path}, line 1: column {column!r} has no type; write name:type, e.g. {column}:token "
                f"(types: {', '.join(FIELD_TYPES)}).")
        if kind not in FIELD_TYPES:
            raise BiFairInputError(
                f"{path}, line 1: column {name!r} has the unknown type {kind!r}; use one of "
                f"{', '.join(FIELD_TYPES)}.")
        names.append(name)
    return names


def check_quoting(lines, path, separator):
    """RecBole reads atomic files as CSV: a field that starts with ``"`` is taken for a quoted
    field and must be one (inner quotes doubled)."""
    reader = csv.reader(lines, delimiter=separator, strict=True)
    try:
        for _ in reader:
            pass
    except csv.Error:
        raise BiFairInputError(
            f"{path}, line {reader.line_num}: a field starts with a double quote but is not a valid quoted "
            "CSV field, so RecBole's reader would fail or join lines. Quote the whole field and double the "
            "quotes inside it (\"\"\"Great Performances\"\" Cats\"), or write the files with "
            "`python run_recbole_bifair.py --prepare=csv`.") from None


def check_needed_columns(path, fields, config):
    """The user and item id columns, and the time column when the split orders by time."""
    needed = {"USER_ID_FIELD": config_value(config, "USER_ID_FIELD"),
              "ITEM_ID_FIELD": config_value(config, "ITEM_ID_FIELD")}
    eval_args = config_value(config, "eval_args", {}) or {}
    if str(eval_args.get("order", "")).upper() == "TO":
        needed["TIME_FIELD"] = config_value(config, "TIME_FIELD")
    load_col = config_value(config, "load_col")
    loaded = (load_col or {}).get("inter") if isinstance(load_col, dict) else None
    for key, name in needed.items():
        if name is None:  # not used by this run (context-aware data sets no user or item id)
            continue
        if name not in fields:
            raise BiFairInputError(
                f"{path} has no column {name!r} ({key}); its columns are {', '.join(fields)}. Set "
                f"--{key}=<column> to the right one, or rename the column.")
        if loaded is not None and name not in loaded:
            raise BiFairInputError(
                f"load_col loads {loaded} from {path}, without {name!r} ({key}), which the run needs; "
                "add it to load_col's inter list, or set load_col: ~ to load every column.")
