"""Amazon review data (e.g. Books) as RecBole atomic files, streamed.

Interaction inputs, plain or gzipped, detected per file:

* ratings CSV, 2018 "ratings only" format, no header: ``item,user,rating,timestamp``
  (a CSV with a header naming ``user_id``/``parent_asin``/``rating``/``timestamp`` works too);
* reviews JSON lines, 2014/2018 (``reviewerID, asin, overall, unixReviewTime``) or 2023
  (``user_id, parent_asin, rating, timestamp`` in milliseconds).

Item metadata, JSON lines (2014 dumps: Python-literal lines), plain or gzipped: 2018
``asin, title, category`` (list), 2014 ``categories`` (list of lists), 2023
``parent_asin, title, categories``. Items are keyed by ``parent_asin`` where a record has
one, else by ``asin``.

The inputs are read twice and never held whole: a counting pass keeps one count per
distinct user and item (keyed by 64-bit hashes of the id strings); a collecting pass keeps
only rows whose user and item could be in the k-core, as integer codes (20 bytes a row),
and the id strings of those users and items; the metadata pass keeps the text of the
final items only. Then duplicates are dropped (the latest rating of a user-item pair
stays) and the k-core is iterated to a fixed point.

Defaults: 5-core on users and items, no time window, no user sample, seed 2024.
Output: ``<name>.inter`` (user_id, item_id, rating, timestamp in seconds) and
``<name>.item`` (item_id, title, categories; categories joined with `` | ``), one item row
per kept item, with empty text where the metadata lacks the item.
"""
import ast
import html
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recbole_bifair.data.atomic import one_line, open_dump, write_atomic_file
from recbole_bifair.errors import BiFairInputError

DEFAULTS = {
    "k_core": 5,
    "user_k_core": None,
    "item_k_core": None,
    "time_start": None,
    "time_end": None,
    "user_sample": None,
    "seed": 2024,
    "chunk_rows": 200_000,
}
ITEM_KEYS = ("parent_asin", "asin", "item", "item_id")
USER_KEYS = ("user_id", "reviewerID", "user")
RATING_KEYS = ("rating", "overall")
TIME_KEYS = ("timestamp", "unixReviewTime", "time")
CSV_COLUMNS_2018 = ["item", "user", "rating", "timestamp"]
MILLISECONDS_ABOVE = 1e11
CATEGORY_SEPARATOR = " | "

INTER_TYPES = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
ITEM_TYPES = {"item_id": "token", "title": "token_seq", "categories": "token_seq"}

_META_ID_PATTERNS = [
    re.compile(r"""["']parent_asin["']\s*:\s*["']([^"']+)["']"""),
    re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']"""),
]


@dataclass
class Filters:
    """Which interactions count: time window ``[start, end)`` in unix seconds, k-cores."""

    user_k: int = 5
    item_k: int = 5
    start: float = None
    end: float = None


@dataclass
class IdCounts:
    """Sorted 64-bit id hashes and how often each occurred (12 bytes per distinct id)."""

    keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    counts: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint32))

    def add(self, hashes):
        """Count ``hashes`` in."""
        new_keys, new_counts = np.unique(hashes, return_counts=True)
        positions = np.searchsorted(self.keys, new_keys)
        known = positions < len(self.keys)
        known[known] = self.keys[positions[known]] == new_keys[known]
        self.counts[positions[known]] += new_counts[known].astype(np.uint32)
        if not known.all():
            self.keys = np.insert(self.keys, positions[~known], new_keys[~known])
            self.counts = np.insert(self.counts, positions[~known], new_counts[~known].astype(np.uint32))

    def at_least(self, minimum):
        """Sorted keys seen at least ``minimum`` times."""
        return self.keys[self.counts >= minimum]


@dataclass
class Collected:
    """Candidate interactions as codes into the candidate user and item keys."""

    user_codes: np.ndarray
    item_codes: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    user_names: np.ndarray
    item_names: np.ndarray


