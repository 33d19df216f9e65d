"""The LLM item table (recbole_bifair.llm): vector files, the text encoders and the cache,
on a real RecBole dataset built from the bundled tiny data."""
import copy
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_bifair.errors import BiFairInputError
from recbole_bifair import files
from recbole_bifair.llm import encoder, item_text, load_item_embeddings, vector_files
from recbole_bifair.llm.cache import user_cache_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / "tests" / "test_data"
FIXTURES = TEST_DATA / "tiny"
OVERALL_YAML = REPO_ROOT / "properties" / "overall.yaml"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]
REAL_LOAD_ENCODER = encoder.load_encoder
_LOADED_ENCODERS = {}


def build_dataset(data_root, tmp_dir, **config_dict):
    """A RecBole config and dataset for ``<data_root>/tiny`` with the plugin's defaults."""
    from recbole.config import Config
    from recbole.data import create_dataset

    settings = {
        "data_path": str(data_root),
        "train_neg_sample_args": None,
        "show_progress": False,
        "checkpoint_dir": str(Path(tmp_dir) / "saved"),
        "state": "WARNING",
    }
    settings.update(config_dict)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", sys.argv[:1])
        config = Config(model="SASRec", dataset="tiny", config_file_list=[str(OVERALL_YAML)], config_dict=settings)
        return config, create_dataset(config)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, dataset) of the bundled tiny data; tests point data_path at their own copy."""
    return build_dataset(TEST_DATA, tmp_path_factory.mktemp("tiny_config"))


@pytest.fixture
def data_dir(tmp_path):
    """A writable copy of the tiny dataset folder."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "data" / "tiny", ignore=shutil.ignore_patterns("*.itememb*")))


def with_settings(config, **overrides):
    """``config`` with some keys replaced (RecBole's Config reads ``final_config_dict``)."""
    changed = copy.copy(config)
    changed.final_config_dict = dict(config.final_config_dict, **overrides)
    return changed


def item_tokens(dataset):
    return [str(token) for token in dataset.field2id_token["item_id"]]


def known_vector(token, dimension=3):
    """A vector that names its item, to check row placement."""
    return [float(token) + k / 10 for k in range(dimension)]


def write_itememb(path, rows, header="item_id:token\titem_emb:float_seq", extra_columns=""):
    lines = [header] + [f"{token}\t{' '.join(str(v) for v in vector)}{extra_columns}" for token, vector in rows]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def all_item_rows(dataset, dimension=3):
    return [(token, known_vector(token, dimension)) for token in item_tokens(dataset)[1:]]


@pytest.fixture
def encoder_loads(monkeypatch):
    """Counts encoder loads; each model directory is loaded once per test session."""
    loads = []

    def load(spec, device="cpu", show_progress=False):
        loads.append(spec)
        key = (spec.path, spec.kind, spec.pooling)
        if key not in _LOADED_ENCODERS:
            _LOADED_ENCODERS[key] = REAL_LOAD_ENCODER(spec, device)
        return _LOADED_ENCODERS[key]

    monkeypatch.setattr(encoder, "load_encoder", load)
    return loads


def forbid_encoder_loading(monkeypatch):
    def fail(spec, device="cpu", show_progress=False):
        raise AssertionError("the encoder was loaded although the cache should have been used")

    monkeypatch.setattr(encoder, "load_encoder", fail)


# ---------------------------------------------------------------- vector files


@pytest.mark.parametrize("header, extra_columns", [
    ("item_id:token\titem_emb:float_seq", ""),
    ("iid:token\tvec:float_seq\tnote:token", "\tignored"),
])
def test_itememb_file_rows_follow_internal_ids(tiny, tmp_path, header, extra_columns):
    config, dataset = tiny
    path = write_itememb(tmp_path / "vectors.itememb", all_item_rows(dataset), header, extra_columns)
    table = load_item_embeddings(with_settings(config, llm_emb_file=path), dataset)
    assert table.dtype == torch.float32 and table.shape == (dataset.item_num, 3)
    assert torch.equal(table[0], torch.zeros(3))
    for item_id, token in enumerate(item_tokens(dataset)[1:], start=1):
        assert table[item_id].tolist() == pytest.approx(known_vector(token))


