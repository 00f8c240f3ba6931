"""What Python's JSON and YAML parsers let through but fails later, far from the file: numbers too long to read
and lone surrogates. Each check names where the value is, so that the error can name the file and line."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from typing import Any

# CPython refuses to convert longer digit strings to int (sys.set_int_max_str_digits); 0 means no limit
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300
# a JSON or YAML escape of a UTF-16 surrogate: the only way a lone one gets into text read as UTF-8
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class NumberTooLong(ValueError):
    """A number with more digits than Python reads."""

    def __init__(self, digits: int) -> None:
        super().__init__(f"a number of {digits} digits (at most {MAX_INT_DIGITS} can be read)")


def read_int(text: str) -> int:
    """`int(text)` for a parser's digits, with an error that says what is wrong (`NumberTooLong`)."""
    digits = len(text.lstrip("+-"))
    if digits > MAX_INT_DIGITS:
        raise NumberTooLong(digits)
    return int(text)


def load_json(text: str) -> Any:
    """`json.loads` that raises `NumberTooLong` (a ValueError, not a JSONDecodeError) for an over-long integer."""
    return json.loads(text, parse_int=read_int)


def lone_surrogate(value: Any, where: str = "") -> str | None:
    """Where `value` (a string, or strings inside lists and dicts, keys included) holds a lone surrogate: a
    `\\ud800`-style escape that decodes to no character and cannot be written as UTF-8 (tokenizers, logs and
    result files fail on it). Returns e.g. `"field 'output': \\ud800"`, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            found = f"\\u{ord(value[err.start]):04x}"
            return f"{where}: {found}" if where else found
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else f"field {key!r}"
            found = lone_surrogate(key, inner) or lone_surrogate(item, inner)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = lone_surrogate(item, f"{where}[{i}]" if where else f"item {i}")
            if found:
                return found
    return None


def may_hold_surrogates(text: str) -> bool:
    """Cheap test of the raw text before parsing: only an escape can give a lone surrogate."""
    return _SURROGATE_ESCAPE.search(text) is not None
