"""User templates (Jinja, sandboxed), rendered against a dataset row's columns (`plugin_sdk.chat` turns rows into
messages with them)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from plugin_sdk.errors import TemplateError


def template_environment() -> ImmutableSandboxedEnvironment:
    """A sandboxed Jinja environment: undefined variables are errors, nothing is escaped, trailing newlines kept."""
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@lru_cache(maxsize=64)
def _compile(source: str, name: str) -> Template:
    try:
        return _ENVIRONMENT.from_string(source)
    except TemplateSyntaxError as err:
        raise TemplateError(f"template {name!r} has a syntax error at line {err.lineno}: {err.message}") from None


def render_template(source: str, variables: Mapping[str, Any], *, name: str) -> str:
    """Render `source` with `variables` (a dataset row's columns) in the sandbox; TemplateError on any failure."""
    template = _compile(source, name)
    try:
        return template.render(dict(variables))
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