def test_auto_reads_the_datasets_own_itememb(tiny, data_dir, monkeypatch):
    config, dataset = tiny
    write_itememb(data_dir / "tiny.itememb", all_item_rows(dataset, 4))
    forbid_encoder_loading(monkeypatch)
    table = load_item_embeddings(with_settings(config, data_path=str(data_dir)), dataset)
    assert table.shape == (dataset.item_num, 4)


def test_npy_matrix_with_ids_file(tiny, tmp_path):
    config, dataset = tiny
    tokens = item_tokens(dataset)[1:][::-1]
    np.save(tmp_path / "vectors.npy", np.array([known_vector(token, 5) for token in tokens]))
    (tmp_path / "ids.txt").write_text("\n".join(tokens) + "\n\n", encoding="utf-8")
    table = load_item_embeddings(
        with_settings(config, llm_emb_file=str(tmp_path / "vectors.npy"), llm_emb_ids_file=str(tmp_path / "ids.txt")),
        dataset,
    )
    assert table.shape == (dataset.item_num, 5)
    assert table[3].tolist() == pytest.approx(known_vector(item_tokens(dataset)[3], 5))


def test_file_relative_to_the_dataset_folder(tiny, data_dir, monkeypatch, tmp_path):
    config, dataset = tiny
    write_itememb(data_dir / "mine.itememb", all_item_rows(dataset))
    monkeypatch.chdir(tmp_path)
    table = load_item_embeddings(with_settings(config, data_path=str(data_dir), llm_emb_file="mine.itememb"), dataset)
    assert table.shape == (dataset.item_num, 3)


def test_rows_of_unknown_tokens_are_ignored(tiny, tmp_path, caplog):
    config, dataset = tiny
    item_num = dataset.item_num
    rows = all_item_rows(dataset) + [("999", [1.0, 2.0, 3.0]), ("new-item", [4.0, 5.0, 6.0])]
    path = write_itememb(tmp_path / "vectors.itememb", rows)
    with caplog.at_level(logging.INFO):
        table = load_item_embeddings(with_settings(config, llm_emb_file=path), dataset)
    assert table.shape[0] == item_num == dataset.item_num == 51
    assert "999" not in item_tokens(dataset)
    assert "2 rows" in caplog.text


def test_identical_duplicate_rows_are_accepted(tiny, tmp_path):
    config, dataset = tiny
    rows = all_item_rows(dataset)
    path = write_itememb(tmp_path / "vectors.itememb", rows + rows[:2])
    assert load_item_embeddings(with_settings(config, llm_emb_file=path), dataset).shape == (51, 3)


