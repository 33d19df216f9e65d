"""Bring your own dataset: an interactions CSV and an items CSV with text, written as RecBole
atomic files with the right types and quoting (``--prepare=csv``).

    python run_recbole_bifair.py --prepare=csv --dataset=mydata \
        --interactions=ratings.csv --items=items.csv [--user_col=user_id --item_col=item_id \
        --time_col=timestamp --rating_col=rating --text_cols=title,genres --sep=,]

``<data_path>/<dataset>/<dataset>.inter`` gets ``user_id:token item_id:token
[rating:float] timestamp:float`` (times as numbers, or dates turned into Unix seconds);
``<dataset>.item`` gets ``item_id:token`` and one ``token_seq`` field per text column (all
non-id columns by default), each value on one line. Existing files are never replaced. Run
it with ``load_col: ~`` (``--load_col=None``), so that RecBole loads the time and text columns.
"""
import os

import numpy as np
import pandas as pd

from recbole_bifair.data.atomic import one_line, publish, refuse_to_overwrite, staging_folder, write_atomic_file
from recbole_bifair.errors import BiFairInputError

DEFAULT_COLUMNS = {"user_col": "user_id", "item_col": "item_id", "time_col": "timestamp", "rating_col": None}


def read_csv_table(path, sep, what, encoding="utf-8"):
    if not path:
        raise BiFairInputError(f"--prepare=csv needs --{what}=FILE.csv.")
    if not os.path.isfile(path):
        raise BiFairInputError(f"--{what}: file not found: {path}.")
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=encoding)
    except UnicodeDecodeError:
        raise BiFairInputError(f"{path} is not {encoding} text; give its encoding with --encoding.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise BiFairInputError(f"{path} cannot be read as CSV with separator {sep!r}: {error}") from None


def column(table, name, path, option):
    if name not in table.columns:
        raise BiFairInputError(
            f"{path} has no column {name!r}; its columns are {', '.join(map(str, table.columns))}. "
            f"Name the right one with --{option}=COLUMN.")
    return table[name]


def unix_seconds(values, path):
    """Times as numbers: numbers stay, dates become Unix seconds."""
    numbers = pd.to_numeric(values, errors="coerce")
    if not numbers.isna().any():
        return numbers.astype(np.float64)
    dates = pd.to_datetime(values, errors="coerce", utc=True)
    bad = dates.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise BiFairInputError(
            f"{path}, data row {row + 1}: time {values.iloc[row]!r} is neither a number nor a date.")
    return (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def interactions_frame(table, path, columns):
    frame = pd.DataFrame({
        "user_id": column(table, columns["user_col"], path, "user_col").map(one_line),
        "item_id": column(table, columns["item_col"], path, "item_col").map(one_line),
    })
    if columns["rating_col"]:
        rating = pd.to_numeric(column(table, columns["rating_col"], path, "rating_col"), errors="coerce")
        if rating.isna().any():
            raise BiFairInputError(f"{path}: column {columns['rating_col']!r} holds values that are not numbers.")
        frame["rating"] = rating
    frame["timestamp"] = unix_seconds(column(table, columns["time_col"], path, "time_col"), path)
    empty = (frame["user_id"] == "") | (frame["item_id"] == "")
    if empty.any():
        raise BiFairInputError(f"{path}, data row {int(np.flatnonzero(empty.to_numpy())[0]) + 1}: empty user or item id.")
    return frame


def items_frame(table, path, item_col, text_cols):
    ids = column(table, item_col, path, "item_col").map(one_line)
    text_cols = text_cols or [c for c in table.columns if c != item_col]
    if not text_cols:
        raise BiFairInputError(f"{path} has no text column besides {item_col!r}; the LLM layer encodes item text.")
    frame = pd.DataFrame({"item_id": ids})
    for name in text_cols:
        frame[field_name(name)] = column(table, name, path, "text_cols").map(one_line)
    return frame.drop_duplicates("item_id", keep="first")


def field_name(name):
    """A column name usable as a RecBole field: no separators, colons or spaces."""
    cleaned = "_".join(str(name).replace(":", " ").split())
    if not cleaned or cleaned == "item_id":
        raise BiFairInputError(f"text column {name!r} cannot be a field name; rename it.")
    return cleaned


def prepare_csv(dataset_dir, name, interactions=None, items=None, sep=",", text_cols=None, encoding="utf-8", **columns):
    """Write ``name``'s ``.inter`` and ``.item`` into ``dataset_dir``; returns a summary."""
    columns = {**DEFAULT_COLUMNS, **{k: v for k, v in columns.items() if v}}
    inter = interactions_frame(read_csv_table(interactions, sep, "interactions", encoding), interactions, columns)
    item = items_frame(read_csv_table(items, sep, "items", encoding), items, columns["item_col"], text_cols)
    if os.path.isfile(os.path.join(dataset_dir, f"{name}.inter")):
        raise BiFairInputError(f"{dataset_dir} already holds {name}.inter; prepare into another --dataset or folder.")
    refuse_to_overwrite(dataset_dir, [f"{name}.item"])
    os.makedirs(dataset_dir, exist_ok=True)
    with staging_folder(dataset_dir) as stage:
        write_atomic_file(inter, os.path.join(stage, f"{name}.inter"),
                          {c: "float" if c in ("rating", "timestamp") else "token" for c in inter.columns})
        write_atomic_file(item, os.path.join(stage, f"{name}.item"),
                          {c: "token" if c == "item_id" else "token_seq" for c in item.columns})
        publish(stage, dataset_dir, [f"{name}.item", f"{name}.inter"])
    known = set(item["item_id"])
    return {"dataset": name, "path": dataset_dir, "status": "prepared", "source": f"{interactions} and {items}",
            "users": inter["user_id"].nunique(), "items": inter["item_id"].nunique(),
            "interactions": len(inter), "items_without_text": int((~inter["item_id"].drop_duplicates().isin(known)).sum()),
            "load_every_column": True}
