"""The direction of imports the README's Layout section states: each module imports, at its top,
only modules of its own layer or the layers before it."""
import ast
import os

import pytest

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recbole_bifair")

# lowest first; a module may import its own layer's modules and those of earlier layers
LAYERS = [
    ["errors"],
    ["config_values", "files", "distributed"],
    ["compat"],
    ["llm"],
    ["evaluator"],
    ["data"],
    ["trainer.losses", "trainer.balancer", "trainer.valid_score", "trainer.resume", "trainer.meta_split"],
    ["trainer.bilevel"],
    ["trainer.settings"],
    ["trainer.group_fair_trainer"],
    ["trainer.bifair_trainer", "trainer"],
    ["model"],
    ["utils"],
    ["config"],
    ["quick_start"],
    ["hyper", "benchmark"],
]


def layer_of(module):
    """The layer of ``module`` (dotted, relative to the package): its most specific entry."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        for rank, layer in enumerate(LAYERS):
            if name in layer:
                return rank
    raise AssertionError(f"recbole_bifair.{module} is in no layer of the README's Layout")


def modules():
    for folder, _, files in os.walk(PACKAGE_DIR):
        for file_name in files:
            if file_name.endswith(".py"):
                path = os.path.join(folder, file_name)
                module = os.path.relpath(path, PACKAGE_DIR)[:-3].replace(os.sep, ".")
                module = module.removesuffix(".__init__")
                if module != "__init__":
                    yield module, path


def top_level_imports(path):
    """The plugin modules ``path`` imports in its module body (not inside functions)."""
    imported = []
    for node in ast.parse(open(path, encoding="utf-8").read()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recbole_bifair"):
            relative = node.module[len("recbole_bifair"):].lstrip(".")
            imported += [relative] if relative else [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            imported += [a.name[len("recbole_bifair."):] for a in node.names if a.name.startswith("recbole_bifair.")]
    return imported


@pytest.mark.parametrize("module, path", sorted(modules()))
def test_imports_go_down_the_layers(module, path):
    upward = [name for name in top_level_imports(path) if layer_of(name) > layer_of(module)]
    assert not upward, f"recbole_bifair.{module} imports {upward} from a later layer"


def test_an_upward_import_is_caught(tmp_path):
    """What the old cycle was: the model module importing utils at its top."""
    source = tmp_path / "llm_enhanced.py"
    source.write_text("import torch\nfrom recbole_bifair.utils import get_model\n"
                      "from recbole_bifair import errors\n\ndef f():\n    from recbole_bifair import config\n")
    assert top_level_imports(source) == ["utils", "errors"]
    assert [n for n in top_level_imports(source) if layer_of(n) > layer_of("model.llm_enhanced")] == ["utils"]
