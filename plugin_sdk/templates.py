"""User templates (Jinja, sandboxed), rendered against a dataset row's columns (`plugin_sdk.chat` turns rows into
messages with them).

A render has a budget: RENDER_SECONDS of time and OUTPUT_CHARS characters (plus four times the row's own text) for
its output and for any string or list it builds on the way. Nested `range` loops ran forever and
`{{ instruction * 300000000 }}` passed 8 GB in 11 s before the budget; now they fail naming the template.
Time is checked on every line the template runs and every function call it makes; size before a string is built by
`*`, `+`, `~`, `%`, `str.format`, the padding methods and the filters that can multiply their input.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from plugin_sdk.errors import TemplateError

RENDER_SECONDS = 2.0
OUTPUT_CHARS = 2**20


class _OverBudget(Exception):
    """A render went past its time or size budget (the message says which)."""


@dataclass
class _Budget:
    deadline: float
    chars: int

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"ran longer than {RENDER_SECONDS:g} s; simplify its loops")

    def size(self, n: int, what: str) -> None:
        if n > self.chars:
            raise _OverBudget(f"{what} would make {n} characters, over its budget of {self.chars}")


_current = threading.local()


def _budget() -> _Budget:
    budget = getattr(_current, "budget", None)
    # outside a render (a template compiled and called by hand) the fixed budget applies
    return budget or _Budget(time.monotonic() + RENDER_SECONDS, OUTPUT_CHARS)


# The specs of `%` formatting and of str.format fields, whose numbers (width, precision) size the result.
_FORMAT_SPECS = re.compile(r"%(?:\([^)]*\))?[-+ #0*.\d]*|\{[^{}]*?:[^{}]*\}")
_NUMBER = re.compile(r"\d+")


def _format_widths(fmt: str) -> None:
    numbers = [n for spec in _FORMAT_SPECS.findall(fmt) for n in _NUMBER.findall(spec)]
    widest = max((int(n) if len(n) < 12 else 10**12 for n in numbers), default=0)
    _budget().size(widest, "a format width")


def _length(value: Any) -> int | None:
    return len(value) if isinstance(value, str | list | tuple) else None


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with every operation that can build a large string checked against the render's budget."""

    intercepted_binops = frozenset({"*", "+", "%", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if _length(seq) is not None and isinstance(times, int):
                    budget.size(_length(seq) * times, f"repeating a value {times} times")
        elif operator == "+" and _length(left) is not None and _length(right) is not None:
            budget.size(_length(left) + _length(right), "joining two values")
        elif operator == "%" and isinstance(left, str):
            _format_widths(left)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            budget.size(right * abs(left).bit_length() // 3, f"a power with exponent {right}")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's signature)
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            name = getattr(method, "__name__", "")
            if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
                _budget().size(args[0], f"str.{name}")
            elif name == "expandtabs" and args and isinstance(args[0], int):
                _budget().size(len(owner) + owner.count("\t") * args[0], "str.expandtabs")
            elif name in ("format", "format_map"):
                _format_widths(owner)
            elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
                _replace_size(owner, str(args[0]), args[1])
            elif name == "join":
                items = [str(item) for item in (args[0] if args else ())]
                _budget().size(sum(map(len, items)) + len(owner) * len(items), "str.join")
                args = (items, *args[1:])
        return super().call(__context, __obj, *args, **kwargs)


def _replace_size(s: str, old: str, new: str) -> None:
    _budget().size(len(s) + (s.count(old) if old else len(s) + 1) * len(new), "replace")


def _bounded_str_join(seq: Iterable[Any]) -> str:
    # `~` and `{{ a }}{{ b }}` joins, which Jinja builds with str_join
    parts = [str(item) for item in seq]
    _budget().size(sum(map(len, parts)), "joining with ~")
    return "".join(parts)


def _checked_filter(check: Callable[..., None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)  # keeps Jinja's pass_eval_context marker
        def filtered(*args: Any, **kwargs: Any) -> Any:
            check(*args, **kwargs)
            return original(*args, **kwargs)

        return filtered

    return wrap


def _center(value: Any, width: int = 80) -> None:
    _budget().size(int(width), "center")


def _indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    text = str(s)
    step = len(width) if isinstance(width, str) else int(width)
    _budget().size(len(text) + step * (text.count("\n") + 1), "indent")


def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> None:
    if isinstance(value, list | tuple):
        _budget().size(sum(len(str(item)) for item in value) + len(str(d)) * len(value), "join")


def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> None:
    _replace_size(str(s), str(old), str(new))


def _format(value: Any, *args: Any, **kwargs: Any) -> None:
    _format_widths(str(value))


def _batch(value: Any, linecount: int, fill_with: Any = None) -> None:
    _budget().size(int(linecount), "batch")


def template_environment() -> ImmutableSandboxedEnvironment:
    """A sandboxed Jinja environment: undefined variables are errors, nothing is escaped, trailing newlines kept;
    what a render may build is bounded (see the module docstring)."""
    environment = _BoundedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    for name, check in [
        ("center", _center),
        ("indent", _indent),
        ("join", _join),
        ("replace", _replace),
        ("format", _format),
        ("batch", _batch),
    ]:
        environment.filters[name] = _checked_filter(check)(environment.filters[name])
    del environment.globals["lipsum"]  # lipsum(n) writes n paragraphs; no row template needs it
    return environment


@lru_cache(maxsize=64)
def _compile(source: str, name: str) -> Template:
    try:
        template = _ENVIRONMENT.from_string(source)
    except TemplateSyntaxError as err:
        raise TemplateError(f"template {name!r} has a syntax error at line {err.lineno}: {err.message}") from None
    template.root_render_func.__globals__["str_join"] = _bounded_str_join
    return template


def _text_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_text_size(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_text_size(v) for v in value)
    return 0


def _render(template: Template, variables: dict[str, Any], budget: _Budget) -> str:
    def trace_line(frame: Any, event: str, arg: Any) -> Any:
        budget.tick()
        return trace_line

    def trace_call(frame: Any, event: str, arg: Any) -> Any:
        budget.tick()
        # lines only in the template's own code; a Jinja filter's loop yields, and each resume is a call event
        return trace_line if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    _current.budget = budget
    sys.settrace(trace_call)
    try:
        parts, total = [], 0
        for part in template.generate(variables):
            total += len(part)
            budget.size(total, "the rendered text")
            parts.append(part)
        return "".join(parts)
    finally:
        sys.settrace(previous)
        _current.budget = None


def render_template(source: str, variables: Mapping[str, Any], *, name: str) -> str:
    """Render `source` with `variables` (a dataset row's columns) in the sandbox, within its budget;
    TemplateError on any failure."""
    template = _compile(source, name)
    budget = _Budget(time.monotonic() + RENDER_SECONDS, OUTPUT_CHARS + 4 * _text_size(variables))
    try:
        return _render(template, dict(variables), budget)
    except _OverBudget as err:
        raise TemplateError(
            f"template {name!r} {err}: a template may build at most {OUTPUT_CHARS} characters beyond four times its "
            f"row's text, in {RENDER_SECONDS:g} s"
        ) from None
    except SecurityError as err:
        raise TemplateError(
            f"template {name!r} was refused: {err} Templates may only read the row's columns."
        ) from None
    except UndefinedError as err:
        missing = re.match(r"'([^']+)' is undefined", err.message or "")
        what = f"the undefined variable {missing.group(1)!r}" if missing else f"an undefined value ({err.message})"
        raise TemplateError(f"template {name!r} uses {what}; available columns: {listing(variables)}") from None
    except Exception as err:  # anything a template expression can raise: TypeError, OverflowError, ...
        raise TemplateError(f"template {name!r} failed: {type(err).__name__}: {err}") from None


def listing(columns: Iterable[Any]) -> str:
    """Names for an error message: "a, b, c", or "(none)"."""
    names = [str(c) for c in columns]
    return ", ".join(names) if names else "(none)"


_ENVIRONMENT = template_environment()
