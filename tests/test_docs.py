"""The documentation stays true to the repository: every relative link of the README, the docs
pages and the results index resolves to a file, and docs/configuration.md documents every config
key the plugin's YAML files define, and no key that does not exist.

A *key table* is a markdown table in docs/configuration.md whose header row's first cell is
``key``; each of its body rows names one or more config keys, in backticks, in its first cell
(``| `lookahead_steps` | ...`` or ``| `epochs`, `stopping_step` | ...``). A key is *defined* by the
plugin when it is a top-level key of one of its YAML files (properties/overall.yaml, llm.yaml,
model/*.yaml, dataset/*.yaml), and *known* when it is defined by the plugin, is a top-level key
of RecBole's own overall.yaml, model/*.yaml or dataset/sample.yaml (read from the installed
package), or is in OTHER_KNOWN_KEYS. No network, no import of torch or RecBole."""
import glob
import importlib.util
import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGURATION_PAGE = os.path.join(ROOT, "docs", "configuration.md")

# Keys read from the config that no YAML file of the plugin or of RecBole sets a default for.
OTHER_KNOWN_KEYS = {
    "item_group",  # the plugin's item-group block; defaults in recbole_bifair/evaluator/groups.py
    "encoding",    # RecBole's dataset loader reads it (default utf-8); in none of its YAML files
}

README_LIMIT = 250
DOCS_PAGE_LIMIT = 300


def documentation_files():
    """The pages whose links are checked: the README, every docs page, the results index and
    the study READMEs under results/."""
    files = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "results", "README.md")]
    files += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    files += sorted(glob.glob(os.path.join(ROOT, "results", "*", "README.md")))
    return [path for path in files if os.path.isfile(path)]


# ---------------------------------------------------------------- links

FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INDENTED_BLOCK = re.compile(r"(?:^(?: {4}|\t).*\n?)+", re.M)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def without_code(text):
    """``text`` with fenced and indented code blocks and inline code removed, so that code such
    as ``a[i](x)`` is never read as a link."""
    text = FENCED_BLOCK.sub("", text)
    text = INDENTED_BLOCK.sub("", text)
    return INLINE_CODE.sub("", text)


def relative_links(text):
    """The targets of the markdown links and images in ``text`` that point into the repository:
    not http(s), mailto or a bare #anchor; the #anchor of the others is stripped."""
    targets = []
    for target in LINK.findall(without_code(text)):
        if re.match(r"(?i)^(https?:|mailto:)", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path:
            targets.append(path)
    return targets


def broken_links(text, base_dir):
    """The relative link targets of ``text`` (a page in ``base_dir``) that name no existing file
    or folder."""
    return [target for target in relative_links(text)
            if not os.path.exists(os.path.normpath(os.path.join(base_dir, target)))]


@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(path):
    with open(path, encoding="utf-8") as f:
        broken = broken_links(f.read(), os.path.dirname(path))
    assert not broken, f"{os.path.relpath(path, ROOT)} links to missing files: {broken}"


def test_the_pages_named_by_the_readme_exist():
    assert os.path.isfile(CONFIGURATION_PAGE)
    assert len(glob.glob(os.path.join(ROOT, "docs", "*.md"))) >= 10


def test_a_broken_link_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("x")
    text = ("[ok](docs/there.md#a-section) [gone](docs/missing.md) ![plot](img/none.png)\n"
            "[web](https://example.org/x.md) [mail](mailto:a@b.c) [anchor](#here)\n"
            "`[not a link](nowhere.md)`\n\n```\n[also not](nowhere.md)\n```\n")
    assert relative_links(text) == ["docs/there.md", "docs/missing.md", "img/none.png"]
    assert broken_links(text, str(tmp_path)) == ["docs/missing.md", "img/none.png"]


# ---------------------------------------------------------------- config keys

def yaml_top_level_keys(paths):
    keys = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if isinstance(data, dict):
            keys.update(str(key) for key in data)
    return keys


def plugin_yaml_files():
    properties = os.path.join(ROOT, "properties")
    return ([os.path.join(properties, "overall.yaml"), os.path.join(properties, "llm.yaml")]
            + sorted(glob.glob(os.path.join(properties, "model", "*.yaml")))
            + sorted(glob.glob(os.path.join(properties, "dataset", "*.yaml"))))


def plugin_keys():
    """The top-level keys of the plugin's YAML files."""
    return yaml_top_level_keys(plugin_yaml_files())


def recbole_keys():
    """The top-level keys of RecBole's own overall.yaml, model/*.yaml and dataset/sample.yaml,
    read from the installed package without importing it."""
    spec = importlib.util.find_spec("recbole")
    properties = os.path.join(list(spec.submodule_search_locations)[0], "properties")
    paths = ([os.path.join(properties, "overall.yaml"), os.path.join(properties, "dataset", "sample.yaml")]
             + sorted(glob.glob(os.path.join(properties, "model", "*.yaml"))))
    return yaml_top_level_keys(path for path in paths if os.path.isfile(path))


def table_cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def key_table_rows(text):
    """The first cells of the body rows of every key table in ``text``."""
    rows, in_key_table, lines = [], False, text.splitlines()
    for number, line in enumerate(lines):
        if not line.lstrip().startswith("|"):
            in_key_table = False
            continue
        previous = lines[number - 1].lstrip() if number else ""
        following = lines[number + 1] if number + 1 < len(lines) else ""
        if not previous.startswith("|"):  # a header row, when a separator row follows
            in_key_table = (table_cells(line)[0].lower() == "key"
                            and re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", following) is not None)
            continue
        if in_key_table and not re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", line):
            rows.append(table_cells(line)[0])
    return rows


def documented_keys(text):
    """``(keys, bad_rows)``: the backticked keys of the key tables' first cells, and the first
    cells that name no key."""
    keys, bad = set(), []
    for cell in key_table_rows(text):
        found = re.findall(r"`([^`]+)`", cell)
        if not found or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) for key in found):
            bad.append(cell)
        keys.update(found)
    return keys, bad


