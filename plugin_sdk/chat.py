"""Dataset rows -> chat messages: the one place that knows the row formats and the chat roles.

- `chat_message`: one message, OpenAI-style `role`/`content` or ShareGPT `from`/`value`, its role mapped to system,
  user, assistant or tool.
- `build_messages` / `row_text`: an SFT row (chat, alpaca, prompt/completion, prompt/response, or the user's
  instruction/input/output templates) as a conversation, a pre-training row as its text.
- `read_preferences`: DPO rows as `PreferenceExample`s (prompt messages, chosen, rejected). Formats, told apart by
  the columns:
  - `prompt`, `chosen`, `rejected`: the prompt is text or a message list ending with a user turn; each response is
    text, one assistant message, or a conversation whose last message is the answer (TRL's formats, UltraFeedback).
  - `conversations` (or `messages`), `chosen`, `rejected`: Transformer Lab's DPO format (LLaMA-Factory's ShareGPT
    ranking data): the conversation is the prompt; the responses are `{"from": "gpt", "value": ...}` or text.
  - `chosen` and `rejected` only, as message lists: conversational; the messages both share are the prompt and
    their last assistant turns are the responses.
  - `chosen` and `rejected` only, as text: Anthropic HH transcripts; the shared part up to the last
    "\\n\\nAssistant:" is the prompt, split into its Human and Assistant turns.
  CSV files hold message lists as JSON text; those are read as lists.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plugin_sdk.errors import DatasetError, TemplateError
from plugin_sdk.templates import listing, render_template

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
ACCEPTED_FORMATS = (
    "prompt/chosen/rejected (text or message lists); conversations (or messages)/chosen/rejected (Transformer "
    "Lab's DPO format); or chosen/rejected alone, either as Anthropic HH transcripts (with '\\n\\nHuman:' and "
    "'\\n\\nAssistant:' turns) or as message lists whose last assistant turn differs"
)
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")

SKIP_IDENTICAL = "chosen identical to rejected"
SKIP_EMPTY_RESPONSE = "empty response"
SKIP_EMPTY_PROMPT = "empty prompt"
SKIP_NO_SHARED_PROMPT = "chosen and rejected do not share a prompt ending with a user turn"

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


def _messages(value: Any, name: str, where: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: {name!r} must be text or a non-empty list of messages, got {value!r:.80}")
    return [chat_message(turn, f"{where}: {name!r} message {i}") for i, turn in enumerate(value)]


# ---------------------------------------------------------------------------------------------------------------
# SFT and pre-training rows


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
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DatasetError(f"column {column!r} holds text that is not a JSON list of messages") from None
    if not isinstance(value, list) or not value:
        raise DatasetError(f"column {column!r} must hold a non-empty list of messages, got {value!r:.80}")
    return [chat_message(turn, f"column {column!r}: message {i}") for i, turn in enumerate(value)]


def _text(row: Mapping[str, Any], column: str) -> str:
    if column not in row:
        raise DatasetError(f"the dataset has no {column!r} column; available columns: {listing(row)}")
    value = row[column]
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------------------------------------------
# Preference pairs


@dataclass(frozen=True)
class PreferenceExample:
    id: str  # the row number in the source (1-based), stable across runs: seeds the example's ELBO masks
    prompt: list[dict[str, str]]  # chat messages ending with a user turn
    chosen: str
    rejected: str


def read_preferences(
    rows: Sequence[Mapping[str, Any]], source: str = "dataset", *, row_numbers: Sequence[int] | None = None
) -> tuple[list[PreferenceExample], Counter]:
    """The preference pairs in `rows` and the count of rows skipped, by reason.

    The format is detected from the columns. A row missing a field, a value of the wrong kind, or a row that cannot
    be split into prompt and responses raises DatasetError naming the row; pairs whose responses are empty or
    identical, and transcripts that differ before the last answer, are skipped and counted. `row_numbers` are the
    rows' numbers in `source` (when `rows` is a sample of it), used in messages and as example ids; default 1, 2, ...
    """
    reader = _reader(_columns(rows), source)
    examples: list[PreferenceExample] = []
    skipped: Counter = Counter()
    numbers = range(1, len(rows) + 1) if row_numbers is None else row_numbers
    for number, row in zip(numbers, rows, strict=True):
        parsed = reader(row, f"{source}, row {number}")
        if isinstance(parsed, str):
            skipped[parsed] += 1
            continue
        prompt, chosen, rejected = parsed
        if not any(m["content"].strip() for m in prompt):
            skipped[SKIP_EMPTY_PROMPT] += 1
        elif not chosen.strip() or not rejected.strip():
            skipped[SKIP_EMPTY_RESPONSE] += 1
        elif chosen.strip() == rejected.strip():
            skipped[SKIP_IDENTICAL] += 1
        else:
            examples.append(PreferenceExample(str(number), prompt, chosen, rejected))
    if len(rows) and not examples:
        raise DatasetError(
            f"{source}: none of its {len(rows)} rows is a usable preference pair (skipped: {_counts(skipped)})"
        )
    return examples, skipped


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names = getattr(rows, "column_names", None)  # a datasets.Dataset
    if names is not None:
        return list(names)
    return list(dict.fromkeys(key for row in rows for key in row))


def _reader(columns: list[str], source: str) -> Any:
    if not {"chosen", "rejected"} <= set(columns):
        raise DatasetError(
            f"{source}: cannot tell prompt, chosen and rejected apart from the columns {listing(columns)}. "
            f"Accepted formats: {ACCEPTED_FORMATS}"
        )
    prompt_column = next((c for c in ("prompt", "conversations", "messages") if c in columns), None)
    if prompt_column is None:
        return _implicit_prompt

    def explicit(row: Mapping[str, Any], where: str) -> tuple[Messages, str, str]:
        prompt = _prompt_messages(_field(row, prompt_column, where), prompt_column, where)
        chosen, rejected = (_answer(_field(row, name, where), name, where) for name in ("chosen", "rejected"))
        return prompt, chosen, rejected

    return explicit


def _implicit_prompt(row: Mapping[str, Any], where: str) -> tuple[Messages, str, str] | str:
    chosen, rejected = _json_messages(_field(row, "chosen", where)), _json_messages(_field(row, "rejected", where))
    if isinstance(chosen, list) and isinstance(rejected, list):
        return _conversational(chosen, rejected, where)
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _hh_transcripts(chosen, rejected, where)
    raise DatasetError(
        f"{where}: 'chosen' and 'rejected' must both be transcripts (text) or both message lists; got "
        f"{type(chosen).__name__} and {type(rejected).__name__}"
    )


def _conversational(chosen: Any, rejected: Any, where: str) -> tuple[Messages, str, str] | str:
    chosen, rejected = _messages(chosen, "chosen", where), _messages(rejected, "rejected", where)
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            raise DatasetError(
                f"{where}: the last message of {name!r} must be the assistant's answer, not a "
                f"{messages[-1]['role']} turn (expected conversational rows: {ACCEPTED_FORMATS})"
            )
    if chosen[:-1] != rejected[:-1]:
        return SKIP_NO_SHARED_PROMPT
    if not chosen[:-1] or chosen[-2]["role"] != "user":
        raise DatasetError(
            f"{where}: 'chosen' and 'rejected' have no user turn right before their answers, so there is no prompt; "
            "add a prompt column or include the user's turns in both conversations"
        )
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _hh_transcripts(chosen: str, rejected: str, where: str) -> tuple[Messages, str, str] | str:
    if ASSISTANT not in chosen or HUMAN not in "\n\n" + chosen.lstrip():
        raise DatasetError(
            f"{where}: rows with only 'chosen' and 'rejected' text are read as Anthropic HH transcripts, but this "
            f"'chosen' has no '\\n\\nHuman:' and '\\n\\nAssistant:' turns to split off the prompt. Accepted formats: "
            f"{ACCEPTED_FORMATS}"
        )
    # The last "Assistant:" turn that both transcripts reach with the same text opens the answers.
    cut = chosen.rfind(ASSISTANT)
    while cut >= 0 and not rejected.startswith(chosen[: cut + len(ASSISTANT)]):
        cut = chosen.rfind(ASSISTANT, 0, cut)
    prompt = _hh_turns(chosen[:cut]) if cut >= 0 else None
    if prompt is None:
        return SKIP_NO_SHARED_PROMPT
    answer_start = cut + len(ASSISTANT)
    return prompt, chosen[answer_start:].strip(), rejected[answer_start:].strip()


def _hh_turns(text: str) -> Messages | None:
    """The turns of a transcript's prompt part; None unless it ends with a Human turn."""
    parts = _HH_TURN.split(text)
    messages = [{"role": "system", "content": parts[0].strip()}] if parts[0].strip() else []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages if messages and messages[-1]["role"] == "user" else None