def bad_file_cases(dataset, tmp_path):
    """(name, settings, expected message) for every malformed input."""
    rows = all_item_rows(dataset)
    token = rows[0][0]

    def itememb(name, file_rows, header="item_id:token\titem_emb:float_seq"):
        return write_itememb(tmp_path / f"{name}.itememb", file_rows, header)

    def npy(name, matrix, ids):
        np.save(tmp_path / f"{name}.npy", matrix)
        (tmp_path / f"{name}.txt").write_text("\n".join(ids), encoding="utf-8")
        return {"llm_emb_file": str(tmp_path / f"{name}.npy"), "llm_emb_ids_file": str(tmp_path / f"{name}.txt")}

    tokens = [t for t, _ in rows]
    matrix = np.array([v for _, v in rows])
    return [
        ("mixed dimensions", {"llm_emb_file": itememb("mixed", rows[:5] + [(rows[5][0], [1.0, 2.0])] + rows[6:])},
         r"2-dimensional vector .* same dimension"),
        ("nan", {"llm_emb_file": itememb("nan", [(token, [1.0, float("nan"), 2.0])] + rows[1:])}, "NaN or inf"),
        ("inf", {"llm_emb_file": itememb("inf", rows[:-1] + [(rows[-1][0], [1.0, float("inf"), 2.0])])}, "NaN or inf"),
        ("not a number", {"llm_emb_file": itememb("text", [(token, ["1.0", "abc", "2"])] + rows[1:])},
         "'abc' is not a number"),
        ("empty vector", {"llm_emb_file": itememb("empty", [(token, [])] + rows[1:])}, "vector is empty"),
        ("duplicate", {"llm_emb_file": itememb("dup", rows + [(token, [9.0, 9.0, 9.0])])},
         f"item '{token}' appears twice with different vectors"),
        ("bad header", {"llm_emb_file": itememb("header", rows, "item_id:token\titem_emb:float")}, "atomic header"),
        ("no rows", {"llm_emb_file": itememb("norows", [])}, "no item rows"),
        ("missing items", {"llm_emb_file": itememb("short", rows[:-7])},
         r"7 of the dataset's 50 items have no vector .*e\.g\. .*llm_missing_items"),
        ("no matching token", {"llm_emb_file": itememb("foreign", [(f"x{t}", v) for t, v in rows])},
         "None of the 50 item tokens"),
        ("missing file", {"llm_emb_file": str(tmp_path / "nowhere.itememb")}, "llm_emb_file .* not found"),
        ("ids length", npy("length", matrix, tokens[:-1]), "lists 49 item tokens but .* has 50 rows"),
        ("npy without ids", {"llm_emb_file": npy("noids", matrix, tokens)["llm_emb_file"]}, "set llm_emb_ids_file"),
        ("npy 1-D", npy("flat", matrix[:, 0], tokens), r"expected a 2-D numeric"),
        ("missing ids file", dict(npy("ids", matrix, tokens), llm_emb_ids_file=str(tmp_path / "no.txt")),
         "llm_emb_ids_file .* not found"),
        ("source file without a file", {"llm_emb_source": "file"}, "llm_emb_source is 'file'"),
        ("unknown source", {"llm_emb_source": "web"}, "llm_emb_source must be one of auto, file, encoder"),
        ("unknown fallback", {"llm_missing_items": "skip"}, "llm_missing_items must be one of"),
        ("unknown pooling", {"llm_pooling": "max"}, "llm_pooling must be one of mean, last"),
        ("bad batch size", {"llm_encode_batch_size": 0}, "llm_encode_batch_size must be a positive integer"),
    ]


def error_message(config, dataset):
    """The BiFairInputError message that loading raises, or None."""
    try:
        load_item_embeddings(config, dataset)
    except BiFairInputError as error:
        return str(error)
    return None


def test_every_bad_input_raises_one_clear_error(tiny, tmp_path):
    config, dataset = tiny
    for name, settings, expected in bad_file_cases(dataset, tmp_path):
        message = error_message(with_settings(config, data_path=str(tmp_path), **settings), dataset)
        assert message is not None and re.search(expected, message), (name, message)


@pytest.mark.parametrize("policy", ["zero", "mean", "random"])
def test_missing_item_fallbacks(tiny, tmp_path, caplog, policy):
    config, dataset = tiny
    rows = all_item_rows(dataset)
    path = write_itememb(tmp_path / "short.itememb", rows[:-4])
    settings = with_settings(config, llm_emb_file=path, llm_missing_items=policy)
    with caplog.at_level(logging.WARNING):
        table = load_item_embeddings(settings, dataset)
    assert "4 of the dataset's 50 items have no vector" in caplog.text
    known, filled = table[1:-4], table[-4:]
    if policy == "zero":
        assert torch.equal(filled, torch.zeros_like(filled))
    elif policy == "mean":
        assert torch.allclose(filled, known.mean(dim=0).expand_as(filled))
    else:
        assert torch.equal(table, load_item_embeddings(settings, dataset))
        assert filled.std(dim=0).min() > 0


# ---------------------------------------------------------------- item text


def test_default_text_joins_the_text_fields(tiny):
    config, dataset = tiny
    texts = item_text.item_texts(config, dataset)
    by_token = dict(zip(item_tokens(dataset)[1:], texts.texts))
    assert by_token["1"] == "movie_title: The River Harbor; release_year: 1981; class: Romance"
    assert by_token["5"] == (
        "movie_title: The Garden Garden, Part 1 (Director's Cut); release_year: 1985; class: Action Thriller"
    )
    assert texts.untexted == []


