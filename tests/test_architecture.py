"""The rules of ARCHITECTURE.md, read from the document and checked against the source: every row of its table
"Packages and what each may import", the leaves inside dlm, and no import cycle where the table says so; and the
rules of issue 18: no module of dlm/ or plugin_sdk/ over 500 lines, no family's name compared outside the family
modules. Imports are read with ast (function-local imports included, `if TYPE_CHECKING:` blocks excluded)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENT = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
TABLE_TITLE = "## Packages and what each may import"
MAX_LINES = 500
FAMILY_NAMES = frozenset({"llada", "dream", "bert", "a2d", "ar"})
FAMILY_SCANNED = ("dlm", "plugin_sdk", "plugins", "demo", "bench")


@dataclass(frozen=True)
class Rule:
    """One row of the table: the folders it covers, and what their modules may import."""

    package: str  # the row's first cell, as written
    folders: tuple[Path, ...]
    forbidden: frozenset[str] = frozenset()
    allowed: frozenset[str] | None = None  # None: anything not forbidden
    acyclic: bool = False


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def folders_of(package: str, repo: Path) -> tuple[Path, ...]:
    """The folders a table cell such as "`bench/`, `tests/`" or "`plugins/<id>/`" names (`<id>`: every plugin)."""
    found: list[Path] = []
    for name in backticked(package):
        assert name.endswith("/"), f"the table's package {name!r} is not a folder (ends with /)"
        if "<id>" in name:
            found += sorted(p.parent for p in repo.glob(name.replace("<id>", "*") + "index.json"))
        else:
            found.append(repo / name)
    assert found and all(folder.is_dir() for folder in found), f"the table names missing folders: {package}"
    return tuple(found)


def rule_of(package: str, text: str, repo: Path) -> Rule:
    """Read a "may import" cell: "nothing of `a`, `b`", "`a`, `b`" (all it may import of this project and the
    hosts), or "anything"; "; no import cycles" may follow."""
    imports, _, rest = text.partition(";")
    extra = rest.strip()
    if extra not in ("", "no import cycles"):
        raise ValueError(f"unreadable rule for {package}: {text!r}")
    names = frozenset(backticked(imports))
    folders = folders_of(package, repo)
    if imports.strip() == "anything":
        return Rule(package, folders, acyclic=bool(extra))
    if imports.strip().startswith("nothing of") and names:
        return Rule(package, folders, forbidden=names, acyclic=bool(extra))
    if names and not re.sub(r"`[^`]+`|,|\s", "", imports):
        return Rule(package, folders, allowed=names, acyclic=bool(extra))
    raise ValueError(f"unreadable rule for {package}: {text!r}")


def import_rules(document: str, repo: Path) -> list[Rule]:
    """The table under TABLE_TITLE, one Rule per row."""
    section = document.split(TABLE_TITLE, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert cells(lines[0]) == ["package", "job", "may import"], lines[0]
    rules = []
    for line in lines[2:]:
        package, _job, text = cells(line)
        rules.append(rule_of(package, text, repo))
    return rules


def listed_line(document: str, start: str) -> tuple[str, list[str]]:
    """ "<start> `dlm`: `a`, `b` (what it is), ..." as ("dlm", ["a", "b", ...])."""
    line = next(line for line in document.splitlines() if line.startswith(start))
    # a listing may run over several lines: up to the blank line that ends its paragraph
    paragraph = document[document.index(line) :].split("\n\n", 1)[0].replace("\n", " ")
    head, _, listed = re.sub(r"\([^)]*\)", "", paragraph).partition(":")
    (package,) = backticked(head)
    return package, backticked(listed)


def imported_only_by(document: str) -> dict[str, list[str]]:
    """The lines "- `a.b` is imported only by `c`, `d`." as {"a.b": ["c", "d"]}."""
    found = {}
    for line in document.splitlines():
        if line.startswith("- `") and " is imported only by " in line:
            module, _, users = line.partition(" is imported only by ")
            found[backticked(module)[0]] = backticked(users)
    return found


def plugin_files(document: str) -> list[str]:
    line = next(line for line in document.splitlines() if line.startswith("Each plugin folder holds:"))
    return backticked(line)


def leaves(document: str) -> tuple[str, list[str]]:
    """ "Leaves inside `dlm`: `errors`, `checkpoints` (what it is), ..." as ("dlm", ["errors", "checkpoints", ...])."""
    return listed_line(document, "Leaves inside ")


RULES = import_rules(DOCUMENT, REPO)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((REPO / package).rglob("*.py"))}


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


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


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


def test_the_table_covers_every_folder_of_python():
    covered = {folder.relative_to(REPO).parts[0] for rule in RULES for folder in rule.folders}
    holding_python = {
        folder.name
        for folder in REPO.iterdir()
        if folder.is_dir()
        and not folder.name.startswith(".")
        and folder.name not in ("workspace", "mutants")  # the user's data; mutmut's copy of the repository
        and any(folder.rglob("*.py"))
    }
    assert holding_python - covered == set()


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.package.replace("`", ""))
def test_every_package_imports_only_what_the_table_allows(rule):
    # What the rules speak of: this project's top-level folders and the hosts the table names.
    spoken_of = {r.folders[0].relative_to(REPO).parts[0] for r in RULES} | {n for r in RULES for n in r.forbidden}
    spoken_of |= {name for r in RULES for name in r.allowed or ()}
    offenders = {}
    for folder in rule.folders:
        own = module_name(folder / "__init__.py")
        for module, targets in import_graph(str(folder.relative_to(REPO))).items():
            if rule.allowed is None:
                bad = {t for t in targets if any(inside(t, name) for name in rule.forbidden)}
            else:
                permitted = {*rule.allowed, own}
                bad = {
                    t
                    for t in targets
                    if any(inside(t, name) for name in spoken_of) and not any(inside(t, p) for p in permitted)
                }
            if bad:
                offenders[module] = sorted(bad)
    assert offenders == {}


@pytest.mark.parametrize("rule", [r for r in RULES if r.acyclic], ids=lambda rule: rule.package.replace("`", ""))
def test_no_import_cycle_where_the_table_says_so(rule):
    for folder in rule.folders:
        graph = import_graph(str(folder.relative_to(REPO)))
        # a package's __init__ importing its own submodules is how packages are built, not a cycle
        for module, targets in graph.items():
            targets.discard(module.rpartition(".")[0])
        assert cycles(graph) == []


def test_the_leaves_import_nothing_else_of_their_package():
    package, names = leaves(DOCUMENT)
    assert names, "no leaves read from ARCHITECTURE.md"
    graph = import_graph(package)
    leaf_packages = [f"{package}.{name}" for name in names]
    for leaf in leaf_packages:
        assert any(inside(module, leaf) for module in graph), f"the leaf {leaf} is not a module of {package}"
    offenders = {
        module: sorted(t for t in targets if inside(t, package) and not any(inside(t, leaf) for leaf in leaf_packages))
        for module, targets in graph.items()
        if any(inside(module, leaf) for leaf in leaf_packages)
    }
    assert {module: targets for module, targets in offenders.items() if targets} == {}


def test_the_table_is_read_as_written(tmp_path):
    for name in ("a", "b", "plugins/one", "plugins/two"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "plugins" / "one" / "index.json").write_text("{}")
    document = f"""{TABLE_TITLE} (checked)

