"""The code reward: the fraction of the row's unit tests that the completion's first ```python block passes,
each test run by `dlm.rewards.sandbox` (time and memory limits, a child process). The tests are the row's
`tests`, `test_list` (MBPP) or `test_cases` (DiffuCoder): a list of snippets, each a test, or one text whose
`test*()` functions, else whose top-level `assert`s, are the tests (its other statements are their setup;
`from solution import ...` is dropped, the code being run in the same namespace)."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dlm.rewards.rows import first_present
from dlm.rewards.sandbox import Limits, Program, passed_tests

TEST_COLUMNS = ("tests", "test_list", "test_cases")
CODE_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)
MAX_WORKERS = 8
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)


def completion_code(completion: str) -> str | None:
    """The first ```python block of a completion (as dllm and DiffuCoder read it)."""
    found = CODE_BLOCK.search(completion)
    return found.group(1) if found else None


def is_test_function(node: ast.stmt) -> bool:
    return isinstance(node, ast.FunctionDef) and node.name.startswith("test") and not node.args.args


def imports_solution(node: ast.stmt) -> bool:
    return isinstance(node, ast.ImportFrom) and node.module == "solution"


def split_tests(tests: Any) -> tuple[str, tuple[str, ...]]:
    """(setup, tests) of a row's tests: a list of snippets, or one text (see the module's notes)."""
    if isinstance(tests, str):
        return split_test_text(tests)
    snippets = tuple(tests)
    if not all(isinstance(snippet, str) for snippet in snippets):
        raise ValueError(f"the row's tests are not texts: {tests!r}")
    return "", snippets


def split_test_text(text: str) -> tuple[str, tuple[str, ...]]:
    try:
        statements = ast.parse(text).body
    except SyntaxError as error:
        raise ValueError(f"the row's tests are not Python: {error}") from error
    statements = [node for node in statements if not imports_solution(node)]
    functions = [node.name for node in statements if is_test_function(node)]
    if functions:
        return source_of(statements, text), tuple(f"{name}()" for name in functions)
    asserts = [node for node in statements if isinstance(node, ast.Assert)]
    if asserts:
        setup = [node for node in statements if not isinstance(node, ast.Assert)]
        return source_of(setup, text), tuple(source_of([node], text) for node in asserts)
    if all(isinstance(node, DEFINITIONS) for node in statements):
        raise ValueError("the row's tests only define things: no assert, test*() function or call runs")
    return "", (source_of(statements, text),)


def source_of(statements: list[ast.stmt], text: str) -> str:
    return "\n".join(ast.get_source_segment(text, node) or "" for node in statements)


def score_row(completion: str, tests: Any, limits: Limits) -> float:
    setup, snippets = split_tests(tests)
    if not snippets:
        raise ValueError("the row has no tests")
    code = completion_code(completion)
    if code is None:
        return 0.0
    results = passed_tests(Program(code, setup, snippets), limits)
    return sum(results) / len(results)


def code_tests(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    seconds_per_test: float = Limits.seconds,
    memory_mib: int = Limits.memory_mib,
    workers: int = 0,
    **columns: Sequence[Any],
) -> list[float]:
    """The fraction of its row's tests that each completion's code passes (0 without a ```python block); the
    completions run side by side in `workers` child processes (0: one a CPU core, at most 8)."""
    limits = Limits(seconds_per_test, memory_mib)
    tests = first_present(columns, *TEST_COLUMNS)
    workers = workers or min(MAX_WORKERS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(completions)))) as pool:
        return list(pool.map(score_row, completions, tests, [limits] * len(completions)))
