"""The top-level modules import one way: protocol -> console and desktop -> session -> program.

Read from the source with `ast`, so nothing is imported: the graph has no cycle, the viewer
session needs neither the proxy nor the console to run (both are displays it is handed), the
browser relay needs nothing of the proxy, and nothing imports the program.  The tests keep a
rule of their own: a test module imports helper modules, never another test module, so each
test file can be read, run and changed alone.
"""

import ast
import pathlib

import pytest

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
MODULES = {path.stem: path for path in ROOT.glob("*.py")}


def imports(path):
    """The top-level names of the modules that the file at `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


GRAPH = {name: imports(path) & set(MODULES) for name, path in MODULES.items()}


def test_no_module_imports_itself_through_others():
    done, path = set(), []

    def visit(name):
        assert name not in path, " -> ".join([*path, name])
        if name in done:
            return
        path.append(name)
        for imported in GRAPH[name]:
            visit(imported)
        path.pop()
        done.add(name)

    for name in GRAPH:
        visit(name)


@pytest.mark.parametrize("module,forbidden", [
    ("viewer", {"vncproxy", "console", "render", "display", "vncterm", "web", "service", "xen"}),
    ("web", {"vncproxy", "viewer", "vncterm"}),
    ("vt", set(MODULES) - {"vt", "keymap"}),
    ("display", {"vncproxy", "viewer", "vncterm", "console"}),
])
def test_a_module_needs_nothing_above_it(module, forbidden):
    assert not GRAPH[module] & forbidden


def test_nothing_imports_the_program():
    assert not [name for name, imported in GRAPH.items() if "vncterm" in imported]


def test_no_test_module_imports_another():
    test_modules = {path.stem: path for path in TESTS.glob("test_*.py")}
    found = {name: sorted(imports(path) & set(test_modules))
             for name, path in test_modules.items()}
    assert not {name: imported for name, imported in found.items() if imported}