def parse_time(value, option):
    """Unix seconds from an int, a numeric string or a date (``2017-01-01``, UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return pd.Timestamp(text, tz="UTC").timestamp()
    except (ValueError, TypeError) as error:
        raise BiFairInputError(f"{option}={value!r} is not a date (YYYY-MM-DD) or unix seconds.") from error


def hash_ids(values):
    """Deterministic 64-bit hashes of id strings."""
    return pd.util.hash_array(np.asarray(values, dtype=object))


def first_present(record, keys):
    """The value of the first of ``keys`` that ``record`` has, else None."""
    for key in keys:
        value = record.get(key)
        if value is not None and value != "":
            return value
    return None


def id_text(value):
    """An id as stripped text; None when missing or empty."""
    if value is None:
        return None
    return str(value).strip() or None


def parse_record(line, path, line_number):
    """A JSON object, or a Python literal dict as in the 2014 dumps."""
    try:
        record = json.loads(line)
    except ValueError:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
            raise BiFairInputError(
                f"{path}, line {line_number}: neither JSON nor a Python literal. Is the file "
                "a complete JSON-lines dump?"
            ) from error
    if not isinstance(record, dict):
        raise BiFairInputError(f"{path}, line {line_number}: expected one object per line.")
    return record


def first_line(path):
    """The first non-empty line of a (possibly gzipped) text file."""
    with open_dump(path, "peek") as stream:
        for line in stream:
            if line.strip():
                return line.strip()
    raise BiFairInputError(f"{path} is empty.")


def column_named(header, keys, path):
    """The first header column among ``keys``."""
    for key in keys:
        if key in header:
            return key
    raise BiFairInputError(f"{path}: the header {header} has none of the columns {', '.join(keys)}.")


def csv_layout(path, line):
    """``(header_row, names, usecols)`` for ``pd.read_csv`` on a ratings CSV."""
    fields = [part.strip() for part in line.split(",")]
    try:
        float(fields[2])
        return None, CSV_COLUMNS_2018, None
    except (IndexError, ValueError):
        pass
    if len(fields) < 4:
        raise BiFairInputError(
            f"{path} is neither JSON lines nor a ratings CSV (`item,user,rating,timestamp`)."
        )
    columns = [
        column_named(fields, ITEM_KEYS, path), column_named(fields, USER_KEYS, path),
        column_named(fields, RATING_KEYS, path), column_named(fields, TIME_KEYS, path),
    ]
    return 0, None, columns


def csv_chunks(path, chunk_rows, description):
    """Raw chunks (item, user, rating, timestamp) of a ratings CSV."""
    header, names, usecols = csv_layout(path, first_line(path))
    item, user, rating, stamp = usecols or names
    with open_dump(path, description) as stream:
        try:
            reader = pd.read_csv(
                stream, header=header, names=names, usecols=usecols, chunksize=chunk_rows, engine="c",
                dtype={item: str, user: str, rating: np.float64, stamp: np.float64},
                keep_default_na=False, na_values=[""],
            )
            for chunk in reader:
                chunk = chunk[[item, user, rating, stamp]]
                chunk.columns = CSV_COLUMNS_2018
                yield chunk
        except (pd.errors.ParserError, ValueError) as error:
            raise BiFairInputError(f"{path} is not a ratings CSV (`item,user,rating,timestamp`): {error}") from error


def json_chunks(path, chunk_rows, description):
    """Raw chunks (item, user, rating, timestamp) of a reviews JSON-lines file."""
    rows = []
    with open_dump(path, description) as stream:
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            record = parse_record(line, path, line_number)
            rows.append((
                id_text(first_present(record, ITEM_KEYS)), id_text(first_present(record, USER_KEYS)),
                first_present(record, RATING_KEYS), first_present(record, TIME_KEYS),
            ))
            if len(rows) >= chunk_rows:
                yield pd.DataFrame(rows, columns=CSV_COLUMNS_2018)
                rows = []
    if rows:
        yield pd.DataFrame(rows, columns=CSV_COLUMNS_2018)


def raw_chunks(path, chunk_rows, description):
    """Raw interaction chunks of one input file, whichever format it has."""
    if first_line(path).startswith("{"):
        return json_chunks(path, chunk_rows, description)
    return csv_chunks(path, chunk_rows, description)


def clean_chunk(chunk, filters):
    """Valid rows inside the time window: user, item (str), rating (float),
    timestamp (int seconds); rows with a missing field are dropped."""
    ratings = pd.to_numeric(chunk["rating"], errors="coerce")
    times = pd.to_numeric(chunk["timestamp"], errors="coerce")
    valid = (ratings.notna() & times.notna() & chunk["user"].notna() & chunk["item"].notna()).to_numpy()
    seconds = times.where(times <= MILLISECONDS_ABOVE, times // 1000).to_numpy()
    if filters.start is not None:
        valid &= seconds >= filters.start
    if filters.end is not None:
        valid &= seconds < filters.end
    return pd.DataFrame(
        {
            "user": chunk["user"].to_numpy(dtype=object)[valid],
            "item": chunk["item"].to_numpy(dtype=object)[valid],
            "rating": ratings.to_numpy(np.float32)[valid],
            "timestamp": seconds[valid].astype(np.int64),
        }
    )


def interaction_chunks(paths, filters, chunk_rows, description):
    """Clean interaction chunks over all input files, and a running row count."""
    stats = {"input_rows": 0, "kept_rows": 0}

    def chunks():
        for path in paths:
            for raw in raw_chunks(path, chunk_rows, f"{description} {os.path.basename(path)}"):
                stats["input_rows"] += len(raw)
                chunk = clean_chunk(raw, filters)
                stats["kept_rows"] += len(chunk)
                yield chunk

    return chunks(), stats


def count_ids(paths, filters, chunk_rows):
    """Pass 1: interactions per user and per item."""
    users, items = IdCounts(), IdCounts()
    chunks, stats = interaction_chunks(paths, filters, chunk_rows, "counting")
    for chunk in chunks:
        users.add(hash_ids(chunk["user"]))
        items.add(hash_ids(chunk["item"]))
    return users, items, stats


def sample_users(candidates, user_sample, seed):
    """``user_sample`` of the candidate users, drawn with ``seed``; all when None."""
    if not user_sample or user_sample >= len(candidates):
        return candidates
    return np.sort(np.random.default_rng(seed).choice(candidates, size=int(user_sample), replace=False))


def positions_in(sorted_keys, hashes):
    """Index of each hash in ``sorted_keys`` and whether it is there."""
    if len(sorted_keys) == 0:
        return np.zeros(len(hashes), np.int64), np.zeros(len(hashes), bool)
    positions = np.searchsorted(sorted_keys, hashes).clip(max=len(sorted_keys) - 1)
    return positions, sorted_keys[positions] == hashes


def collect_candidates(paths, filters, chunk_rows, user_keys, item_keys):
    """Pass 2: rows whose user and item are candidates, as codes."""
    parts = {"user_codes": [], "item_codes": [], "ratings": [], "timestamps": []}
    user_names = np.empty(len(user_keys), dtype=object)
    item_names = np.empty(len(item_keys), dtype=object)
    chunks, _ = interaction_chunks(paths, filters, chunk_rows, "collecting")
    for chunk in chunks:
        user_pos, user_found = positions_in(user_keys, hash_ids(chunk["user"]))
        item_pos, item_found = positions_in(item_keys, hash_ids(chunk["item"]))
        keep = user_found & item_found
        user_names[user_pos[keep]] = chunk["user"].to_numpy()[keep]
        item_names[item_pos[keep]] = chunk["item"].to_numpy()[keep]
        parts["user_codes"].append(user_pos[keep].astype(np.int32))
        parts["item_codes"].append(item_pos[keep].astype(np.int32))
        parts["ratings"].append(chunk["rating"].to_numpy()[keep])
        parts["timestamps"].append(chunk["timestamp"].to_numpy()[keep])
    arrays = {key: np.concatenate(values) if values else np.empty(0) for key, values in parts.items()}
    return Collected(user_names=user_names, item_names=item_names, **arrays)


def latest_per_pair(collected, n_items):
    """Mask of the rows to keep: one per user-item pair, the latest (last in the input on
    equal timestamps)."""
    pair = collected.user_codes.astype(np.int64) * n_items + collected.item_codes
    if len(pair) == 0:
        return np.zeros(0, bool)
    order = np.lexsort((np.arange(len(pair)), collected.timestamps, pair))
    last_of_pair = np.r_[pair[order][1:] != pair[order][:-1], True]
    keep = np.zeros(len(pair), bool)
    keep[order[last_of_pair]] = True
    return keep


def k_core(user_codes, item_codes, keep, user_k, item_k):
    """Shrink ``keep`` until every kept user has ``user_k`` and every kept item ``item_k``
    kept interactions."""
    n_users = int(user_codes.max(initial=-1)) + 1
    n_items = int(item_codes.max(initial=-1)) + 1
    while True:
        user_counts = np.bincount(user_codes[keep], minlength=n_users)
        item_counts = np.bincount(item_codes[keep], minlength=n_items)
        shrunk = keep & (user_counts[user_codes] >= user_k) & (item_counts[item_codes] >= item_k)
        if shrunk.sum() == keep.sum():
            return keep
        keep = shrunk


def category_names(value):
    """Category names from a list, a list of lists (2014) or a string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    names = []
    for entry in value:
        names.extend(category_names(entry))
    return names


