"""Format rewards for d1's answer layout `<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>\\n`, with
d1's values. Unlike d1, reasoning and answer may span several lines (dllm's reading: d1's patterns match no
newline inside the tags, which the layout it asks for has); tests/fixtures/rewards holds both references' values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

FORMAT_SCORE = 0.5
# The whole completion in the layout; it may end with one more newline (as `$` allows in d1's pattern).
STRICT_LAYOUT = re.compile(r"<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n\n?", re.DOTALL)
# The tags in order at the start of the completion, anything between and after them.
SOFT_LAYOUT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
TAG_SCORE = 0.125
TRAILING_CHAR_PENALTY = 0.001


def strict_format(completion: str, row: Mapping[str, Any]) -> float:
    """0.5 when the completion is exactly the layout, newlines included, else 0."""
    return FORMAT_SCORE if STRICT_LAYOUT.fullmatch(completion) else 0.0


def soft_format(completion: str, row: Mapping[str, Any]) -> float:
    """0.5 when the completion starts with a reasoning tag followed by an answer tag, else 0."""
    return FORMAT_SCORE if SOFT_LAYOUT.match(completion) else 0.0


def tag_count(completion: str, row: Mapping[str, Any]) -> float:
    """0.125 for each of the four tags with its newlines present exactly once, less 0.001 a character of text
    after the answer (d1's `xmlcount_reward_func`, its quirks included: with no closing line the whole completion
    counts as after the answer)."""
    score = 0.0
    if completion.count("<reasoning>\n") == 1:
        score += TAG_SCORE
    if completion.count("\n</reasoning>\n") == 1:
        score += TAG_SCORE
    if completion.count("\n<answer>\n") == 1:
        score += TAG_SCORE
        score -= len(completion.rpartition("\n</answer>\n")[2]) * TRAILING_CHAR_PENALTY
    if completion.count("\n</answer>") == 1:
        score += TAG_SCORE
        score -= (len(completion.rpartition("\n</answer>")[2]) - 1) * TRAILING_CHAR_PENALTY
    return score
