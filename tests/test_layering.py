"""The architecture holds: layers import only downwards, no cycles, torch only where declared.

Each ``search`` sub-package declares in its ``__init__`` docstring which sub-packages it may
import (a ``May import:`` sentence); this test reads those sentences, so the documentation
and the rule cannot drift apart. Imports are read from the source (every ``import``, also
inside functions; not those under ``if TYPE_CHECKING:``, which never run).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "export", "serve", "app")

# What the torch-free stages may take from search (serve runs on a device without torch).
TORCH_FREE_SEARCH = ("search.core", "search.space", "search.trials", "search.runtime", "search.data.images")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module of the four packages, by dotted name."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Dotted names this module imports: project modules resolved, others by top-level name."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            found.add(candidate if candidate in modules else base)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_search_never_imports_later_stages(graph: dict[str, set[str]]) -> None:
    bad = sorted((m, i) for m, deps in graph.items() if _within(m, "search") for i in deps
                 if any(_within(i, p) for p in ("export", "serve", "app")))
    assert not bad, f"search imports a later stage: {bad}"


def declared_layers() -> dict[str, set[str] | None]:
    """Sub-package -> the ``search.X`` packages its docstring allows (None: every other)."""
    layers: dict[str, set[str] | None] = {}
    for init in sorted((ROOT / "search").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        match = re.search(r"May import:(.*?)(?:\.\s|\.$)", doc, flags=re.S)
        assert match, f"{init.relative_to(ROOT)} has no 'May import:' sentence"
        sentence = match.group(1)
        allowed = None if "every other" in sentence else set(re.findall(r"search\.\w+", sentence))
        layers[f"search.{init.parent.name}"] = allowed
    return layers


def test_every_sub_package_declares_its_layer() -> None:
    layers = declared_layers()
    assert {"search.core", "search.space", "search.nn", "search.experiment"} <= set(layers)
    for package, allowed in layers.items():
        if allowed is not None:
            assert allowed <= set(layers), f"{package} names an unknown sub-package: {allowed - set(layers)}"


def test_sub_packages_import_only_what_they_declare(graph: dict[str, set[str]]) -> None:
    layers = declared_layers()
    bad = []
    for module, deps in graph.items():
        owner = ".".join(module.split(".")[:2])
        allowed = layers.get(owner, ...)
        if allowed is ... or allowed is None:
            continue  # a CLI module at search/ top level, or a package that may import all
        for dep in deps:
            target = ".".join(dep.split(".")[:2])
            if _within(dep, "search") and target != owner and target in layers and target not in allowed:
                bad.append(f"{module} -> {dep}")
    assert not bad, "imports against the declared layers:\n" + "\n".join(sorted(bad))


def test_core_uses_only_the_standard_library(graph: dict[str, set[str]]) -> None:
    bad = sorted((m, d) for m, deps in graph.items() if _within(m, "search.core") for d in deps
                 if not _within(d, "search.core") and d.split(".")[0] not in sys.stdlib_module_names
                 and d != "__future__")
    assert not bad, f"search.core must stay stdlib-only: {bad}"


def test_torch_free_stages_take_only_torch_free_parts_of_search(graph: dict[str, set[str]]) -> None:
    bad = sorted((m, d) for m, deps in graph.items() if m.split(".")[0] in ("serve", "app") for d in deps
                 if _within(d, "search") and d != "search"
                 and not any(_within(d, p) for p in TORCH_FREE_SEARCH))
    assert not bad, f"serve/app import a torch part of search: {bad}"


def test_export_never_imports_the_app(graph: dict[str, set[str]]) -> None:
    bad = [(m, d) for m, deps in graph.items() if _within(m, "export") for d in deps if _within(d, "app")]
    assert not bad, f"export imports the app: {bad}"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root] & graph.keys())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child] & graph.keys()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    cycles.append(sorted(component))
    return cycles


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_anywhere(graph: dict[str, set[str]]) -> None:
    # A package's __init__ is imported before its modules, so edges into __init__ modules
    # that only hold a docstring cannot form a real cycle; they carry no imports here.
    cycles = find_cycles(graph)
    assert not cycles, f"import cycles: {cycles}"


TORCH_FREE_MODULES = (
    "search.core.errors", "search.core.atomic", "search.core.units",
    "search.space.opnames", "search.space.genotype", "search.space.searchspace", "search.space.scale",
    "search.space.text", "search.space.draw", "search.trials.history", "search.trials.selection",
    "search.data.images",
)


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def _existing(names: list[str]) -> list[str]:
    modules = project_modules()
    return [n for n in names if n in modules]


def test_space_trials_and_core_load_neither_torch_nor_matplotlib() -> None:
    loaded = _loaded_after_import(_existing(list(TORCH_FREE_MODULES)) + _existing(
        [m for m in project_modules() if _within(m, "search.runtime") or _within(m, "search.core")]))
    assert "torch" not in loaded and "matplotlib" not in loaded, sorted(loaded & {"torch", "matplotlib"})


def test_serve_loads_no_torch() -> None:
    serve = [m for m in project_modules() if _within(m, "serve")]
    loaded = _loaded_after_import(serve)
    assert {"torch", "optuna", "streamlit", "matplotlib"}.isdisjoint(loaded), loaded


def test_app_non_drawing_modules_load_no_torch() -> None:
    app = [m for m in project_modules() if _within(m, "app") and m not in ("app.demo",)]
    loaded = _loaded_after_import(app)
    assert "torch" not in loaded and "optuna" not in loaded, sorted(loaded & {"torch", "optuna"})
