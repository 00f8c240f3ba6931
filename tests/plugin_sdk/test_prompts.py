"""Rows -> GRPO prompts (`plugin_sdk.prompts.read_prompts`): the prompt column and its kinds, the other columns kept for
the rewards, empty prompts skipped and counted, and rows that cannot be read named."""

from __future__ import annotations

import json

import pytest

from plugin_sdk.errors import DatasetError
from plugin_sdk.prompts import SKIP_EMPTY_PROMPT, PromptExample, read_prompts


def test_prompt_answer_rows_keep_their_other_columns():
    rows = [
        {"prompt": "What is 2 + 2?", "answer": "4", "level": 1},
        {"prompt": "And 3 + 3?", "answer": "6", "level": 2},
    ]
    examples, skipped = read_prompts(rows)
    assert examples == [
        PromptExample("1", [{"role": "user", "content": "What is 2 + 2?"}], {"answer": "4", "level": 1}),
        PromptExample("2", [{"role": "user", "content": "And 3 + 3?"}], {"answer": "6", "level": 2}),
    ]
    assert not skipped


def test_question_rows_and_message_lists_as_json_text():
    gsm8k = read_prompts([{"question": "Sum 1 and 2.", "answer": "... #### 3"}])[0][0]
    assert gsm8k.prompt == [{"role": "user", "content": "Sum 1 and 2."}] and gsm8k.columns == {"answer": "... #### 3"}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    from_csv = read_prompts([{"messages": json.dumps(messages), "target": 24}])[0][0]
    assert from_csv.prompt == messages and from_csv.columns == {"target": 24}


def test_empty_prompts_are_skipped_and_counted_with_row_numbers_kept():
    examples, skipped = read_prompts([{"prompt": " "}, {"prompt": "Go."}], row_numbers=[7, 9])
    assert [e.id for e in examples] == ["9"] and skipped == {SKIP_EMPTY_PROMPT: 1}
    with pytest.raises(DatasetError, match="none of its 1 rows has a prompt"):
        read_prompts([{"prompt": ""}])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": "hello"}], "no prompt column among text; name it one of prompt, question, messages"),
        ([{"prompt": "a"}, {"answer": "b"}], "row 2: missing 'prompt'"),
        ([{"messages": [{"role": "assistant", "content": "Hi"}]}], "row 1: 'messages' must end with a user turn"),
    ],
)
def test_rows_that_cannot_be_read_are_named(rows, message):
    with pytest.raises(DatasetError, match=message):
        read_prompts(rows, "data.jsonl")