def test_loaded_item_features_give_the_same_texts(tiny, tmp_path):
    config, dataset = tiny
    loaded_config, loaded = build_dataset(TEST_DATA, tmp_path, load_col=None)
    assert loaded.item_feat is not None
    from_feat = item_text.item_texts(loaded_config, loaded)
    assert from_feat.origin.startswith("the loaded item features")
    assert from_feat.texts == item_text.item_texts(config, dataset).texts
    train_split = loaded.build()[0]
    assert type(train_split.item_feat).__name__ == "Interaction"
    assert item_text.item_texts(loaded_config, train_split).texts == from_feat.texts


def test_template_fills_item_fields(tiny):
    config, dataset = tiny
    texts = item_text.item_texts(config, dataset, "{movie_title} ({release_year}). Genres: {class}")
    assert dict(zip(item_tokens(dataset)[1:], texts.texts))["2"] == "The Ghost Lantern (1982). Genres: Romance Sci-Fi"


@pytest.mark.parametrize("template, message", [
    ("{title} ({year})", r"uses \{title\}, but the item fields are: item_id, movie_title, release_year, class"),
    ("{movie_title", "not a valid format string"),
])
def test_bad_template(tiny, template, message):
    config, dataset = tiny
    with pytest.raises(BiFairInputError, match=message):
        load_item_embeddings(with_settings(config, llm_emb_source="encoder", llm_text_template=template), dataset)


def test_numeric_fields_read_as_plain_numbers():
    assert item_text.value_text(None, "year", "float", 1995.0) == "1995"
    assert item_text.value_text(None, "scores", "float_seq", [3.5, 0.25, float("nan")]) == "3.5 0.25"


def test_items_without_text_fall_back_to_their_token(tiny, data_dir, caplog):
    config, dataset = tiny
    lines = (data_dir / "tiny.item").read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.split("\t")[0] not in {"7", "8"}]
    (data_dir / "tiny.item").write_text("\n".join(kept) + "\n", encoding="utf-8")
    texts = item_text.item_texts(with_settings(config, data_path=str(data_dir)), dataset)
    by_token = dict(zip(item_tokens(dataset)[1:], texts.texts))
    assert by_token["7"] == "7" and sorted(texts.untexted) == ["7", "8"]


def test_no_item_text_at_all_is_an_error(tiny, data_dir):
    config, dataset = tiny
    (data_dir / "tiny.item").unlink()
    with pytest.raises(BiFairInputError, match="No item text to encode"):
        load_item_embeddings(with_settings(config, data_path=str(data_dir)), dataset)


def test_item_file_without_the_item_id_column_is_an_error(tiny, data_dir):
    config, dataset = tiny
    path = data_dir / "tiny.item"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(["movie:token" + lines[0][lines[0].index("\t"):]] + lines[1:]) + "\n", encoding="utf-8")
    with pytest.raises(BiFairInputError, match="has no item_id column"):
        item_text.item_texts(with_settings(config, data_path=str(data_dir)), dataset)


# ---------------------------------------------------------------- encoder and cache


def test_generated_table_from_the_packaged_encoder(tiny, data_dir, tmp_path, encoder_loads):
    config, dataset = tiny
    settings = with_settings(config, data_path=str(data_dir))
    table = load_item_embeddings(settings, dataset)
    assert table.shape == (dataset.item_num, 384) and table.dtype == torch.float32
    assert torch.equal(table[0], torch.zeros(384))
    assert table[1:].norm(dim=1).min() > 0.5

    texts = item_text.item_texts(settings, dataset).texts
    spec = encoder_loads[0]
    direct = _LOADED_ENCODERS[(spec.path, spec.kind, spec.pooling)].encode(texts[9:10])
    assert np.allclose(table[10].numpy(), direct[0], atol=1e-5)

    again = load_item_embeddings(with_settings(settings, llm_emb_cache_dir=str(tmp_path / "other")), dataset)
    assert len(encoder_loads) == 2 and torch.allclose(table, again, atol=1e-6)


