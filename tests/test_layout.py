"""The direction of imports the README's Layout section states: each module imports, at its top
and inside its functions alike, only modules of its own layer or the layers before it; and the
package's import graph, lazy imports included, has no cycle.

Run as a script (``python tests/test_layout.py``) it prints the import graph, one module and
the plugin modules it imports per line, and any cycle."""
import ast
import os
import sys

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
    ["trainer.hooks", "trainer.losses", "trainer.balancer", "trainer.valid_score", "trainer.meta_split"],
    ["trainer.resume", "trainer.settings"],
    ["trainer.bilevel"],
    ["trainer.step", "trainer.recbole_changes"],
    ["trainer.group_fair_trainer"],
    ["trainer.bifair_trainer", "trainer"],
    ["model"],
    ["utils"],
    ["config"],
    ["quick_start"],
    ["hyper", "benchmark", "diagnostics"],
]

# Imports a layer's rule lets through, each with its reason. Keep this list short: an entry is
# a known exception, never a way around the rule. (Empty: every import goes down the layers.)
ALLOWED_UPWARD = {}


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


def _is_module(dotted):
    base = os.path.join(PACKAGE_DIR, *dotted.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def plugin_imports(path, lazy=True):
    """The plugin modules ``path`` imports (dotted, relative to the package), in its module body
    and, with ``lazy``, inside its functions and classes too. ``from recbole_bifair.x import y``
    names ``x.y`` where ``y`` is a module, else ``x``."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    nodes = ast.walk(tree) if lazy else tree.body
    imported = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "recbole_bifair":
            relative = node.module[len("recbole_bifair"):].lstrip(".")
            for alias in node.names:
                name = f"{relative}.{alias.name}" if relative else alias.name
                imported.append(name if _is_module(name) else relative)
        elif isinstance(node, ast.Import):
            imported += [a.name[len("recbole_bifair."):] for a in node.names if a.name.startswith("recbole_bifair.")]
    return list(dict.fromkeys(name for name in imported if name))


def top_level_imports(path):
    """The plugin modules ``path`` imports in its module body (not inside functions)."""
    return plugin_imports(path, lazy=False)


def import_graph():
    """``{module: [plugin modules it imports]}`` over the package, lazy imports included."""
    return {module: [name for name in plugin_imports(path) if name != module] for module, path in sorted(modules())}


def find_cycle(graph):
    """One import cycle of ``graph`` as a list of modules (first = last), or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for name in graph.get(module, ()):
            if state.get(name) == "open":
                return stack[stack.index(name):] + [name]
            if name not in state:
                cycle = visit(name)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in graph:
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


@pytest.mark.parametrize("module, path", sorted(modules()))
def test_imports_go_down_the_layers(module, path):
    upward = [name for name in plugin_imports(path) if layer_of(name) > layer_of(module)
              and (module, name) not in ALLOWED_UPWARD]
    assert not upward, f"recbole_bifair.{module} imports {upward} from a later layer"


def test_the_import_graph_with_lazy_imports_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["quick_start"], "the graph covers the package"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_an_upward_import_is_caught(tmp_path):
    """What the old cycles were: the model module importing utils at its top, and
    ``config_values`` importing ``config`` inside a function."""
    source = tmp_path / "llm_enhanced.py"
    source.write_text("import torch\nfrom recbole_bifair.utils import get_model\n"
                      "from recbole_bifair import errors\n\ndef f():\n    from recbole_bifair import config\n")
    assert top_level_imports(source) == ["utils", "errors"]
    assert plugin_imports(source) == ["utils", "errors", "config"]
    assert [n for n in plugin_imports(source) if layer_of(n) > layer_of("model.llm_enhanced")] == ["utils", "config"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


if __name__ == "__main__":
    graph = import_graph()
    for module, imported in graph.items():
        print(f"{module}: {', '.join(imported) or '-'}")
    cycle = find_cycle(graph)
    print("no import cycle" if cycle is None else f"import cycle: {' -> '.join(cycle)}")
    sys.exit(0 if cycle is None else 1)
