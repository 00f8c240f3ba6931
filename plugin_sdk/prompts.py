"""Dataset rows -> prompts for reinforcement learning (`PromptExample`: prompt messages and the row's other columns,
which the rewards read, e.g. `answer`).

The prompt is the first of the columns `prompt`, `question` (GSM8K, MATH), `messages` or `conversations`: text, or a
message list ending with a user turn (as for DPO, `plugin_sdk.preferences`; CSV files hold message lists as JSON
text). Every other column is kept as it is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plugin_sdk.errors import DatasetError
from plugin_sdk.preferences import _columns, _field, _prompt_messages
from plugin_sdk.templates import listing

PROMPT_COLUMNS = ("prompt", "question", "messages", "conversations")
SKIP_EMPTY_PROMPT = "empty prompt"


@dataclass(frozen=True)
class PromptExample:
    id: str  # the row number in the source (1-based), stable across runs
    prompt: list[dict[str, str]]  # chat messages ending with a user turn
    columns: dict[str, Any] = field(default_factory=dict)  # the row's other columns, for the rewards


def read_prompts(
    rows: Sequence[Mapping[str, Any]], source: str = "dataset", *, row_numbers: Sequence[int] | None = None
) -> tuple[list[PromptExample], Counter]:
    """The prompts in `rows` and the count of rows skipped, by reason.

    A row without its prompt, or a prompt of the wrong kind, raises DatasetError naming the row; empty prompts are
    skipped and counted. `row_numbers` are the rows' numbers in `source` (when `rows` is a sample of it), used in
    messages and as example ids; default 1, 2, ...
    """
    columns = _columns(rows)
    prompt_column = next((c for c in PROMPT_COLUMNS if c in columns), None)
    if prompt_column is None:
        raise DatasetError(
            f"{source}: no prompt column among {listing(columns)}; name it one of {listing(PROMPT_COLUMNS)} (text, "
            "or chat messages ending with a user turn), with the rewards' columns (such as answer) beside it"
        )
    examples: list[PromptExample] = []
    skipped: Counter = Counter()
    numbers = range(1, len(rows) + 1) if row_numbers is None else row_numbers
    for number, row in zip(numbers, rows, strict=True):
        where = f"{source}, row {number}"
        prompt = _prompt_messages(_field(row, prompt_column, where), prompt_column, where)
        if not any(m["content"].strip() for m in prompt):
            skipped[SKIP_EMPTY_PROMPT] += 1
            continue
        others = {name: value for name, value in row.items() if name != prompt_column}
        examples.append(PromptExample(str(number), prompt, others))
    if len(rows) and not examples:
        raise DatasetError(f"{source}: none of its {len(rows)} rows has a prompt (all are empty)")
    return examples, skipped
