"""Dataset rows -> preference pairs (`PreferenceExample`: prompt messages, chosen, rejected) for DPO. Formats, told
apart by the columns:

- `prompt`, `chosen`, `rejected`: the prompt is text or a message list ending with a user turn; each response is
  text, one assistant message, or a conversation whose last message is the answer (TRL's formats, UltraFeedback).
- `conversations` (or `messages`), `chosen`, `rejected`: Transformer Lab's DPO format (LLaMA-Factory's ShareGPT
  ranking data): the conversation is the prompt; the responses are `{"from": "gpt", "value": ...}` or text.
- `chosen` and `rejected` only, as message lists: conversational; the messages both share are the prompt and
  their last assistant turns are the responses.
- `chosen` and `rejected` only, as text: Anthropic HH transcripts; the shared part up to the last
  "\\n\\nAssistant:" is the prompt, split into its Human and Assistant turns.

CSV files hold message lists as JSON text; those are read as lists. Single messages are read by
`plugin_sdk.chat.chat_message`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plugin_sdk.chat import Messages, chat_message
from plugin_sdk.errors import DatasetError
from plugin_sdk.templates import listing
from plugin_sdk.text_checks import load_json, lone_surrogate

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
    chosen = _json_messages(_field(row, "chosen", where), "chosen", where)
    rejected = _json_messages(_field(row, "rejected", where), "rejected", where)
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


def _json_messages(value: Any, name: str, where: str) -> Any:
    """A message or message list stored as JSON text (CSV files) as such; anything else, such as an answer that is
    itself JSON, unchanged."""
    if not (isinstance(value, str) and value.lstrip().startswith(("[", "{"))):
        return value
    try:
        parsed = load_json(value)
    except ValueError:  # not JSON (or a number too long to read): plain text
        return value
    found = lone_surrogate(parsed)
    if found:
        raise DatasetError(f"{where}: {name!r} holds {found}, a lone surrogate escape that is not a character")
    items = parsed if isinstance(parsed, list) else [parsed]
    if items and all(isinstance(item, Mapping) and ("role" in item or "from" in item) for item in items):
        return parsed
    return value


def _prompt_messages(value: Any, name: str, where: str) -> Messages:
    value = _json_messages(value, name, where)
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
    value = _json_messages(value, name, where)
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


def _messages(value: Any, name: str, where: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: {name!r} must be text or a non-empty list of messages, got {value!r:.80}")
    return [chat_message(turn, f"{where}: {name!r} message {i}") for i, turn in enumerate(value)]
