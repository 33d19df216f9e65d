"""Item groups (recbole_bifair.evaluator.groups): popularity splits on hand-made counts, attribute and
file groups on the tiny dataset, config validation, statistics, caching and logging."""
import logging
import os
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.evaluator import build_item_groups, item_group_config
from recbole_bifair.evaluator.groups import (
    groups_from_labels, popularity_group_names, popularity_groups)

DATA_PATH = os.path.join(os.path.dirname(__file__), "test_data")
TINY_ITEM_FILE = os.path.join(DATA_PATH, "tiny", "tiny.item")


def tiny_splits(**config_dict):
    """(config, train, valid, test datasets) of BPR on tiny with a ratio split and genres loaded."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        config = Config(model="BPR", dataset="tiny", config_dict={
            "data_path": DATA_PATH, "show_progress": False, "save_dataset": False,
            "save_dataloaders": False, "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO",
                                                     "group_by": "user", "mode": "full"},
            "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "class"]},
            **config_dict})
    finally:
        sys.argv = argv
    train, valid, test = data_preparation(config, create_dataset(config))
    return config, train.dataset, valid.dataset, test.dataset


@pytest.fixture(scope="module")
def tiny_bpr():
    return tiny_splits()


def with_groups(config, **block):
    """A copy of ``config``'s values with ``item_group`` set to ``block``."""
    values = dict(config.final_config_dict)
    values["item_group"] = block
    return values


