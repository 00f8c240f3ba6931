"""Rewards for a math answer checked against the row's `answer` column (GSM8K, MATH and plain numbers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dlm.rewards.answers import answers_equal, completion_answer, last_boxed, normalise, reference_answer

CORRECT = 1.0
INTEGER_SCORE = 0.5  # d1's score for an integer in the answer tag


def answer_match(completion: str, row: Mapping[str, Any]) -> float:
    """1 when the completion's final answer (`\\boxed{}`, `####`, `<answer>` tag or last number) equals the row's
    `answer` as text or as a number, or when the whole completion is that answer (a list, a word: answers that are
    not numbers), else 0."""
    found = completion_answer(completion)
    expected = reference_answer(row["answer"])
    if normalise(completion) == normalise(expected):
        return CORRECT
    return CORRECT if found is not None and answers_equal(found, expected) else 0.0


def boxed_match(completion: str, row: Mapping[str, Any]) -> float:
    """1 when the completion's last `\\boxed{}` equals the row's `answer` (MATH style), else 0; an answer
    anywhere else does not count."""
    found = last_boxed(completion)
    expected = reference_answer(row["answer"])
    return CORRECT if found is not None and answers_equal(found, expected) else 0.0


def answer_tag_text(completion: str) -> str:
    """What follows the last `<answer>` up to the next `</answer>` (either may be missing), stripped: d1's
    reading of the answer tag, the whole completion when there is no tag."""
    return completion.rpartition("<answer>")[2].partition("</answer>")[0].strip()


def integer_answer(completion: str, row: Mapping[str, Any]) -> float:
    """0.5 when the answer tag holds only digits (d1's `int_reward_func`), else 0."""
    return INTEGER_SCORE if answer_tag_text(completion).isdigit() else 0.0