def missing_keys(documented, defined):
    """Keys the plugin defines that no key table documents."""
    return sorted(set(defined) - set(documented))


def unknown_keys(documented, known):
    """Documented keys that are neither the plugin's nor RecBole's."""
    return sorted(set(documented) - set(known))


@pytest.fixture(scope="module")
def configuration_keys():
    with open(CONFIGURATION_PAGE, encoding="utf-8") as f:
        return documented_keys(f.read())


def test_key_tables_name_keys(configuration_keys):
    keys, bad = configuration_keys
    assert keys, "docs/configuration.md has no key table"
    assert not bad, f"key-table rows whose first cell names no key in backticks: {bad}"


def test_every_plugin_key_is_documented(configuration_keys):
    missing = missing_keys(configuration_keys[0], plugin_keys())
    assert not missing, f"keys of the plugin's YAML files missing from docs/configuration.md: {missing}"


def test_no_documented_key_is_unknown(configuration_keys):
    unknown = unknown_keys(configuration_keys[0], plugin_keys() | recbole_keys() | OTHER_KNOWN_KEYS)
    assert not unknown, f"docs/configuration.md documents keys no YAML file defines: {unknown}"


def test_the_new_keys_are_documented(configuration_keys):
    for key in ("logit_adjust_tau", "meta_split", "outer_llm_table", "outer_gate_learning_rate", "dual_fusion"):
        assert key in configuration_keys[0]
    with open(CONFIGURATION_PAGE, encoding="utf-8") as f:
        assert "popularity_gate" in f.read()


SAMPLE_PAGE = """# Keys

| key | default | meaning |
| --- | --- | --- |
| `alpha` | `1` | a key |
| `beta`, `gamma` | `~` | two keys in one row |
| `no_such_key` | `0` | a typo |
| plain words | `0` | a row without a key |

| change | why |
| --- | --- |
| `not_a_key_table` | ignored: the header does not start with key |

| key | default |
|---|---|
| `delta` | 2 |
"""


def test_a_missing_and_an_unknown_key_are_reported():
    keys, bad = documented_keys(SAMPLE_PAGE)
    assert keys == {"alpha", "beta", "gamma", "no_such_key", "delta"}
    assert bad == ["plain words"]
    defined = {"alpha", "beta", "gamma", "delta", "epsilon"}
    assert missing_keys(keys, defined) == ["epsilon"]
    assert unknown_keys(keys, defined | {"zeta"}) == ["no_such_key"]


def test_yaml_keys_are_the_top_level_keys(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a: 1\nblock:\n  inner: 2\n# comment: 3\nb: ~\n")
    assert yaml_top_level_keys([str(path)]) == {"a", "block", "b"}


# ---------------------------------------------------------------- length

def test_the_readme_and_the_docs_pages_stay_short():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) < README_LIMIT
    for path in glob.glob(os.path.join(ROOT, "docs", "*.md")):
        with open(path, encoding="utf-8") as f:
            assert len(f.read().splitlines()) < DOCS_PAGE_LIMIT, os.path.relpath(path, ROOT)