def first_genres():
    """raw item token -> first listed genre, read from tiny.item with plain Python."""
    with open(TINY_ITEM_FILE, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return {row[0]: row[3].split(" ")[0] for row in rows}


# ---- popularity (hand-computed) --------------------------------------------------------------

# item ids 1..7 (0 = padding); item 6 is never seen in training; items 2 and 3 are tied.
COUNTS = np.array([0, 6, 2, 2, 4, 1, 0, 1])


def test_mass_split_two_groups():
    # ranked: 1(6) 4(4) 2(2) 3(2) 5(1) 7(1); mass before each: 0 6 10 12 14 15; threshold 16/2 = 8
    assert popularity_groups(COUNTS, 2, "mass").tolist() == [-1, 0, 1, 1, 0, 1, 1, 1]


def test_mass_split_breaks_ties_by_internal_id():
    # thresholds 16/3, 32/3: group 1 starts at item 4 (mass before 6), group 2 at item 3 (12);
    # tied items 2 and 3 are split, the lower id (2) in the more popular group
    assert popularity_groups(COUNTS, 3, "mass").tolist() == [-1, 0, 1, 2, 1, 2, 2, 2]


def test_count_split_equal_items_unseen_to_tail():
    # 6 seen items, 3 groups of 2: (1, 4) (2, 3) (5, 7); unseen item 6 joins the tail
    assert popularity_groups(COUNTS, 3, "count").tolist() == [-1, 0, 1, 1, 0, 2, 2, 2]


def test_count_split_when_many_items_unseen():
    assert popularity_groups(np.array([0, 5, 0, 0, 3]), 2, "count").tolist() == [-1, 0, 1, 1, 1]


def test_every_group_keeps_an_item_when_one_item_dominates():
    # item 1 holds 100 of 103 interactions: plain thresholds would leave group 1 empty
    assert popularity_groups(np.array([0, 100, 1, 1, 1]), 3, "mass").tolist() == [-1, 0, 1, 2, 2]


def test_single_group_and_too_many_groups():
    assert popularity_groups(COUNTS, 1, "mass").tolist() == [-1, 0, 0, 0, 0, 0, 0, 0]
    with pytest.raises(BiFairInputError, match="only 6 items occur in the training split"):
        popularity_groups(COUNTS, 7, "mass")


def test_popularity_group_names():
    assert popularity_group_names(1) == ["all"]
    assert popularity_group_names(2) == ["head", "tail"]
    assert popularity_group_names(4) == ["head", "mid1", "mid2", "tail"]


def test_groups_from_labels_order_by_training_interactions_then_name_unknown_last():
    labels = [None, "b", "a", "unknown", "c", "a", "b"]
    counts = np.array([0, 3, 2, 9, 5, 1, 0])
    item_group, names = groups_from_labels(labels, counts)
    # totals: b 3, a 3, unknown 9, c 5 -> c, a, b (tie by name), unknown last
    assert names == ["c", "a", "b", "unknown"]
    assert item_group.tolist() == [-1, 2, 1, 3, 0, 1, 2]


# ---- on the tiny dataset -------------------------------------------------------------------

def test_popularity_groups_of_tiny_statistics(tiny_bpr):
    config, train, valid, test = tiny_bpr
    groups = build_item_groups(config, train, valid, test)
    counts = np.bincount(train.inter_feat["item_id"].numpy(), minlength=train.item_num)
    assert groups.names == ["head", "mid1", "mid2", "mid3", "tail"]
    assert groups.item_group[0] == -1 and groups.item_group.dtype == torch.long
    assert set(groups.item_group[1:].tolist()) == set(range(5))
    assert groups.train_counts.tolist() == [
        int(counts[groups.item_group.numpy() == g].sum()) for g in range(5)]
    assert groups.train_counts.sum() == len(train.inter_feat)
    assert abs(float(groups.train_share.sum()) - 1) < 1e-9
    assert all(abs(float(s) - 0.2) < 0.06 for s in groups.train_share)
    assert groups.n_items.sum() == train.item_num - 1
    assert groups.n_items.tolist() == sorted(groups.n_items.tolist())
    for phase, dataset in (("valid", valid), ("test", test)):
        items = dataset.inter_feat["item_id"].numpy()
        expected = np.bincount(groups.item_group.numpy()[items], minlength=5)
        assert groups.eval_positives[phase].tolist() == expected.tolist()


def test_count_split_on_tiny_has_equal_item_numbers(tiny_bpr):
    config, train, _, _ = tiny_bpr
    groups = build_item_groups(with_groups(config, split="count"), train)
    seen = int((np.bincount(train.inter_feat["item_id"].numpy()) > 0).sum())
    sizes = groups.n_items.tolist()
    assert sum(sizes) == train.item_num - 1
    assert max(sizes[:-1]) - min(sizes[:-1]) <= 1 and sizes[-1] >= seen // 5


def test_attribute_first_value(tiny_bpr):
    config, train, _, _ = tiny_bpr
    groups = build_item_groups(with_groups(config, by="attribute", attribute="class"), train)
    genre = first_genres()
    tokens = train.field2id_token["item_id"]
    interactions = Counter(genre[tokens[i]] for i in train.inter_feat["item_id"].tolist())
    expected_names = sorted(set(genre.values()), key=lambda g: (-interactions[g], g))
    assert groups.names == expected_names
    for item_id in range(1, train.item_num):
        assert groups.names[groups.item_group[item_id]] == genre[tokens[item_id]]
    assert groups.train_counts.tolist() == [interactions[name] for name in expected_names]


def test_attribute_priority_with_unknown_group(tiny_bpr):
    config, train, _, _ = tiny_bpr
    groups = build_item_groups(
        with_groups(config, by="attribute", attribute="class", priority=["Sci-Fi", "Horror"]), train)
    assert set(groups.names) == {"Sci-Fi", "Horror", "unknown"} and groups.names[-1] == "unknown"
    with open(TINY_ITEM_FILE, encoding="utf-8") as f:
        genres = {row[0]: row[3].split(" ") for row in (l.rstrip("\n").split("\t") for l in f)}
    tokens = train.field2id_token["item_id"]
    for item_id in range(1, train.item_num):
        listed = genres[tokens[item_id]]
        expected = "Sci-Fi" if "Sci-Fi" in listed else "Horror" if "Horror" in listed else "unknown"
        assert groups.names[groups.item_group[item_id]] == expected


def test_attribute_missing_error(tiny_bpr):
    config, train, _, _ = tiny_bpr
    block = dict(by="attribute", attribute="class", priority=["Sci-Fi"], missing="error")
    with pytest.raises(BiFairInputError, match=r"\d+ item\(s\) have no value of attribute 'class'"):
        build_item_groups(with_groups(config, **block), train)


def test_attribute_errors(tiny_bpr):
    config, train, _, _ = tiny_bpr
    with pytest.raises(BiFairInputError, match="not a loaded item field.*load_col"):
        build_item_groups(with_groups(config, by="attribute", attribute="genre"), train)
    with pytest.raises(BiFairInputError, match=r"never takes.*\['Westrn'\]|\['Westrn'\].*never takes"):
        build_item_groups(with_groups(config, by="attribute", attribute="class",
                                      priority=["Drama", "Westrn"]), train)


def write_group_file(path, tokens, header=True, skip=()):
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write("item_id:token\tgroup:token\n")
        for t in tokens:
            if t not in skip:
                f.write(f"{t}\t{'odd' if int(t) % 2 else 'even'}\n")
        f.write("999999\teven\n")


def test_file_groups(tiny_bpr, tmp_path):
    config, train, _, _ = tiny_bpr
    tokens = list(train.field2id_token["item_id"][1:])
    path = tmp_path / "groups.tsv"
    write_group_file(path, tokens)
    groups = build_item_groups(with_groups(config, by="file", file=str(path)), train)
    assert sorted(groups.names) == ["even", "odd"]
    for item_id, token in enumerate(tokens, start=1):
        assert groups.names[groups.item_group[item_id]] == ("odd" if int(token) % 2 else "even")
    counts = Counter("odd" if int(train.field2id_token["item_id"][i]) % 2 else "even"
                     for i in train.inter_feat["item_id"].tolist())
    assert groups.names == sorted(counts, key=lambda n: (-counts[n], n))


def test_file_missing_items(tiny_bpr, tmp_path):
    config, train, _, _ = tiny_bpr
    tokens = list(train.field2id_token["item_id"][1:])
    path = tmp_path / "groups.tsv"
    write_group_file(path, tokens, header=False, skip=tokens[:3])
    with pytest.raises(BiFairInputError, match=r"no group for 3 of the dataset's 50 items \(e\.g\."):
        build_item_groups(with_groups(config, by="file", file=str(path)), train)


def test_file_relative_to_dataset_folder_and_bad_lines(tiny_bpr, tmp_path):
    config, train, _, _ = tiny_bpr
    write_group_file(tmp_path / "groups.tsv", list(train.field2id_token["item_id"][1:]))
    values = with_groups(config, by="file", file="groups.tsv")
    values["data_path"] = str(tmp_path)
    assert sorted(build_item_groups(values, train).names) == ["even", "odd"]
    values["item_group"]["file"] = "no_such_groups.tsv"
    with pytest.raises(BiFairInputError, match="not found"):
        build_item_groups(values, train)
    path = tmp_path / "bad.tsv"
    path.write_text("5\tA\n5\tB\n", encoding="utf-8")
    with pytest.raises(BiFairInputError, match="two groups"):
        build_item_groups(with_groups(config, by="file", file=str(path)), train)
    path.write_text("5 A\n", encoding="utf-8")
    with pytest.raises(BiFairInputError, match="line 1"):
        build_item_groups(with_groups(config, by="file", file=str(path)), train)


def test_file_that_is_not_utf8(tiny_bpr, tmp_path):
    config, train, _, _ = tiny_bpr
    path = tmp_path / "latin1.tsv"
    path.write_bytes("5\tcaf\u00e9\n".encode("latin-1"))
    with pytest.raises(BiFairInputError, match=r"latin1\.tsv must be utf-8 text"):
        build_item_groups(with_groups(config, by="file", file=str(path)), train)


def test_too_many_popularity_groups_on_tiny(tiny_bpr):
    config, train, _, _ = tiny_bpr
    with pytest.raises(BiFairInputError, match="n_groups is 60"):
        build_item_groups(with_groups(config, n_groups=60), train)


@pytest.mark.parametrize("block, message", [
    ({"by": "genre"}, "item_group.by is 'genre'"),
    ({"n_group": 3}, "Unknown item_group key"),
    ({"n_groups": 2.5}, "positive integer"),
    ({"n_groups": True}, "positive integer"),
    ({"n_groups": 0}, "positive integer"),
    ({"split": "equal"}, "item_group.split"),
    ({"attribute": "class"}, "attribute is set but item_group.by is 'popularity'"),
    ({"by": "attribute"}, "attribute is not set"),
    ({"by": "attribute", "attribute": "class", "n_groups": 3}, "n_groups applies to by: popularity"),
    ({"by": "attribute", "attribute": "class", "multi_value": "last"}, "multi_value"),
    ({"by": "attribute", "attribute": "class", "multi_value": "priority"}, "non-empty list"),
    ({"by": "attribute", "attribute": "class", "multi_value": "first", "priority": ["Drama"]},
     "remove one"),
    ({"by": "attribute", "attribute": "class", "missing": "drop"}, "item_group.missing"),
    ({"by": "file"}, "file is not set"),
    ("popularity", "must be a mapping"),
])
def test_bad_config_values(block, message):
    with pytest.raises(BiFairInputError, match=message):
        item_group_config({"item_group": block})


def test_defaults():
    assert item_group_config({}) == {
        "by": "popularity", "n_groups": 5, "split": "mass", "attribute": None,
        "multi_value": "first", "priority": None, "missing": "unknown", "file": None}
    assert item_group_config({"item_group": {"by": "attribute", "attribute": "a", "priority": ["x"]}})[
        "multi_value"] == "priority"


def test_built_once_per_training_split_and_logged(tiny_bpr, caplog):
    config, train, valid, test = tiny_bpr
    values = with_groups(config, n_groups=8)
    with caplog.at_level(logging.INFO):
        first = build_item_groups(values, train)
        again = build_item_groups(values, train)
    assert first is again
    assert sum("Item groups (by popularity, 8 groups" in r.message for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_item_groups(values, train, valid, test)
    summary = [r.message for r in caplog.records if r.message.startswith("Item groups")]
    assert len(summary) == 1 and "valid positives" in summary[0] and "test positives" in summary[0]
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    # tiny has about 150 valid and test positives in all: about 19 per group
    assert any("fewer than 30 valid positives" in w for w in warnings)
    assert any("fewer than 30 test positives" in w for w in warnings)