def text_of(value):
    """Clean one-line text: HTML entities decoded."""
    return one_line(html.unescape(str(value))) if value is not None else ""


def categories_text(record):
    """The item's categories, deduplicated, joined with `` | ``."""
    names = [text_of(name) for name in category_names(first_present(record, ("categories", "category")))]
    return CATEGORY_SEPARATOR.join(dict.fromkeys(name for name in names if name))


def meta_item_id(line):
    """The item id of a metadata line without parsing it all, or None."""
    for pattern in _META_ID_PATTERNS:
        match = pattern.search(line)
        if match:
            return match.group(1)
    return None


def read_item_text(meta_paths, wanted):
    """``{item: (title, categories)}`` for the ``wanted`` items found in the metadata."""
    found = {}
    for path in meta_paths:
        with open_dump(path, f"metadata {os.path.basename(path)}") as stream:
            for line_number, line in enumerate(stream, start=1):
                quick_id = meta_item_id(line)
                if (quick_id is not None and quick_id not in wanted) or not line.strip():
                    continue
                record = parse_record(line, path, line_number)
                item = first_present(record, ("parent_asin", "asin"))
                if item in wanted and item not in found:
                    found[item] = (text_of(record.get("title")), categories_text(record))
    return found


def ratings_column(ratings):
    """Ratings as ints where they all are whole numbers."""
    if np.all(ratings == np.round(ratings)):
        return ratings.astype(np.int64)
    return ratings