| package | job | may import |
|---|---|---|
| `a/` | the library | nothing of `b`, the hosts (`h`); no import cycles |
| `plugins/<id>/` | the plugins | `a`, `b` |
| `b/` | anything | anything |

Leaves inside `a`: `errors`, `checkpoints` (where a `model` is), `families`.
"""
    first, plugins, last = import_rules(document, tmp_path)
    assert (first.forbidden, first.allowed, first.acyclic) == ({"b", "h"}, None, True)
    assert (plugins.folders, plugins.allowed) == ((tmp_path / "plugins" / "one",), {"a", "b"})
    assert (last.forbidden, last.allowed, last.acyclic) == (set(), None, False)
    assert leaves(document) == ("a", ["errors", "checkpoints", "families"])
    with pytest.raises(ValueError, match="unreadable rule for `a/`"):
        rule_of("`a/`", "`b` mostly", tmp_path)


def test_the_cycle_finder_finds_a_loop_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_function_local_import_counts(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from dlm.presets import x\n\nif TYPE_CHECKING:\n    import dlm.loading\n")
    assert imported(source, "dlm.m", {"dlm.presets"}) == {"dlm.presets"}


def test_no_module_of_the_library_or_the_host_contract_is_over_500_lines():
    lengths = {
        str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
        for package in ("dlm", "plugin_sdk")
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert {path: lines for path, lines in lengths.items() if lines > MAX_LINES} == {}


def _names_a_family(node: ast.AST, collections: set[str]) -> bool:
    """A family's name as a string, a literal collection holding one, or a constant bound to such a collection."""
    if isinstance(node, ast.Constant):
        return node.value in FAMILY_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_a_family(element, collections) for element in node.elts)
    if isinstance(node, ast.Dict):
        return any(key is not None and _names_a_family(key, collections) for key in node.keys)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("set", "frozenset", "tuple"):
        return any(_names_a_family(argument, collections) for argument in node.args)
    if isinstance(node, ast.Name):
        return node.id in collections
    if isinstance(node, ast.Attribute):
        return node.attr in collections
    return False


