"""The import rules of ARCHITECTURE.md, read from the source (function-local imports included, `if TYPE_CHECKING:`
blocks excluded): plugin_sdk knows nothing of dlm or the demo, dlm nothing of plugin_sdk or the demo, and no two
dlm modules import each other, directly or round a longer loop."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def modules(package: str) -> dict[str, Path]:
    root = REPO / package
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node outside `if TYPE_CHECKING:` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def imported(path: Path, module: str, known: set[str]) -> set[str]:
    """The modules `path` imports, `from a import b` counted as `a.b` when that is a module."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return names


def import_graph(package: str) -> dict[str, set[str]]:
    found = modules(package)
    known = set(found)
    return {module: imported(path, module, known) for module, path in found.items()}


def top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_plugin_sdk_imports_nothing_of_dlm_or_the_demo():
    offenders = {m: sorted(top_level(i) & {"dlm", "demo"}) for m, i in import_graph("plugin_sdk").items()}
    assert {m: o for m, o in offenders.items() if o} == {}


def test_dlm_imports_nothing_of_the_hosts_or_the_demo():
    offenders = {m: sorted(top_level(i) & {"plugin_sdk", "demo"}) for m, i in import_graph("dlm").items()}
    assert {m: o for m, o in offenders.items() if o} == {}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_loop_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_function_local_import_counts(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from dlm.presets import x\n\nif TYPE_CHECKING:\n    import dlm.loading\n")
    assert imported(source, "dlm.m", {"dlm.presets"}) == {"dlm.presets"}


def test_dlm_has_no_import_cycle():
    graph = import_graph("dlm")
    # a package's __init__ importing its own submodules is how packages are built, not a cycle
    for module, targets in graph.items():
        targets.discard(module.rpartition(".")[0])
    assert cycles(graph) == []
