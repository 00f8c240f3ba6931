"""One huge row costs what max_length keeps: messages are cut before they are tokenized, with the same ids."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from dlm import data
from dlm.data import DROP_PROMPT_TOO_LONG, DROP_TOO_LONG, IGNORE, encode_conversation
from dlm.loading import load_model_and_tokenizer

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
WORDS = "the capital of france is paris and lily runs ten km in two hours ".split()


@functools.cache
def tokenizer(fixture: str = "llada-tiny"):
    return load_model_and_tokenizer(GOLDEN / fixture).tokenizer


def text(n_words: int, offset: int = 0) -> str:
    return " ".join(WORDS[(i + offset) % len(WORDS)] for i in range(n_words))


def old_path(messages, tok, max_length: int, truncation: str = "right"):
    """The encoding before the cut: whole messages tokenized, then truncated."""

    def ids(msgs, gen):
        return list(tok.apply_chat_template(list(msgs), tokenize=True, add_generation_prompt=gen, return_dict=False))

    full, prompt = ids(messages, False), ids(messages[:-1], True)
    if len(prompt) >= max_length:
        return DROP_PROMPT_TOO_LONG
    if len(full) > max_length:
        if truncation == "filter":
            return DROP_TOO_LONG
        full = full[:max_length]
    return {"input_ids": full, "labels": [IGNORE] * len(prompt) + full[len(prompt) :], "prompt_length": len(prompt)}


@pytest.mark.parametrize("fixture", ["llada-tiny", "dream-tiny", "modernbert-tiny"])
@pytest.mark.parametrize("chars_per_token", [32, 1])
@pytest.mark.parametrize("truncation", ["right", "filter"])
def test_the_cut_gives_the_ids_of_the_whole_row(monkeypatch, fixture, chars_per_token, truncation) -> None:
    # chars_per_token=1 cuts every message well below its token count, so the doubling path is exercised too
    monkeypatch.setattr(data, "CHARS_PER_TOKEN", chars_per_token)
    tok = tokenizer(fixture)
    for prompt_words, answer_words in [(3, 2), (10, 40), (40, 10), (60, 200), (5, 500)]:
        messages = [
            {"role": "system", "content": text(2)},
            {"role": "user", "content": text(prompt_words, 3)},
            {"role": "assistant", "content": text(answer_words, 5)},
        ]
        for max_length in (8, 30, 64, 1024):
            expected = old_path(messages, tok, max_length, truncation)
            got = encode_conversation(messages, tok, max_length=max_length, truncation=truncation)
            assert got == expected, (prompt_words, answer_words, max_length)


def test_a_huge_row_is_tokenized_only_as_far_as_max_length_keeps(monkeypatch) -> None:
    tok = tokenizer()
    seen: list[int] = []
    original = type(tok).apply_chat_template

    def counting(self, conversation, *args, **kwargs):
        seen.append(sum(len(m["content"]) for m in conversation))
        return original(self, conversation, *args, **kwargs)

    monkeypatch.setattr(type(tok), "apply_chat_template", counting)
    huge = text(800_000)  # ~4 MB in one answer, and one prompt
    start = time.process_time()
    row = encode_conversation(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": huge}], tok, max_length=64
    )
    assert len(row["input_ids"]) == 64
    assert (
        encode_conversation(
            [{"role": "user", "content": huge}, {"role": "assistant", "content": "x"}], tok, max_length=64
        )
        == DROP_PROMPT_TOO_LONG
    )
    assert max(seen) <= 2 * 64 * data.CHARS_PER_TOKEN + 10
    assert time.process_time() - start < 5  # CPU time: tokenizing the whole text takes far longer
