"""Dataset rows -> conversations: the one place that knows the SFT row formats and the chat roles.

- `chat_message`: one message, OpenAI-style `role`/`content` or ShareGPT `from`/`value`, its role mapped to system,
  user, assistant or tool.
- `build_messages` / `row_text`: an SFT row (chat, alpaca, prompt/completion, prompt/response, or the user's
  instruction/input/output templates) as a conversation, a pre-training row as its text.

Preference rows (chosen/rejected) are read by `plugin_sdk.preferences`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from plugin_sdk.errors import DatasetError, TemplateError
from plugin_sdk.templates import listing, render_template
from plugin_sdk.text_checks import load_json, lone_surrogate

CHAT_COLUMNS = ("messages", "conversations")
# Which columns make up each format, in the order formats are tried.
FORMAT_COLUMNS = {
    "chat": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "prompt_response": ("prompt", "response"),
    "text": ("text",),
}
ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "tool": "tool",
}

Messages = list[dict[str, str]]


def chat_message(turn: Any, what: str) -> dict[str, str]:
    """`turn` as {"role", "content"}; `what` names it in errors (where it is and which message)."""
    if not isinstance(turn, Mapping):
        raise DatasetError(f"{what} must be an object with a role and content, got {turn!r:.80}")
    # Arrow merges the message objects of a column, so the keys of the other convention may be present as None.
    if turn.get("role") is not None:
        role, content = turn["role"], turn.get("content")
    elif turn.get("from") is not None:
        role, content = turn["from"], turn.get("value")
    else:
        present = [key for key, v in turn.items() if v is not None]
        raise DatasetError(
            f"{what} needs 'role' and 'content' (or ShareGPT 'from' and 'value'); it has {listing(present)}"
        )
    canonical = ROLES.get(str(role).lower())
    if canonical is None:
        raise DatasetError(f"{what} has unknown role {role!r}; expected one of {listing(ROLES)}")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise DatasetError(f"{what} content must be text, got {type(content).__name__}")
    return {"role": canonical, "content": content}


def infer_format(columns: Iterable[str], *, chat_column: str | None = None) -> str:
    """Name the dataset format given its columns: "chat", "alpaca", "prompt_completion", "prompt_response" or "text".

    Tried in that order; a `messages` or `conversations` column (or `chat_column`) means chat.
    """
    names = list(columns)
    if chat_column:
        if chat_column not in names:
            raise DatasetError(
                f"chat column {chat_column!r} is not in the dataset; available columns: {listing(names)}"
            )
        return "chat"
    if any(c in names for c in CHAT_COLUMNS):
        return "chat"
    for kind, needed in FORMAT_COLUMNS.items():
        if all(c in names for c in needed):
            return kind
    raise DatasetError(
        f"cannot tell the dataset format from its columns ({listing(names)}). Expected one of: "
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
        raise DatasetError(f"chat column {chat_column!r} is not in the dataset; available columns: {listing(columns)}")
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
        raise DatasetError(f"pre-training needs a {text_column!r} column; available columns: {listing(row)}")
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


def _normalize_chat(value: Any, column: str) -> Messages:
    if isinstance(value, str):
        # CSV files store the message list as a JSON string.
        try:
            value = load_json(value)
        except ValueError:  # invalid JSON, or a number too long to read
            raise DatasetError(f"column {column!r} holds text that is not a JSON list of messages") from None
        found = lone_surrogate(value)
        if found:
            raise DatasetError(f"column {column!r}: {found} is a lone surrogate escape, not a character")
    if not isinstance(value, list) or not value:
        raise DatasetError(f"column {column!r} must hold a non-empty list of messages, got {value!r:.80}")
    return [chat_message(turn, f"column {column!r}: message {i}") for i, turn in enumerate(value)]


def _text(row: Mapping[str, Any], column: str) -> str:
    if column not in row:
        raise DatasetError(f"the dataset has no {column!r} column; available columns: {listing(row)}")
    value = row[column]
    return "" if value is None else str(value)


def check_answers(conversations: Sequence[Messages], what: str, log: Callable[[str], None]) -> None:
    """Refuse a set whose every answer (the closing assistant message) is empty: it would train on end-of-text
    tokens alone, silently. Some empty answers are logged, as they teach the model to answer nothing."""
    empty = sum(1 for c in conversations if c and c[-1]["role"] == "assistant" and not c[-1]["content"].strip())
    if conversations and empty == len(conversations):
        raise DatasetError(
            f"every one of the {len(conversations)} {what} examples has an empty answer: check which column holds "
            "the answers (output, completion, response, chosen) or the output_template"
        )
    if empty:
        log(f"{empty} of {len(conversations)} {what} examples have an empty answer")