def family_collections(trees: list[ast.AST]) -> set[str]:
    """The names (module or class constants) bound to a literal collection of family names."""
    found: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            value = getattr(node, "value", None)
            if not isinstance(node, ast.Assign | ast.AnnAssign) or value is None:
                continue
            if isinstance(value, ast.Constant) or not _names_a_family(value, set()):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.update(
                t.id if isinstance(t, ast.Name) else t.attr for t in targets if isinstance(t, ast.Name | ast.Attribute)
            )
    return found


def family_comparisons(tree: ast.AST, collections: set[str]) -> list[int]:
    """The lines comparing a value with a family's name (==, !=, in, not in, a match case)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            tested = [
                (left, right)
                for op, left, right in zip(node.ops, operands[:-1], operands[1:], strict=True)
                if isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn)
            ]
            if any(_names_a_family(a, collections) or _names_a_family(b, collections) for a, b in tested):
                lines.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and _names_a_family(node.value, collections):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_the_family_comparison_finder_finds_real_comparisons():
    source = """
CACHED = ("llada", "dream")
PLAIN = ("cosine", "linear")
if family == "llada" or "dream" != name.family: pass
if name in ("bert", "a2d"): pass
if family.name not in CACHED: pass
if family in config.CACHED: pass
match family:
    case "ar":
        pass
FAMILIES["llada"]
get_family("dream")
if schedule == "cosine" or kind in PLAIN or "ar" < x: pass
"""
    tree = ast.parse(source)
    assert family_comparisons(tree, family_collections([tree])) == [4, 5, 6, 7, 9]


def test_no_family_name_is_compared_outside_the_family_modules():
    paths = [
        path
        for package in FAMILY_SCANNED
        for path in sorted((REPO / package).rglob("*.py"))
        if not str(path.relative_to(REPO)).startswith("dlm/families")
    ]
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in paths}
    collections = family_collections(list(trees.values()))
    found = {str(path.relative_to(REPO)): family_comparisons(tree, collections) for path, tree in trees.items()}
    assert {path: lines for path, lines in found.items() if lines} == {}


def test_no_module_of_the_library_imports_an_entry_point():
    package, entry_points = listed_line(DOCUMENT, "Entry points inside ")
    graph = import_graph(package)
    points = [f"{package}.{name}" for name in entry_points]
    for point in points:
        assert any(inside(module, point) for module in graph), f"the entry point {point} is not a module of {package}"
    offenders = {
        module: sorted(t for t in targets if any(inside(t, p) and not inside(module, p) for p in points))
        for module, targets in graph.items()
    }
    assert {module: targets for module, targets in offenders.items() if targets} == {}


@pytest.mark.parametrize("module", sorted(imported_only_by(DOCUMENT)))
def test_a_module_is_imported_only_where_the_document_says(module):
    allowed = imported_only_by(DOCUMENT)[module]
    graph = import_graph(module.split(".")[0])
    assert any(inside(m, module) for m in graph), f"{module} is not a module"
    users = {m for m, targets in graph.items() if not inside(m, module) and any(inside(t, module) for t in targets)}
    assert sorted(u for u in users if not any(inside(u, a) for a in allowed)) == []


def test_every_plugin_folder_holds_the_files_the_document_names():
    files = plugin_files(DOCUMENT)
    assert "main.py" in files and "settings.py" in files
    plugins = sorted(p.parent for p in (REPO / "plugins").glob("*/index.json"))
    assert plugins, "no plugin folders"
    missing = {p.name: [f for f in files if not (p / f).is_file()] for p in plugins}
    assert {name: gone for name, gone in missing.items() if gone} == {}


def test_the_rule_lines_are_read_as_written():
    document = """Entry points inside `a`: `x` (what it is), `y`,
`z`.

- `a.p` is imported only by `a.q`, `a.r`.
Each plugin folder holds: `main.py`, `settings.py`.
"""
    assert listed_line(document, "Entry points inside ") == ("a", ["x", "y", "z"])
    assert imported_only_by(document) == {"a.p": ["a.q", "a.r"]}
    assert plugin_files(document) == ["main.py", "settings.py"]
