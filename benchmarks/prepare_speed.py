"""How fast, and in how much memory, datasets are prepared (a measurement, not a test).

1. ml-1m: a synthetic archive in the GroupLens format with ml-1m's size (1,000,209 ratings,
   6,040 users, 3,900 movies), converted by ``prepare_dataset('ml-1m', raw=...)``.
2. Amazon: synthetic 2018 ratings CSVs (``item,user,rating,timestamp``) over the same item
   and user universe, converted with the default 5-core: 1M rows; the same 1M rows plus 4M
   rows from users who rate once (5M input rows, the same kept data); 5M rows.

Each conversion runs in a fresh Python process, which reports its wall time and peak RSS
(VmHWM from /proc/self/status on Linux, else ``resource.getrusage``), and its peak right
after importing the package (torch and RecBole come with it). Usage::

    python benchmarks/prepare_speed.py [--amazon-rows 1000000 5000000] [--one-off-rows 4000000]
                                       [--out results.json]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import pandas as pd

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from recbole_bifair.benchmark.child import peak_rss_mb
from recbole_bifair.data import prepare_dataset
imported_mb = peak_rss_mb()
start = time.perf_counter()
summary = prepare_dataset(**{kwargs!r})
print(json.dumps({{"wall_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(),
                  "rss_after_import_mb": imported_mb, "summary": summary}}))
"""


def synthetic_ml1m_archive(path, n_ratings=1_000_209, n_users=6_040, n_movies=3_900, seed=0):
    """A zip in the GroupLens ml-1m format, latin-1 titles included."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_movies + 1) ** 0.8
    draws = int(n_ratings * 1.5)
    keys = rng.integers(1, n_users + 1, size=draws) * 10**6 + rng.choice(
        np.arange(1, n_movies + 1), size=draws, p=popularity / popularity.sum())
    keys = np.sort(rng.permutation(np.unique(keys))[:n_ratings])
    ratings = pd.DataFrame({"user": keys // 10**6, "movie": keys % 10**6})
    ratings["rating"] = rng.integers(1, 6, size=len(ratings))
    ratings["timestamp"] = rng.integers(956703932, 1046454590, size=len(ratings))
    ratings_text = "\n".join("::".join(map(str, row)) for row in ratings.itertuples(index=False, name=None)) + "\n"
    movies_text = "".join(
        f"{movie}::{'Misérables, Les' if movie % 97 == 0 else f'Movie {movie}, The'} ({1919 + movie % 81})::"
        f"{'Drama|Musical' if movie % 2 else 'Comedy'}\n"
        for movie in range(1, n_movies + 1)
    )
    users_text = "".join(f"{user}::{'MF'[user % 2]}::{[1, 18, 25, 35, 45, 50, 56][user % 7]}::{user % 21}::{user:05d}\n" for user in range(1, n_users + 1))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in (("ratings.dat", ratings_text), ("movies.dat", movies_text), ("users.dat", users_text)):
            archive.writestr(f"ml-1m/{name}", text.encode("latin-1"))
    return path


def synthetic_amazon_csv(path, n_rows, n_users=2_000_000, n_items=200_000, seed=0, one_off_rows=0):
    """A 2018 ratings-only CSV: Zipf-like item popularity and user activity over fixed
    universes, timestamps 2000-2018. ``one_off_rows`` more rows, interleaved by the
    million, come from users who rate once (a 5-core drops them all)."""
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng(seed + 1)
    item_ids = np.array([f"{k:010d}" for k in range(n_items)], dtype=object)
    user_ids = np.array([f"A{k:013X}" for k in range(n_users)], dtype=object)
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_p /= item_p.sum()
    user_p = 1.0 / np.arange(1, n_users + 1) ** 0.7
    user_p /= user_p.sum()

    def block(generator, size, users):
        return pd.DataFrame({
            "item": item_ids[generator.choice(n_items, size=size, p=item_p)],
            "user": users,
            "rating": generator.integers(1, 6, size=size).astype(float),
            "timestamp": generator.integers(946684800, 1538352000, size=size),
        })

    written_noise = 0
    with open(path, "w") as out:
        for start in range(0, n_rows, 1_000_000):
            size = min(1_000_000, n_rows - start)
            block(rng, size, user_ids[rng.choice(n_users, size=size, p=user_p)]).to_csv(out, header=False, index=False)
            noise = min(one_off_rows - written_noise, one_off_rows // max(1, -(-n_rows // 1_000_000)))
            if start + size >= n_rows:
                noise = one_off_rows - written_noise
            if noise > 0:
                users = np.array([f"X{k:013X}" for k in range(written_noise, written_noise + noise)], dtype=object)
                block(noise_rng, noise, users).to_csv(out, header=False, index=False)
                written_noise += noise
    return path


def measure(kwargs):
    """Run ``prepare_dataset(**kwargs)`` in a fresh process; its report as a dict."""
    result = subprocess.run([sys.executable, "-c", CHILD.format(root=REPO_ROOT, kwargs=kwargs)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amazon-rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--one-off-rows", type=int, default=4_000_000,
                        help="extra rows from one-rating users added to the first --amazon-rows size")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="prepare-speed-")
    results = {"cpu_count": os.cpu_count()}
    try:
        started = time.perf_counter()
        archive = synthetic_ml1m_archive(os.path.join(work, "ml-1m.zip"))
        print(f"synthetic ml-1m archive: {os.path.getsize(archive) / 2**20:.1f} MiB in {time.perf_counter() - started:.1f} s")
        report = measure({"name": "ml-1m", "raw": archive, "out_dir": os.path.join(work, "ml1m"), "verify": False})
        results["ml-1m"] = report
        print(f"ml-1m-sized GroupLens archive -> atomic files: {report['wall_s']:.1f} s, peak RSS "
              f"{report['peak_rss_mb']:.0f} MiB (after import {report['rss_after_import_mb']:.0f} MiB), "
              f"{report['summary']['interactions']:,} interactions")
        scenarios = [(f"{n:,} rows", n, 0) for n in args.amazon_rows]
        scenarios.insert(1, (f"{args.amazon_rows[0]:,} rows + {args.one_off_rows:,} one-rating-user rows",
                             args.amazon_rows[0], args.one_off_rows))
        for label, n_rows, one_off_rows in scenarios:
            started = time.perf_counter()
            ratings = synthetic_amazon_csv(os.path.join(work, "ratings.csv"), n_rows, one_off_rows=one_off_rows)
            print(f"synthetic Amazon CSV, {label}: {os.path.getsize(ratings) / 2**20:.0f} MiB in {time.perf_counter() - started:.1f} s")
            report = measure({"name": "amazon-books", "ratings": ratings, "out_dir": os.path.join(work, f"amazon_{len(results)}")})
            results[f"amazon: {label}"] = report
            summary = report["summary"]
            print(f"Amazon {label}, 5-core: {report['wall_s']:.1f} s, peak RSS {report['peak_rss_mb']:.0f} MiB "
                  f"(after import {report['rss_after_import_mb']:.0f} MiB); read {summary['input_rows']:,} rows, kept "
                  f"{summary['interactions']:,} interactions, {summary['users']:,} users, {summary['items']:,} items")
            os.remove(ratings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        with open(args.out, "w") as out:
            json.dump(results, out, indent=2)
    return results


if __name__ == "__main__":
    main()
