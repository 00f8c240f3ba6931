"""Evaluation rows: which columns hold the scored text, the prompt and the reference answer, and each row as
`{"text", "prompt", "reference"}` (the fields of `dlm.evaluation.settings.EvalExample`).

Columns the user names win; otherwise they are inferred:
- text (scored as a whole by likelihood metrics): a `text` column; without one, the contents of the prompt turns
  and the reference, one per line (so prompt/answer data can be scored too);
- chat data (`messages` / `conversations`) and the trainer's formats (instruction/input/output,
  prompt/completion, prompt/response): the conversation up to its final assistant turn is the prompt and that
  turn the reference, exactly as `templates.build_messages` reads them for training;
- otherwise the first prompt-like column (`prompt`, `question`, `query`, `problem`, `instruction`, `input`) becomes
  the user turn and the first answer-like column (`answer`, `reference`, `target`, `solution`, `output`,
  `completion`, `response`, `label`) the reference.
A prompt column that holds message lists (or is named like a chat column) is read as a conversation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugin_sdk.chat import CHAT_COLUMNS, build_messages, infer_format
from plugin_sdk.data import load_rows
from plugin_sdk.errors import DatasetError

TEXT_COLUMNS = ("text",)
PROMPT_COLUMNS = ("prompt", "question", "query", "problem", "instruction", "input")
REFERENCE_COLUMNS = ("answer", "reference", "target", "solution", "output", "completion", "response", "label")
# Formats whose rows `build_messages` turns into a conversation ending with the answer.
CONVERSATION_FORMATS = ("chat", "alpaca", "prompt_completion", "prompt_response")
FIELDS = ("text", "prompt", "reference")


@dataclass(frozen=True)
class EvalColumns:
    """Where each field comes from. `conversation` names the row format (chat or a trainer format) when the prompt
    (and, unless `reference` is set, the reference) come from the whole row through `build_messages`; `prompt` is
    then the chat column, if any. Otherwise `prompt` names one column."""

    text: str | None
    prompt: str | None
    reference: str | None
    conversation: str | None = None

    def describe(self) -> str:
        prompt = f"{self.conversation} conversation" if self.conversation else self.prompt
        reference = self.reference or ("final assistant turn" if self.conversation else None)
        text = self.text or ("prompt and reference" if self.provides("text") else None)
        return f"text={text or '-'}, prompt={prompt or '-'}, reference={reference or '-'}"

    def provides(self, field: str) -> bool:
        """Whether the columns give `field` (text, prompt or reference) at all."""
        if field == "reference":
            return self.reference is not None or self.conversation is not None
        if field == "prompt":
            return self.prompt is not None or self.conversation is not None
        return self.text is not None or (self.provides("prompt") and self.provides("reference"))


def infer_eval_columns(
    columns: Iterable[str],
    *,
    text_column: str = "",
    prompt_column: str = "",
    reference_column: str = "",
    first_row: Mapping[str, Any] | None = None,
) -> EvalColumns:
    """The columns of each field; named ones must exist, the others are inferred (None when nothing fits).
    `first_row` tells whether a named prompt column holds message lists (a conversation)."""
    names = list(columns)
    for field, given in (("text_column", text_column), ("prompt_column", prompt_column)):
        if given and given not in names:
            raise DatasetError(f"{field}={given!r} is not a column of the dataset; its columns are: {_list(names)}")
    if reference_column and reference_column not in names:
        raise DatasetError(
            f"reference_column={reference_column!r} is not a column of the dataset; its columns are: {_list(names)}"
        )
    text = text_column or next((c for c in TEXT_COLUMNS if c in names), None)
    conversation = None
    if prompt_column:
        prompt = prompt_column
        if prompt_column in CHAT_COLUMNS or isinstance((first_row or {}).get(prompt_column), list):
            conversation = "chat"
    else:
        try:
            kind = infer_format(names)
        except DatasetError:
            kind = None
        if kind in CONVERSATION_FORMATS:
            conversation = kind
            prompt = next((c for c in CHAT_COLUMNS if c in names), None)
        else:
            prompt = next((c for c in PROMPT_COLUMNS if c in names and c != text), None)
    reference = reference_column or None
    if reference is None and not conversation:
        reference = next((c for c in REFERENCE_COLUMNS if c in names and c not in (prompt, text)), None)
    return EvalColumns(text=text, prompt=prompt, reference=reference, conversation=conversation)


def check_columns(columns: EvalColumns, available: Sequence[str], needs: Mapping[str, Iterable[str]]) -> None:
    """Raise a DatasetError naming the first metric whose fields (`text`, `prompt`, `reference`) no column gives."""
    hints = {
        "text": "a 'text' column or text_column",
        "prompt": "a prompt-like column (" + ", ".join(PROMPT_COLUMNS) + "), chat messages, or prompt_column",
        "reference": "an answer-like column (" + ", ".join(REFERENCE_COLUMNS) + "), chat messages, or reference_column",
    }
    for metric, fields in needs.items():
        missing = [f for f in fields if not columns.provides(f)]
        if missing:
            what = " and ".join(hints[f] for f in missing)
            raise DatasetError(
                f"metric {metric!r} needs {' and '.join(missing)} for every example, but the dataset has none: "
                f"add {what}. The dataset's columns are: {_list(available)}"
            )


def eval_example(row: Mapping[str, Any], columns: EvalColumns, index: int) -> dict[str, Any]:
    """One row as `{"text", "prompt", "reference"}` (None where the row has no such field)."""
    text = _text(row, columns.text, index) if columns.text else None
    prompt = reference = None
    if columns.conversation:
        try:
            messages = build_messages(row, chat_column=columns.prompt)
        except DatasetError as err:
            raise DatasetError(f"row {index}: {err}") from None
        if messages[-1]["role"] == "assistant":
            reference = messages[-1]["content"]
            messages = messages[:-1]
        if not messages:
            raise DatasetError(f"row {index}: the conversation has only an assistant turn, so there is no prompt")
        prompt = messages
    elif columns.prompt:
        content = _text(row, columns.prompt, index)
        prompt = [{"role": "user", "content": content}] if content else None
    if columns.reference:
        reference = _text(row, columns.reference, index)
    if columns.text is None and prompt and reference:
        text = "\n".join([*(m["content"] for m in prompt), reference])
    return {"text": text or None, "prompt": prompt, "reference": reference or None}


def eval_examples(
    rows: Iterable[Mapping[str, Any]], columns: EvalColumns, needs: Mapping[str, Iterable[str]]
) -> list[dict[str, Any]]:
    """Every row as an example; a row that lacks a field some metric needs is an error naming row and metric."""
    examples = []
    for index, row in enumerate(rows):
        example = eval_example(row, columns, index)
        for metric, fields in needs.items():
            empty = [f for f in fields if example[f] is None]
            if empty:
                raise DatasetError(
                    f"row {index}: its {' and '.join(empty)} ({columns.describe()}) is empty, but metric {metric!r} "
                    "needs it for every example"
                )
        examples.append(example)
    return examples


def load_eval_examples(
    source: str,
    needs: Mapping[str, Iterable[str]],
    *,
    workspace: str | Path | None,
    split: str = "test",
    num_samples: int = 0,
    text_column: str = "",
    prompt_column: str = "",
    reference_column: str = "",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The first `num_samples` rows (0: all) of `split` of `source` as examples (`eval_examples`), checked against
    `needs` (`{metric: fields}`), and where they came from: `{source, split, num_examples, columns}`."""
    rows = load_rows(source, workspace=workspace, split=split)
    if len(rows) == 0:  # files are checked when read; a saved or hub dataset can still hold an empty split
        raise DatasetError(f"the {split!r} split of {source} is empty: there is nothing to evaluate")
    if num_samples:
        rows = rows.select(range(min(num_samples, len(rows))))
    columns = infer_eval_columns(
        rows.column_names,
        text_column=text_column,
        prompt_column=prompt_column,
        reference_column=reference_column,
        first_row=rows[0],
    )
    check_columns(columns, rows.column_names, needs)
    examples = eval_examples(rows, columns, needs)
    return examples, {"source": source, "split": split, "num_examples": len(examples), "columns": columns.describe()}


def _text(row: Mapping[str, Any], column: str, index: int) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, list) and value and all(isinstance(m, Mapping) and "content" in m for m in value):
        return str(value[-1]["content"] or "")  # a reference stored as a one-turn message list
    if not isinstance(value, str):
        raise DatasetError(f"row {index}: column {column!r} must hold text, got {type(value).__name__}")
    return value


def _list(names: Iterable[Any]) -> str:
    names = [str(n) for n in names]
    return ", ".join(names) if names else "(none)"
