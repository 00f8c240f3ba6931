"""The transformerlab-app's own code, loaded from a copy of its sources, for the tests of the host's import paths
and sweeps: the app is not a package we can install (its API server needs FastAPI, a database, a running workspace).

`TLAB_APP_DIR` names a transformerlab-app checkout, or a folder holding at least the `api/` files these tests read;
without it (or without the file a test needs) the test is skipped. Functions are taken from the app's modules as
they are written (their decorators, FastAPI's routing, dropped) and run with what they call either the real thing
(`lab` 0.1.46, pydantic, PyYAML, werkzeug, the app's own schemas and task service) or, where it needs the server
(its database session, cache, GitHub's API), a stand-in given by the test.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

API = Path("api") / "transformerlab"
ROUTER = API / "routers" / "experiment" / "task.py"
SCHEMA = API / "schemas" / "task.py"
TASK_SERVICE = API / "services" / "task_service.py"
GITHUB_UTILS = API / "shared" / "github_utils.py"
GALLERIES = API / "shared" / "galleries.py"
LAUNCH_SWEEP = API / "services" / "compute_provider" / "launch_sweep.py"
SWEEP_RESULTS = API / "services" / "compute_provider" / "sweep_job_service.py"
EXAMPLES = API / "galleries" / "examples"


def app_file(relative: Path) -> Path:
    """A file of the app's sources; skips the test when TLAB_APP_DIR does not hold it."""
    root = os.environ.get("TLAB_APP_DIR")
    path = Path(root or ".") / relative
    if not root or not path.is_file():
        pytest.skip(f"TLAB_APP_DIR does not name a transformerlab-app checkout with {relative}")
    return path


class HTTPException(Exception):
    """FastAPI's HTTPException, as the app raises it (status_code, detail)."""

    def __init__(self, status_code: int, detail: Any = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


def fastapi_stub() -> types.ModuleType:
    """What the app's service modules import from fastapi: only HTTPException."""
    module = types.ModuleType("fastapi")
    module.HTTPException = HTTPException
    return module


def load_module(relative: Path, name: str) -> types.ModuleType:
    """One of the app's modules, imported from its file (its `transformerlab.*` imports from the same sources)."""
    path = app_file(relative)
    api = str(path.parents[len(relative.parts) - 2])
    if api not in sys.path:
        sys.path.insert(0, api)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def functions(relative: Path, names: list[str], namespace: dict[str, Any]) -> types.SimpleNamespace:
    """The named top-level functions of one of the app's files, without their decorators, defined in `namespace`
    (the names they use from their module: the real ones or stand-ins)."""
    path = app_file(relative)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    chosen = [
        node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in names
    ]
    missing = set(names) - {node.name for node in chosen}
    assert not missing, f"{relative} no longer defines {sorted(missing)}"
    for node in chosen:
        node.decorator_list = []
    exec(compile(ast.Module(body=chosen, type_ignores=[]), str(path), "exec"), namespace)
    return types.SimpleNamespace(**{name: namespace[name] for name in names})


def constant(relative: Path, name: str) -> Any:
    """A module-level constant of one of the app's files (`NAME = <literal>`)."""
    tree = ast.parse(app_file(relative).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{relative} no longer defines {name}")


def statements_of(relative: Path, function: str, first: str, last: str) -> types.CodeType:
    """The statements of `function` in one of the app's files from the one assigning `first` through the one
    assigning `last` (searched in nested blocks too), compiled to run in a namespace of the test's choosing."""
    path = app_file(relative)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    (node,) = [
        n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef) and n.name == function
    ]

    def assigns(statement: ast.stmt, name: str) -> bool:
        return isinstance(statement, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in statement.targets
        )

    for block in (n.body for n in ast.walk(node) if isinstance(getattr(n, "body", None), list)):
        starts = [i for i, s in enumerate(block) if assigns(s, first)]
        ends = [i for i, s in enumerate(block) if assigns(s, last)]
        if starts and ends:
            module = ast.Module(body=block[starts[0] : ends[0] + 1], type_ignores=[])
            return compile(module, str(path), "exec")
    raise AssertionError(f"{relative}: {function} no longer assigns {first} ... {last} in one block")