def test_cache_is_reused_without_loading_the_encoder(tiny, data_dir, encoder_loads, monkeypatch):
    config, dataset = tiny
    settings = with_settings(config, data_path=str(data_dir))
    generated = load_item_embeddings(settings, dataset)
    cached = sorted(data_dir.glob("tiny.*.itememb"))
    assert len(cached) == 1 and (data_dir / (cached[0].name + ".json")).is_file()
    assert not (data_dir / "tiny.itememb").exists()
    assert not [p for p in data_dir.iterdir() if p.name.endswith(".tmp")]

    forbid_encoder_loading(monkeypatch)
    assert torch.equal(load_item_embeddings(settings, dataset), generated)
    reused = load_item_embeddings(with_settings(config, llm_emb_file=str(cached[0])), dataset)
    assert torch.equal(reused, generated)


def test_a_damaged_cache_file_is_regenerated(tiny, data_dir, encoder_loads, caplog):
    config, dataset = tiny
    settings = with_settings(config, data_path=str(data_dir))
    generated = load_item_embeddings(settings, dataset)
    cached = next(data_dir.glob("tiny.*.itememb"))
    cached.write_text(cached.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        again = load_item_embeddings(settings, dataset)
    assert "Ignoring the unreadable cache" in caplog.text and len(encoder_loads) == 2
    assert torch.allclose(again, generated, atol=1e-6)
    assert torch.equal(load_item_embeddings(with_settings(settings, llm_emb_file=str(cached)), dataset), again)


def cache_files(folder):
    return sorted(p.name for p in Path(folder).glob("tiny.*.itememb"))


@pytest.mark.slow
def test_cache_is_invalidated_when_its_inputs_change(tiny, data_dir, tmp_path, encoder_loads):
    config, dataset = tiny
    settings = with_settings(config, data_path=str(data_dir))
    first = load_item_embeddings(settings, dataset)
    load_item_embeddings(settings, dataset)
    assert len(encoder_loads) == 1

    load_item_embeddings(with_settings(settings, llm_text_template="{movie_title}"), dataset)
    assert len(encoder_loads) == 2

    text = (data_dir / "tiny.item").read_text(encoding="utf-8")
    (data_dir / "tiny.item").write_text(text.replace("The River Harbor", "The River Harbour"), encoding="utf-8")
    changed_text = load_item_embeddings(settings, dataset)
    assert len(encoder_loads) == 3
    changed_row = item_tokens(dataset).index("1")
    assert not torch.allclose(changed_text[changed_row], first[changed_row])

    model_copy = Path(shutil.copytree(encoder.packaged_encoder_path(), tmp_path / "minilm"))
    load_item_embeddings(with_settings(settings, llm_encoder=str(model_copy)), dataset)
    assert len(encoder_loads) == 4
    weights = model_copy / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    load_item_embeddings(with_settings(settings, llm_encoder=str(model_copy)), dataset)
    assert len(encoder_loads) == 5
    assert len(cache_files(data_dir)) == 5


def test_cache_is_invalidated_when_the_item_set_changes(tiny, data_dir, tmp_path, encoder_loads):
    config, dataset = tiny
    cache_dir = tmp_path / "cache"
    load_item_embeddings(with_settings(config, data_path=str(data_dir), llm_emb_cache_dir=str(cache_dir)), dataset)
    inter = (data_dir / "tiny.inter").read_text(encoding="utf-8").splitlines()
    (data_dir / "tiny.inter").write_text(
        "\n".join(line for line in inter if line.split("\t")[1] != "50") + "\n", encoding="utf-8"
    )
    smaller_config, smaller = build_dataset(data_dir.parent, tmp_path, llm_emb_cache_dir=str(cache_dir))
    assert smaller.item_num == dataset.item_num - 1
    table = load_item_embeddings(smaller_config, smaller)
    assert table.shape == (smaller.item_num, 384)
    assert len(encoder_loads) == 2 and len(cache_files(cache_dir)) == 2


def test_a_users_own_itememb_is_never_overwritten(tiny, data_dir, encoder_loads):
    config, dataset = tiny
    own = write_itememb(data_dir / "tiny.itememb", all_item_rows(dataset, 4))
    before = Path(own).read_bytes()
    generated = load_item_embeddings(with_settings(config, data_path=str(data_dir), llm_emb_source="encoder"), dataset)
    assert generated.shape[1] == 384 and Path(own).read_bytes() == before
    assert len(cache_files(data_dir)) == 1 and (data_dir / "tiny.itememb").is_file()
    assert load_item_embeddings(with_settings(config, data_path=str(data_dir)), dataset).shape[1] == 4


def test_read_only_dataset_folder_falls_back_to_the_user_cache(tiny, data_dir, tmp_path, encoder_loads, monkeypatch):
    config, dataset = tiny
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real_write = files.write_text_atomically

    def read_only_dataset_folder(path, text, encoding="utf-8"):
        if Path(path).parent == data_dir:
            raise PermissionError(13, "Permission denied", path)
        return real_write(path, text, encoding)

    monkeypatch.setattr(files, "write_text_atomically", read_only_dataset_folder)
    settings = with_settings(config, data_path=str(data_dir))
    load_item_embeddings(settings, dataset)
    assert user_cache_dir() == str(tmp_path / "xdg" / "recbole_bifair")
    assert len(cache_files(user_cache_dir())) == 1 and cache_files(data_dir) == []
    forbid_encoder_loading(monkeypatch)
    load_item_embeddings(settings, dataset)


def test_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "vectors.itememb"
    target.write_text("old\n", encoding="utf-8")

    def interrupted(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        vector_files.write_itememb(str(target), ["1"], np.ones((1, 2), dtype=np.float32))
    assert target.read_text(encoding="utf-8") == "old\n" and os.listdir(tmp_path) == ["vectors.itememb"]


def test_itememb_that_is_not_in_the_encoding(tmp_path):
    path = tmp_path / "latin1.itememb"
    path.write_bytes("item_id:token\titem_emb:float_seq\ncaf\u00e9\t1 2\n".encode("latin-1"))
    with pytest.raises(BiFairInputError, match=r"latin1\.itememb must be utf-8 text.*set encoding"):
        vector_files.read_itememb(str(path))
    assert vector_files.read_itememb(str(path), encoding="latin-1")[0] == ["caf\u00e9"]
    with pytest.raises(BiFairInputError, match=r"latin1\.itememb: unknown encoding 'no-such-codec'"):
        vector_files.read_itememb(str(path), encoding="no-such-codec")


def test_ids_file_that_is_not_in_the_encoding(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(BiFairInputError, match=r"ids\.txt must be utf-8 text.*set encoding"):
        vector_files.read_ids_file(str(path))
    with pytest.raises(BiFairInputError, match=r"ids\.txt: unknown encoding 'no-such-codec'"):
        vector_files.read_ids_file(str(path), encoding="no-such-codec")


@pytest.mark.parametrize("name, message", [
    ("sentence-transformers/all-MiniLM-L6-v2", "is not a local directory.*leave llm_encoder empty"),
    ("", None),
])
def test_encoder_names_must_be_local_directories(tiny, name, message):
    config, dataset = tiny
    if message is None:
        spec = encoder.resolve_encoder(name)
        assert spec.kind == encoder.SENTENCE_TRANSFORMERS and os.path.isdir(spec.path)
        return
    with pytest.raises(BiFairInputError, match=message):
        load_item_embeddings(with_settings(config, llm_emb_source="encoder", llm_encoder=name), dataset)


def test_directories_that_are_not_loadable_models(tiny, tmp_path):
    config, dataset = tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    settings = with_settings(config, llm_emb_source="encoder", llm_emb_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(BiFairInputError, match="not a model directory"):
        load_item_embeddings(with_settings(settings, llm_encoder=str(empty)), dataset)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(BiFairInputError, match="Cannot load the transformers model .* offline"):
        load_item_embeddings(with_settings(settings, llm_encoder=str(broken)), dataset)


# ---------------------------------------------------------------- Hugging Face directories and pooling


@pytest.fixture(scope="module")
def tiny_hf_models(tmp_path_factory):
    """Randomly initialised BERT (encoder) and GPT-2 (decoder) directories with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    root = tmp_path_factory.mktemp("hf_models")
    tokenizer_dir = Path(encoder.packaged_encoder_path())
    torch.manual_seed(0)
    models = {
        "bert": BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)),
        "gpt2": GPT2Model(GPT2Config(vocab_size=30522, n_embd=16, n_layer=1, n_head=2, n_positions=64)),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = root / name
        model.save_pretrained(paths[name])
        for file_name in TOKENIZER_FILES:
            shutil.copy(tokenizer_dir / file_name, paths[name] / file_name)
    return paths


def one_text_at_a_time(path, texts):
    """``{pooling: vectors}`` of each text encoded alone, without padding."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    with torch.no_grad():
        states = [model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0] for text in texts]
    return {"mean": torch.stack([s.mean(dim=0) for s in states]), "last": torch.stack([s[-1] for s in states])}


@pytest.mark.parametrize("model_name", ["bert", "gpt2"])
def test_hf_directory_mean_and_last_pooling(tiny, tmp_path, tiny_hf_models, model_name):
    config, dataset = tiny
    path = tiny_hf_models[model_name]
    settings = with_settings(config, llm_emb_source="encoder", llm_encoder=str(path),
                             llm_emb_cache_dir=str(tmp_path), llm_encode_batch_size=16)
    texts = item_text.item_texts(settings, dataset).texts
    expected = one_text_at_a_time(path, texts[:8])
    tables = {}
    for pooling in ("mean", "last"):
        tables[pooling] = load_item_embeddings(with_settings(settings, llm_pooling=pooling), dataset)
        assert tables[pooling].shape == (dataset.item_num, 16)
        assert torch.equal(tables[pooling][0], torch.zeros(16))
        assert torch.allclose(tables[pooling][1:9], expected[pooling], atol=1e-5)
    assert not torch.allclose(tables["mean"], tables["last"])
    assert len(cache_files(tmp_path)) == 2


def test_last_pooling_finds_the_last_real_token_with_either_padding_side():
    states = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    assert encoder.pool(states, mask, "last").tolist() == [[4.0, 5.0], [8.0, 9.0]]
    assert encoder.pool(states, mask, "mean").tolist() == [[3.0, 4.0], [7.0, 8.0]]


def test_temporary_files_of_killed_writers_are_removed_and_a_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    from recbole_bifair.files import _host_tag, write_text_atomically

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, host = int(dead.stdout), _host_tag()
    stale = tmp_path / f".vectors.itememb.{host}.{dead_pid}.deadbeef.tmp"
    live = tmp_path / f".vectors.itememb.{host}.{os.getppid()}.cafef00d.tmp"  # a concurrent writer, still running
    elsewhere = tmp_path / f".vectors.itememb.other-machine.{dead_pid}.deadbeef.tmp"  # its PIDs mean nothing here
    other = tmp_path / f".other.itememb.{host}.{dead_pid}.deadbeef.tmp"
    for path in (stale, live, elsewhere, other):
        path.write_text("partial")
    write_text_atomically(str(tmp_path / "vectors.itememb"), "whole\n")
    assert (tmp_path / "vectors.itememb").read_text() == "whole\n"
    assert not stale.exists() and live.exists() and elsewhere.exists() and other.exists()


def test_an_empty_or_cut_npy_file_is_one_clear_error(tiny, tmp_path):
    config, dataset = tiny
    tokens = item_tokens(dataset)[1:]
    (tmp_path / "ids.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    np.save(tmp_path / "whole.npy", np.ones((len(tokens), 4), dtype=np.float32))
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "whole.npy").read_bytes()[:200])
    for name in ("empty.npy", "cut.npy"):
        settings = with_settings(config, llm_emb_file=str(tmp_path / name), llm_emb_ids_file=str(tmp_path / "ids.txt"))
        with pytest.raises(BiFairInputError, match=f"Cannot read .*{name} as a .npy matrix"):
            load_item_embeddings(settings, dataset)
