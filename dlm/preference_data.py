"""Preference pairs for DPO -> token ids. The pairs (prompt messages, chosen, rejected) come from dataset rows through
`plugin_sdk.preferences.read_preferences`, or from anything with the same attributes (`PreferencePair`).

Encoding: `prompt_ids` is the family's chat template of the prompt with the generation prompt; a response's ids are
the template of prompt + answer minus that prefix, so they end with the family's end-of-turn token.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dlm.data import CHARS_PER_TOKEN, CUT_SLACK, encode_conversation
from dlm.errors import DlmError

DROP_NO_ROOM = "prompt leaves no room for a response within max_length"
DROP_IDENTICAL_IDS = "chosen and rejected identical after tokenizing and clipping"
CUT_PROMPT = "prompts cut from the left to max_prompt_length"
CUT_RESPONSE = "responses clipped to fit max_length"

Messages = list[dict[str, str]]


class PreferenceDataError(DlmError):
    """Preference pairs that cannot be encoded within the length limits."""


class PreferencePair(Protocol):
    id: str  # stable across runs (the row number in the source): seeds the example's ELBO masks
    prompt: Messages  # chat messages ending with a user turn
    chosen: str
    rejected: str


@dataclass
class EncodedPreferences:
    rows: list[dict[str, Any]]  # id, prompt_ids, chosen_ids, rejected_ids
    dropped: Counter  # pairs left out, by reason
    truncated: Counter  # kept pairs with a prompt or response cut, by what was cut

    def summary(self) -> str:
        parts = [f"{len(self.rows)} pairs"]
        if self.truncated:
            parts.append(_counts(self.truncated))
        if self.dropped:
            parts.append(f"skipped {_counts(self.dropped)}")
        return "; ".join(parts)


def encode_preferences(
    examples: Sequence[PreferencePair], tokenizer: Any, *, max_length: int, max_prompt_length: int
) -> EncodedPreferences:
    """Token ids of each pair under the tokenizer's chat template.

    A prompt longer than `max_prompt_length` keeps its last tokens (cut from the left: the latest turns matter
    most); a response that does not fit after the prompt within `max_length` is clipped from the right. A pair is
    dropped when the prompt leaves no room for a response, or when clipping makes both responses the same.
    """
    if max_length < 2 or max_prompt_length < 1:
        raise PreferenceDataError(
            f"max_length must be at least 2 and max_prompt_length at least 1 (got {max_length} and {max_prompt_length})"
        )
    rows: list[dict[str, Any]] = []
    dropped: Counter = Counter()
    truncated: Counter = Counter()
    for example in examples:
        limits = (max_length, max_prompt_length)
        prompt_ids, chosen_ids = _split_ids(example.prompt, example.chosen, tokenizer, *limits)
        _, rejected_ids = _split_ids(example.prompt, example.rejected, tokenizer, *limits)
        kept_prompt = prompt_ids[-max_prompt_length:]
        room = max_length - len(kept_prompt)
        if room < 1:
            dropped[DROP_NO_ROOM] += 1
            continue
        if chosen_ids[:room] == rejected_ids[:room]:
            dropped[DROP_IDENTICAL_IDS] += 1
            continue
        truncated[CUT_PROMPT] += len(kept_prompt) < len(prompt_ids)
        truncated[CUT_RESPONSE] += (len(chosen_ids) > room) + (len(rejected_ids) > room)
        rows.append(
            {
                "id": example.id,
                "prompt_ids": kept_prompt,
                "chosen_ids": chosen_ids[:room],
                "rejected_ids": rejected_ids[:room],
            }
        )
    encoded = EncodedPreferences(rows, dropped, +truncated)  # unary + drops the zero counts
    if examples and not rows:
        raise PreferenceDataError(
            f"all {len(examples)} preference pairs were skipped ({encoded.summary()}); raise max_length "
            f"(now {max_length}) or max_prompt_length (now {max_prompt_length})"
        )
    return encoded


def _split_ids(
    prompt: Messages, response: str, tokenizer: Any, max_length: int, max_prompt_length: int
) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids), tokenizing no more text than the limits can keep (a 20 MB row costs gigabytes
    tokenized whole). A prompt message keeps its last `max_prompt_length` × CHARS_PER_TOKEN characters, the response
    its first `max_length` × CHARS_PER_TOKEN: the prompt's last `max_prompt_length` and the response's first
    `max_length` tokens are those of the whole text as soon as each cut text still holds CUT_SLACK tokens more than
    that (checked; else the budget doubles)."""
    budget = max(max_length, max_prompt_length) * CHARS_PER_TOKEN
    while True:
        cut_prompt = [_tail(m, budget) for m in prompt]
        # encode_conversation checks that the prompt's rendering is a prefix of the whole conversation's.
        encoded = encode_conversation(
            [*cut_prompt, {"role": "assistant", "content": response[:budget]}], tokenizer, max_length=sys.maxsize
        )
        assert isinstance(encoded, dict)  # the conversation ends with an assistant turn and nothing is too long
        ids, cut = encoded["input_ids"], encoded["prompt_length"]
        prompt_exact = all(
            _token_count(tokenizer, c["content"]) >= max_prompt_length + CUT_SLACK
            for c, m in zip(cut_prompt, prompt, strict=True)
            if c is not m
        )
        response_exact = len(response) <= budget or len(ids) - cut > max_length + CUT_SLACK
        if prompt_exact and response_exact:
            return ids[:cut], ids[cut:]
        budget *= 2


def _tail(message: dict[str, str], budget: int) -> dict[str, str]:
    content = message.get("content")
    return {**message, "content": content[-budget:]} if isinstance(content, str) and len(content) > budget else message


def _token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _counts(counter: Counter) -> str:
    return ", ".join(f"{n} ({why})" for why, n in counter.items()) or "none"
