"""The package's layers: each sub-package imports only from the ones below it, and no module
imports itself back through others (no import cycle), lazy imports inside functions included.

Layers, lowest first: ``graph`` < ``kernels`` < ``pruning`` < ``storage`` < ``training`` <
``tools`` < ``integrations`` < ``cli`` < the package's own top-level modules (``__init__``,
``__main__``, ``_build_info``). Imports under ``if TYPE_CHECKING:`` are annotations only and are
not counted. The graph registry imports nothing from the package at all.
"""

from __future__ import annotations

import ast
import importlib
import multiprocessing
import pathlib
import sys

import pytest

PACKAGE = "oneprune_ext"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE
LAYERS = ("graph", "kernels", "pruning", "storage", "training", "tools", "integrations", "cli")


def _modules() -> dict[str, pathlib.Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()
EXTENSIONS = {f"{PACKAGE}._C"}  # the compiled ops: no Python imports of their own


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Import statements anywhere in the module, except inside ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))
    return node.module or ""


def _imports(module: str) -> set[str]:
    """The package modules ``module`` imports (a ``from X import name`` of a submodule counts as
    importing that submodule, else as importing ``X``)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            target = _resolve(module, path.name == "__init__.py", node)
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                     for a in node.names if f"{target}.{a.name}" not in EXTENSIONS]
        out.update(n for n in names if n == PACKAGE or n.startswith(PACKAGE + "."))
    out.discard(module)
    return {n for n in out if n in MODULES}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)  # the package's top-level modules may import anything


def test_each_layer_imports_only_layers_below_it() -> None:
    wrong = [f"{m} ({LAYERS[_layer(m)] if _layer(m) < len(LAYERS) else 'top'}) imports {t}"
             for m in MODULES for t in sorted(_imports(m)) if _layer(t) > _layer(m)]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_registry_imports_nothing_from_the_package() -> None:
    assert _imports(f"{PACKAGE}.graph.registry") == set()


def test_no_import_cycle() -> None:
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            # a package's __init__ importing its own submodules is how a package is built, and a
            # submodule importing a sibling never runs its package's __init__ again
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _import_fresh(name: str) -> str:
    for mod in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[mod]
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - reported by the test
        return f"{name}: {type(e).__name__}: {e}"
    return ""


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Each module imported on its own, before any other module of the package, in a forked child
    that has torch loaded but nothing of the package: an order-dependent import fails here."""
    names = [m for m in MODULES if not m.endswith("__main__")]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2, maxtasksperchild=1) as pool:
        errors = [e for e in pool.map(_import_fresh, names, chunksize=1) if e]
    assert not errors, "\n".join(errors)