# ---------------------------------------------------------------------------------------------------------------
# Values


def _field(row: Mapping[str, Any], name: str, where: str) -> Any:
    value = row.get(name)
    if value is None:
        present = [key for key, v in row.items() if v is not None]
        raise DatasetError(f"{where}: missing {name!r}; the row has {listing(present)}")
    return value


def _json_messages(value: Any) -> Any:
    """A message or message list stored as JSON text (CSV files) as such; anything else, such as an answer that is
    itself JSON, unchanged."""
    if not (isinstance(value, str) and value.lstrip().startswith(("[", "{"))):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return value
    items = parsed if isinstance(parsed, list) else [parsed]
    if items and all(isinstance(item, Mapping) and ("role" in item or "from" in item) for item in items):
        return parsed
    return value


def _prompt_messages(value: Any, name: str, where: str) -> Messages:
    value = _json_messages(value)
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = _messages(value, name, where)
    if messages[-1]["role"] != "user":
        raise DatasetError(
            f"{where}: {name!r} must end with a user turn (the responses answer it), not a {messages[-1]['role']} turn"
        )
    return messages


def _answer(value: Any, name: str, where: str) -> str:
    """A response given as text, as one message, or as a conversation ending with the answer."""
    value = _json_messages(value)
    if isinstance(value, str):
        return value
    message = (
        chat_message(value, f"{where}: {name}") if isinstance(value, Mapping) else _messages(value, name, where)[-1]
    )
    if message["role"] != "assistant":
        raise DatasetError(f"{where}: {name!r} must be the assistant's answer, not a {message['role']} turn")
    return message["content"]


def _counts(counter: Counter) -> str:
    return ", ".join(f"{n} ({why})" for why, n in counter.items()) or "none"
