"""Training data for diffusion LMs: chat conversations and raw text into token ids, labels and padded batches.

SFT: `ids = template(messages)`, `prompt = template(messages[:-1], generation prompt)`; labels are the ids with the
prompt part set to -100 (when the prompt loss is masked), so only the final assistant turn is trained.
Pre-training: texts joined with EOS and cut into `max_length` chunks; every token is trainable.
Padding follows the family: LLaDA / converted models pad with EOS and train on those pads, Dream does too but
keeps an attention mask, BERT pads with [PAD] (its end token); the causal baseline ignores its pads.
How far a batch is padded (`PAD_TO`): a model that trains on its padding learns where answers end from the EOS run
after them; padded only to the batch's longest row (`batch`, the default), a model trained on short, uniform answers
never sees a canvas longer than its rows and, given a longer generation window, ends or garbles its answers (demo
task, 600 steps: 98.5% with a 6-token window, 23% with 16, 0% with 32). `random` pads a quarter of the batches to a
length between their longest row and `max_length` and `max_length` pads every batch, so longer windows are seen; but
the easy EOS pads take over the loss and slow learning several-fold (the same 600 steps: 7.5% even at 6 tokens), so
neither is the default: generation
grows its canvas instead (`grow_canvas` of the LLaDA sampler, on in the evaluator), which the same model answers
at 100% with a 128-token window.
Each batch carries `padding_mask` (True at the pads the collator added), so end-of-text padding is reported apart
from the answer tokens.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dlm.errors import ModelError
from dlm.families.base import Family
from dlm.families.special_ids import SpecialIds

IGNORE = -100
DROP_PROMPT_TOO_LONG = "prompt alone longer than max_length"
DROP_TOO_LONG = "longer than max_length (truncation=filter)"
DROP_NO_RESPONSE = "no assistant turn to train on"
PAD_TO = ("random", "batch", "max_length")
# With `random`, the share of batches padded past their longest row: every batch would dilute the answer tokens'
# share of the loss with easy EOS pads and slow learning several-fold (measured on the demo task).
LONGER_SHARE = 0.25
# Characters of a message tokenized per token of max_length: far above any tokenizer's characters per token, so that
# the cut never changes the ids that are kept (a longer one doubles, see _bounded_ids).
CHARS_PER_TOKEN = 32
# Tokens a cut text must hold past max_length: the cut word and the template's end-of-turn tokens come after it.
CUT_SLACK = 16


def _ids(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    return list(ids)


def _cut_messages(messages: Sequence[Mapping[str, str]], budget: int) -> tuple[list[Mapping[str, str]], bool, bool]:
    """`messages` with every content cut to `budget` characters, and whether a prompt / the answer was cut."""
    cut = [
        {**m, "content": m["content"][:budget]}
        if isinstance(m.get("content"), str) and len(m["content"]) > budget
        else m
        for m in messages
    ]
    changed = [a is not b for a, b in zip(cut, messages, strict=True)]
    return cut, any(changed[:-1]), changed[-1]


def _bounded_ids(messages: Sequence[Mapping[str, str]], tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    """The ids of the conversation and of its prompt, tokenizing no more text than `max_length` can keep.

    A message is first cut to CHARS_PER_TOKEN characters per token of `max_length` (one 20 MB row tokenized whole
    peaked at 4.3 GB); the cut is exact as soon as the cut text still holds more than `max_length` tokens (a
    prompt that is cut must itself reach `max_length`, as it is then dropped), with CUT_SLACK tokens to spare for the
    word cut in two and the end-of-turn tokens; else the budget doubles."""
    budget = max_length * CHARS_PER_TOKEN
    while True:
        cut, prompt_cut, answer_cut = _cut_messages(messages, budget)
        ids = _ids(tokenizer, cut, generation_prompt=False)
        prompt = _ids(tokenizer, cut[:-1], generation_prompt=True)
        if prompt_cut and len(prompt) >= max_length + CUT_SLACK:
            return ids, prompt
        if not prompt_cut and (not answer_cut or len(ids) > max_length + CUT_SLACK):
            return ids, prompt
        budget *= 2


def encode_conversation(
    messages: Sequence[Mapping[str, str]],
    tokenizer: Any,
    *,
    max_length: int,
    mask_prompt_loss: bool = True,
    truncation: str = "right",
) -> dict[str, list[int]] | str:
    """Token ids and labels of one conversation whose last message is the assistant's answer, or the reason
    it is dropped (one of the DROP_* strings)."""
    if not messages or messages[-1].get("role") != "assistant":
        return DROP_NO_RESPONSE
    ids, prompt = _bounded_ids(messages, tokenizer, max_length)
    if ids[: len(prompt)] != prompt:
        raise ModelError(
            "the chat template renders the conversation without its generation prompt as a prefix, so the prompt "
            "cannot be told from the answer; use a template whose generation prompt opens the assistant turn"
        )
    if len(prompt) >= max_length:
        return DROP_PROMPT_TOO_LONG
    if len(ids) > max_length:
        if truncation == "filter":
            return DROP_TOO_LONG
        ids = ids[:max_length]
    labels = [IGNORE] * len(prompt) + ids[len(prompt) :] if mask_prompt_loss else list(ids)
    return {"input_ids": ids, "labels": labels, "prompt_length": len(prompt)}


@dataclass
class EncodedData:
    rows: list[dict[str, list[int]]]
    dropped: Counter

    def summary(self) -> str:
        kept = f"{len(self.rows)} examples"
        if not self.dropped:
            return kept
        return kept + "; dropped " + ", ".join(f"{n} ({why})" for why, n in self.dropped.items())


def map_in_processes(function: Callable[[Any], Any], items: Sequence[Any], num_proc: int = 1) -> list[Any]:
    """`[function(x) for x in items]`, spread over `num_proc` worker processes when that is worth it (tokenizing a
    large dataset); order kept. `function` must be picklable (a module-level function or a `functools.partial`)."""
    if num_proc <= 1 or len(items) < 64 * num_proc:
        return [function(item) for item in items]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked copy of a process holding torch threads or a process group can deadlock
    with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(function, items, chunksize=max(1, len(items) // (4 * num_proc))))


def encode_conversations(
    conversations: Iterable[Sequence[Mapping[str, str]]],
    tokenizer: Any,
    *,
    max_length: int,
    mask_prompt_loss: bool = True,
    truncation: str = "right",
    num_proc: int = 1,
) -> EncodedData:
    rows: list[dict[str, list[int]]] = []
    dropped: Counter = Counter()
    encode = functools.partial(
        encode_conversation,
        tokenizer=tokenizer,
        max_length=max_length,
        mask_prompt_loss=mask_prompt_loss,
        truncation=truncation,
    )
    for encoded in map_in_processes(encode, list(conversations), num_proc):
        if isinstance(encoded, str):
            dropped[encoded] += 1
        else:
            rows.append(encoded)
    return EncodedData(rows, dropped)


# A pre-training text is tokenized in pieces of about this many characters: a fast tokenizer's peak memory grows
# with the string it is handed (a 20 MB row took 4 GB at once)
TEXT_PIECE_CHARS = 1 << 16


def _text_ids(text: str, tokenizer: Any) -> list[int]:
    """The text's ids, tokenized piece by piece, each piece cut just before a space, where byte-level BPE
    pre-tokenizers split anyway (so the ids are those of the whole text); a text without spaces is cut anywhere."""
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = start + TEXT_PIECE_CHARS
        if end < len(text):
            space = text.rfind(" ", start + TEXT_PIECE_CHARS // 2, end)
            end = space if space > start else end
        ids.extend(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        start = end
    return ids


def pack_texts(
    texts: Iterable[str], tokenizer: Any, *, max_length: int, eos_id: int, num_proc: int = 1
) -> list[dict[str, list[int]]]:
    """Pre-training rows: every text tokenized, followed by EOS, all concatenated and cut into `max_length`
    chunks (the last, shorter chunk is kept); every token is trainable."""
    stream: list[int] = []
    for ids in map_in_processes(functools.partial(_text_ids, tokenizer=tokenizer), list(texts), num_proc):
        stream.extend(ids)
        stream.append(eos_id)
    return [
        {"input_ids": stream[i : i + max_length], "labels": stream[i : i + max_length], "prompt_length": 0}
        for i in range(0, len(stream), max_length)
    ]


@dataclass
class DiffusionCollator:
    """Pads a list of encoded rows into a batch the way the family was trained.

    Dream options: `perbatch_cutoff` trims every response in the batch to the response length of one randomly
    chosen example (so a batch has a common answer length); `resp_cutoff_ratio` is the probability that an
    example's response is cut to a random shorter length. Both only shorten responses, never prompts.
    `pad_to` (`PAD_TO`, for families that train on padding, with `max_length`): `batch` pads to the longest row,
    `max_length` to `max_length`, `random` a `longer_share` of the batches to a length between the two, the
    others to their longest row, drawn from the batch's own ids (so a validation batch pads alike at every
    evaluation). `pad_to_multiple_of` then rounds the length up (block diffusion: a multiple of the block size, with
    EOS pads that are trained, as dllm's `AppendEOSBlockWrapper` appends them)."""

    family: Family
    special: SpecialIds
    perbatch_cutoff: bool = False
    resp_cutoff_ratio: float = 0.0
    rng: Callable[[], float] | None = None
    pad_to: str = "batch"
    max_length: int | None = None
    longer_share: float = LONGER_SHARE
    pad_to_multiple_of: int = 1

    def __post_init__(self) -> None:
        if self.pad_to not in PAD_TO:
            raise ValueError(f"pad_to must be one of {', '.join(PAD_TO)}, got {self.pad_to!r}")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows = self._cut(rows)
        length = -(-self._padded_length(rows) // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad = self.special.pad
        label_pad = pad if self.family.train_on_padding else IGNORE
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        labels = torch.full((len(rows), length), label_pad, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            attention[i, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "padding_mask": attention == 0}
        if self.family.uses_attention_mask:
            batch["attention_mask"] = attention
        return batch

    def _padded_length(self, rows: Sequence[Mapping[str, Any]]) -> int:
        longest = max(len(r["input_ids"]) for r in rows)
        if self.pad_to == "batch" or not self.family.train_on_padding or not self.max_length:
            return longest
        if longest >= self.max_length or self.pad_to == "max_length":
            return max(longest, self.max_length)
        digest = hashlib.blake2b(repr([list(r["input_ids"]) for r in rows]).encode(), digest_size=8).digest()
        draw = random.Random(digest)
        if draw.random() >= self.longer_share:
            return longest
        return draw.randint(longest, self.max_length)

    def _cut(self, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        if not (self.perbatch_cutoff or self.resp_cutoff_ratio > 0):
            return list(rows)
        draw = self.rng or random.random
        responses = [len(r["input_ids"]) - r["prompt_length"] for r in rows]
        cut_to = responses[int(draw() * len(rows)) % len(rows)] if self.perbatch_cutoff else None
        out = []
        for row, response in zip(rows, responses, strict=True):
            keep = response if cut_to is None else min(response, cut_to)
            if self.resp_cutoff_ratio > 0 and draw() < self.resp_cutoff_ratio and keep > 1:
                keep = 1 + int(draw() * keep) % keep
            end = row["prompt_length"] + max(keep, 1)
            out.append({**row, "input_ids": row["input_ids"][:end], "labels": row["labels"][:end]})
        return out
