"""User templates (Jinja, sandboxed) and turning dataset rows into chat messages."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from plugin_sdk.errors import DatasetError, TemplateError

CHAT_COLUMNS = ("messages", "conversations")
# Which columns make up each format, in the order formats are tried.
FORMAT_COLUMNS = {
    "chat": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "prompt_response": ("prompt", "response"),
    "text": ("text",),
}
_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "tool": "tool",
}


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
        raise TemplateError(f"template {name!r} uses {what}; available columns: {_names(variables)}") from None
    except Exception as err:  # anything a template expression can raise: TypeError, OverflowError, ...
        raise TemplateError(f"template {name!r} failed: {type(err).__name__}: {err}") from None


def infer_format(columns: Iterable[str], *, chat_column: str | None = None) -> str:
    """Name the dataset format given its columns: "chat", "alpaca", "prompt_completion", "prompt_response" or "text".

    Tried in that order; a `messages` or `conversations` column (or `chat_column`) means chat.
    """
    names = list(columns)
    if chat_column:
        if chat_column not in names:
            raise DatasetError(f"chat column {chat_column!r} is not in the dataset; available columns: {_names(names)}")
        return "chat"
    if any(c in names for c in CHAT_COLUMNS):
        return "chat"
    for kind, needed in FORMAT_COLUMNS.items():
        if all(c in names for c in needed):
            return kind
    raise DatasetError(
        f"cannot tell the dataset format from its columns ({_names(names)}). Expected one of: "
        "messages (or conversations) for chat; instruction, input, output; prompt, completion; prompt, response; "
        "text for pre-training; or set the instruction/input/output templates"
    )


def build_messages(
    row: Mapping[str, Any],
    *,
    instruction_template: str | None = None,
    input_template: str | None = None,
    output_template: str | None = None,
    system_message: str | None = None,
    chat_column: str | None = None,
) -> list[dict[str, str]]:
    """Turn one dataset row into chat messages ({"role", "content"} dicts).

    A chat column (`chat_column`, else `messages` / `conversations`) is used as is, ShareGPT `from`/`value` turns
    included, and templates are ignored, as the host's own trainers did. Otherwise the alpaca templates, rendered
    against the row's columns, give [system?, user, assistant]: the rendered input is the user turn and the rendered
    output the assistant turn; the rendered instruction is the system turn, unless `system_message` is given or
    the input renders empty, in which case it opens the user turn. Without templates the format is inferred from
    the columns. `system_message` is prepended unless the messages already start with a system turn.
    """
    columns = list(row)
    chat_key = chat_column or next((c for c in CHAT_COLUMNS if c in row), None)
    if chat_column and chat_column not in row:
        raise DatasetError(f"chat column {chat_column!r} is not in the dataset; available columns: {_names(columns)}")
    if chat_key is not None:
        messages = _normalize_chat(row[chat_key], chat_key)
    elif any((instruction_template, input_template, output_template)):
        messages = _templated(row, instruction_template, input_template, output_template, system_message is not None)
    else:
        messages = _inferred(row, infer_format(columns))
    if system_message and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system_message})
    return messages


def row_text(row: Mapping[str, Any], *, text_column: str = "text") -> str:
    """The pre-training text of a row."""
    if text_column not in row:
        raise DatasetError(f"pre-training needs a {text_column!r} column; available columns: {_names(row)}")
    value = row[text_column]
    if not isinstance(value, str):
        raise DatasetError(f"column {text_column!r} must hold text, got {type(value).__name__}")
    return value


def _templated(
    row: Mapping[str, Any],
    instruction_template: str | None,
    input_template: str | None,
    output_template: str | None,
    has_system_message: bool,
) -> list[dict[str, str]]:
    def render(source: str | None, name: str) -> str:
        return render_template(source, row, name=name).strip() if source else ""

    instruction = render(instruction_template, "instruction_template")
    user = render(input_template, "input_template")
    assistant = render(output_template, "output_template")
    messages = []
    if instruction and user and not has_system_message:
        messages.append({"role": "system", "content": instruction})
    else:
        user = "\n\n".join(part for part in (instruction, user) if part)
    if not user:
        raise TemplateError("the instruction and input templates rendered empty text for a row; check the templates")
    messages.append({"role": "user", "content": user})
    if assistant:
        messages.append({"role": "assistant", "content": assistant})
    return messages


def _inferred(row: Mapping[str, Any], kind: str) -> list[dict[str, str]]:
    if kind == "text":
        raise DatasetError(
            "the dataset has only a 'text' column, which is pre-training data, not prompt/response pairs; "
            "use a pre-training mode or give instruction/input/output templates"
        )
    if kind == "alpaca":
        parts = [_text(row, "instruction"), _text(row, "input") if "input" in row else ""]
        user = "\n\n".join(part for part in parts if part)
        return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output")}]
    answer_column = "completion" if kind == "prompt_completion" else "response"

    # TRL's conversational prompt-completion data holds message lists instead of text.
    def turns(column: str, role: str) -> list[dict[str, str]]:
        value = row[column]
        return (
            _normalize_chat(value, column)
            if isinstance(value, list)
            else [{"role": role, "content": _text(row, column)}]
        )

    return turns("prompt", "user") + turns(answer_column, "assistant")


def _normalize_chat(value: Any, column: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        # CSV files store the message list as a JSON string.
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DatasetError(f"column {column!r} holds text that is not a JSON list of messages") from None
    if not isinstance(value, list) or not value:
        raise DatasetError(f"column {column!r} must hold a non-empty list of messages, got {value!r:.80}")
    messages = []
    for i, turn in enumerate(value):
        if not isinstance(turn, Mapping):
            raise DatasetError(f"column {column!r}: message {i} must be an object, got {turn!r:.80}")
        if "role" in turn:
            role, content = turn.get("role"), turn.get("content")
        elif "from" in turn:
            role, content = turn.get("from"), turn.get("value")
        else:
            raise DatasetError(
                f"column {column!r}: message {i} needs 'role' and 'content' (or ShareGPT 'from' and 'value'); "
                f"it has {_names(turn)}"
            )
        canonical = _ROLES.get(str(role).lower())
        if canonical is None:
            raise DatasetError(
                f"column {column!r}: message {i} has unknown role {role!r}; expected one of {', '.join(_ROLES)}"
            )
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise DatasetError(f"column {column!r}: message {i} content must be text, got {type(content).__name__}")
        messages.append({"role": canonical, "content": content})
    return messages


def _text(row: Mapping[str, Any], column: str) -> str:
    if column not in row:
        raise DatasetError(f"the dataset has no {column!r} column; available columns: {_names(row)}")
    value = row[column]
    return "" if value is None else str(value)


def _names(columns: Iterable[Any]) -> str:
    names = [str(c) for c in columns]
    return ", ".join(names) if names else "(none)"


_ENVIRONMENT = template_environment()