def check_inputs(paths, meta_paths):
    """Raise unless every input file exists."""
    if not paths:
        raise BiFairInputError(
            "No Amazon interaction file given: pass the ratings CSV or reviews JSON lines with "
            "--ratings=PATH (e.g. Books.csv or Books.jsonl.gz), and the metadata with --meta=PATH."
        )
    for path in list(paths) + list(meta_paths):
        if not os.path.isfile(path):
            raise BiFairInputError(f"Amazon input file not found: {path}")


def filters_from(options):
    """Validated filters from the converter options."""
    k = int(options["k_core"])
    user_k = int(options["user_k_core"] if options["user_k_core"] is not None else k)
    item_k = int(options["item_k_core"] if options["item_k_core"] is not None else k)
    if min(user_k, item_k) < 1:
        raise BiFairInputError("k_core, user_k_core and item_k_core must be at least 1.")
    filters = Filters(
        user_k=user_k, item_k=item_k,
        start=parse_time(options["time_start"], "time_start"), end=parse_time(options["time_end"], "time_end"),
    )
    if filters.start is not None and filters.end is not None and filters.start >= filters.end:
        raise BiFairInputError("time_start must be before time_end.")
    return filters


def convert_amazon(paths, meta_paths, folder, name, **options):
    """Convert the Amazon files into ``folder``; returns the summary."""
    options = {**DEFAULTS, **{key: value for key, value in options.items() if value is not None}}
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise BiFairInputError(f"Unknown Amazon option(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}.")
    check_inputs(paths, meta_paths)
    filters = filters_from(options)
    chunk_rows = int(options["chunk_rows"])

    user_counts, item_counts, stats = count_ids(paths, filters, chunk_rows)
    user_keys = sample_users(user_counts.at_least(filters.user_k), options["user_sample"], int(options["seed"]))
    item_keys = item_counts.at_least(filters.item_k)
    del user_counts, item_counts
    collected = collect_candidates(paths, filters, chunk_rows, user_keys, item_keys)

    unique = latest_per_pair(collected, len(item_keys))
    keep = k_core(collected.user_codes, collected.item_codes, unique, filters.user_k, filters.item_k)
    if not keep.any():
        raise BiFairInputError(
            f"No interactions are left after the {filters.user_k}/{filters.item_k}-core filter "
            f"({stats['kept_rows']:,} of {stats['input_rows']:,} rows in the time window): lower "
            "--k_core, widen --time_start/--time_end or raise --user_sample."
        )
    users = collected.user_names[collected.user_codes[keep]]
    items = collected.item_names[collected.item_codes[keep]]
    inter = pd.DataFrame(
        {
            "user_id": users, "item_id": items,
            "rating": ratings_column(collected.ratings[keep]), "timestamp": collected.timestamps[keep],
        }
    )
    item_ids = sorted(set(items))
    text = read_item_text(meta_paths, set(item_ids))
    item_table = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": [text.get(item, ("", ""))[0] for item in item_ids],
            "categories": [text.get(item, ("", ""))[1] for item in item_ids],
        }
    )
    write_atomic_file(inter, os.path.join(folder, f"{name}.inter"), INTER_TYPES)
    write_atomic_file(item_table, os.path.join(folder, f"{name}.item"), ITEM_TYPES)
    return {
        "users": int(pd.unique(users).size),
        "items": len(item_ids),
        "interactions": len(inter),
        "items_without_text": int(((item_table["title"] == "") & (item_table["categories"] == "")).sum()),
        "input_rows": stats["input_rows"],
        "rows_in_window": stats["kept_rows"],
        "duplicates_removed": int(len(unique) - unique.sum()),
    }
