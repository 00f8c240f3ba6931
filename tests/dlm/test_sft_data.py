"""SFT data: conversations to ids/labels on the golden fixtures' tokenizers, the family's padding, packing, cutoffs.

The golden fixtures' `loss.input_ids` / `loss.labels` were made by the reference SFT preprocessing from four chat
examples; re-encoding the same conversations and collating them must give the same batch, token for token.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dlm.data import (
    DROP_NO_RESPONSE,
    DROP_PROMPT_TOO_LONG,
    DROP_TOO_LONG,
    IGNORE,
    DiffusionCollator,
    encode_conversation,
    encode_conversations,
    pack_texts,
)
from dlm.families import get_family
from dlm.families.special_ids import SpecialIds
from dlm.loading import LoadedModel, load_model_and_tokenizer

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
FIXTURES = {"llada": "llada-tiny", "dream": "dream-tiny", "bert": "modernbert-tiny"}

# The four conversations behind the fixtures' `loss` batch (word-level fixture tokenizers; lower case).
CONVERSATIONS = [
    [{"role": "user", "content": "what is the capital of france?"}, {"role": "assistant", "content": "paris"}],
    [
        {"role": "user", "content": "lily runs ten km in two hours. how far in four hours?"},
        {"role": "assistant", "content": "20 km. one two three four"},
    ],
    [
        {"role": "system", "content": "you are helpful"},
        {"role": "user", "content": "please write a python function"},
        {"role": "assistant", "content": "def hello ( ) : return one plus two"},
    ],
    [
        {"role": "user", "content": "one plus one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "two plus two"},
        {"role": "assistant", "content": "four. five six seven eight nine ten"},
    ],
]


@functools.cache
def loaded(family: str) -> LoadedModel:
    return load_model_and_tokenizer(GOLDEN / FIXTURES[family])


@functools.cache
def golden_batch(family: str) -> dict[str, torch.Tensor]:
    tensors = load_file(GOLDEN / FIXTURES[family] / "golden.safetensors")
    return {k.removeprefix("loss."): v for k, v in tensors.items() if k.count(".") == 1 and k.startswith("loss.")}


def collate(family: str, rows: list[dict]) -> dict[str, torch.Tensor]:
    model = loaded(family)
    return DiffusionCollator(model.family, model.special_ids)(rows)


@pytest.mark.parametrize("family", sorted(FIXTURES))
def test_collated_conversations_match_the_golden_batch(family: str) -> None:
    model = loaded(family)
    data = encode_conversations(CONVERSATIONS, model.tokenizer, max_length=512)
    assert len(data.rows) == 4 and not data.dropped
    batch = collate(family, data.rows)
    golden = golden_batch(family)
    padding = batch.pop("padding_mask")  # the pads the collator added, after each row's own tokens
    width = batch["input_ids"].shape[1]
    assert padding.tolist() == [[i >= len(row["input_ids"]) for i in range(width)] for row in data.rows]
    assert sorted(batch) == sorted(golden)
    for key, expected in golden.items():
        assert torch.equal(batch[key], expected.to(batch[key].dtype)), key


@pytest.mark.parametrize("family", sorted(FIXTURES))
def test_only_the_final_answer_is_trained(family: str) -> None:
    tokenizer = loaded(family).tokenizer
    messages = CONVERSATIONS[3]
    row = encode_conversation(messages, tokenizer, max_length=512)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=False)
    n = len(prompt)
    assert row["prompt_length"] == n and row["input_ids"][:n] == list(prompt)
    assert row["labels"][:n] == [IGNORE] * n  # the first answer ("two") is part of the prompt
    assert row["labels"][n:] == row["input_ids"][n:] and len(row["labels"]) > n
    unmasked = encode_conversation(messages, tokenizer, max_length=512, mask_prompt_loss=False)
    assert unmasked["labels"] == unmasked["input_ids"] == row["input_ids"]


def test_truncation_right_filter_and_too_long_prompts() -> None:
    tokenizer = loaded("llada").tokenizer
    messages = CONVERSATIONS[1]
    full = encode_conversation(messages, tokenizer, max_length=512)
    n, total = full["prompt_length"], len(full["input_ids"])
    cut = encode_conversation(messages, tokenizer, max_length=n + 2)
    assert cut["input_ids"] == full["input_ids"][: n + 2] and cut["labels"] == full["labels"][: n + 2]
    assert encode_conversation(messages, tokenizer, max_length=total) == full
    assert encode_conversation(messages, tokenizer, max_length=n + 2, truncation="filter") == DROP_TOO_LONG
    assert encode_conversation(messages, tokenizer, max_length=n) == DROP_PROMPT_TOO_LONG
    assert encode_conversation(messages[:-1], tokenizer, max_length=512) == DROP_NO_RESPONSE
    data = encode_conversations(CONVERSATIONS + [messages[:-1]], tokenizer, max_length=n + 2, truncation="filter")
    assert data.dropped[DROP_NO_RESPONSE] == 1 and sum(data.dropped.values()) + len(data.rows) == 5
    assert "dropped" in data.summary() and DROP_NO_RESPONSE in data.summary()


def test_padding_policy_per_family() -> None:
    rows = [
        {"input_ids": [10, 11, 12, 13], "labels": [IGNORE, IGNORE, 12, 13], "prompt_length": 2},
        {"input_ids": [10, 11, 12], "labels": [IGNORE, 11, 12], "prompt_length": 1},
    ]
    special = SpecialIds(mask=99, eos=7, eot=8, pad=5, bos=1)
    by_family = {name: DiffusionCollator(get_family(name), special)(rows) for name in ("llada", "dream", "bert", "ar")}
    for name in ("llada", "dream", "bert"):  # the pad id is the family's (EOS or [PAD], resolved in SpecialIds)
        batch = by_family[name]
        assert batch["input_ids"][1].tolist() == [10, 11, 12, 5]
        assert batch["labels"][1].tolist() == [IGNORE, 11, 12, 5], name  # pads are trained: the answer's end
    assert "attention_mask" not in by_family["llada"] and "attention_mask" not in by_family["bert"]
    assert by_family["dream"]["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    ar = by_family["ar"]
    assert ar["labels"][1].tolist() == [IGNORE, 11, 12, IGNORE] and ar["attention_mask"][1].tolist() == [1, 1, 1, 0]
    # the resolved pad ids of real checkpoints: EOS for llada/dream, [PAD] for bert
    assert loaded("llada").special_ids.pad == loaded("llada").tokenizer.eos_token_id
    assert loaded("dream").special_ids.pad == loaded("dream").tokenizer.eos_token_id
    assert loaded("bert").special_ids.pad == loaded("bert").tokenizer.convert_tokens_to_ids("[PAD]")


def test_pad_to_pads_batches_of_padding_trained_families_with_eos() -> None:
    rows = [
        {"input_ids": [10, 11, 12, 13], "labels": [IGNORE, IGNORE, 12, 13], "prompt_length": 2},
        {"input_ids": [10, 11, 12], "labels": [IGNORE, 11, 12], "prompt_length": 1},
    ]
    special = SpecialIds(mask=99, eos=7, eot=8, pad=5, bos=1)
    llada, ar = get_family("llada"), get_family("ar")

    def collate(family, pad_to, max_length=12, batch=rows):
        return DiffusionCollator(family, special, pad_to=pad_to, max_length=max_length)(batch)

    assert collate(llada, "batch")["input_ids"].shape == (2, 4)
    full = collate(llada, "max_length")
    assert full["input_ids"].shape == (2, 12) and full["labels"][1].tolist() == [IGNORE, 11, 12] + [5] * 9
    assert full["padding_mask"][1].tolist() == [False] * 3 + [True] * 9
    assert collate(ar, "max_length")["input_ids"].shape == (2, 4)  # a causal model never trains on its pads
    # random: a quarter of the batches between the longest row and max_length, the rest to the longest row, drawn
    # from the batch's own ids (the same batch pads alike)
    batches = [[{**r, "input_ids": [i, *r["input_ids"][1:]]} for r in rows] for i in range(80)]
    lengths = [collate(llada, "random", batch=b)["input_ids"].shape[1] for b in batches]
    longer = [n for n in lengths if n > 4]
    assert set(lengths) <= set(range(4, 13)) and 10 <= len(longer) <= 30 and len(set(longer)) >= 4, lengths
    assert lengths == [collate(llada, "random", batch=b)["input_ids"].shape[1] for b in batches]
    always = DiffusionCollator(llada, special, pad_to="random", max_length=12, longer_share=1.0)
    assert sum(always(b)["input_ids"].shape[1] > 4 for b in batches) >= 60
    assert collate(llada, "random", max_length=3)["input_ids"].shape == (2, 4)  # never shorter than a row
    with pytest.raises(ValueError, match="pad_to must be one of random, batch, max_length, got 'all'"):
        DiffusionCollator(llada, special, pad_to="all")


def test_pack_texts_chunks_with_eos_between_texts() -> None:
    tokenizer = loaded("llada").tokenizer
    texts = ["one two three", "four five", "six seven eight nine ten"]
    eos = 2
    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    chunks = pack_texts(texts, tokenizer, max_length=4, eos_id=eos)
    assert [c["input_ids"] for c in chunks] == [stream[i : i + 4] for i in range(0, len(stream), 4)]
    assert all(c["labels"] == c["input_ids"] and c["prompt_length"] == 0 for c in chunks)
    assert len(chunks[-1]["input_ids"]) == len(stream) % 4 or len(stream) % 4 == 0
    assert sum(len(c["input_ids"]) for c in chunks) == len(stream) == 3 + 2 + 5 + 3


def test_a_long_text_is_tokenized_in_bounded_pieces_with_the_ids_of_the_whole() -> None:
    import random

    from dlm.data import TEXT_PIECE_CHARS

    tokenizer = loaded("llada").tokenizer
    words = ["one", "two", "seventy", "+", "=", "3.14", "answer", "\n", "  ", "is"]
    picked = random.Random(0).choices(words, k=TEXT_PIECE_CHARS // 2)
    spaced = " ".join(picked)
    unspaced = "x7" * TEXT_PIECE_CHARS  # cut anywhere: the ids may differ at the cut
    for text, same_ids in ((spaced, True), (unspaced, False)):
        handed: list[int] = []

        def spy(piece: str, **kwargs):
            handed.append(len(piece))  # noqa: B023 - called within this iteration
            return tokenizer(piece, **kwargs)

        chunks = pack_texts([text], spy, max_length=64, eos_id=2)
        stream = [i for c in chunks for i in c["input_ids"]]
        assert len(handed) >= 2 and max(handed) <= TEXT_PIECE_CHARS and sum(handed) == len(text)
        assert stream[-1] == 2
        if same_ids:
            assert stream == tokenizer(text, add_special_tokens=False)["input_ids"] + [2]


def test_perbatch_cutoff_trims_responses_only() -> None:
    rows = [
        {"input_ids": list(range(10)), "labels": [IGNORE] * 6 + list(range(6, 10)), "prompt_length": 6},
        {"input_ids": list(range(5)), "labels": [IGNORE] * 3 + [3, 4], "prompt_length": 3},
        {"input_ids": list(range(12)), "labels": [IGNORE] * 2 + list(range(2, 12)), "prompt_length": 2},
    ]
    special = SpecialIds(mask=99, eos=7, eot=7, pad=7, bos=None)
    # draw 0.4 -> row 1 is chosen: every response is cut to its length (2), prompts stay whole
    collator = DiffusionCollator(get_family("dream"), special, perbatch_cutoff=True, rng=lambda: 0.4)
    batch = collator(rows)
    assert batch["attention_mask"].sum(1).tolist() == [6 + 2, 3 + 2, 2 + 2]
    assert batch["input_ids"][0, :8].tolist() == list(range(8))
    assert batch["labels"][0].tolist() == [IGNORE] * 6 + [6, 7]
    assert batch["labels"][2, :4].tolist() == [IGNORE, IGNORE, 2, 3] and batch["labels"][2, 4:].tolist() == [7] * 4
    assert rows[0]["input_ids"] == list(range(10))  # the dataset rows are not modified
    untouched = DiffusionCollator(get_family("dream"), special)(rows)
    assert untouched["attention_mask"].sum(1).tolist() == [10, 5, 12]
    # resp_cutoff_ratio: a cut response keeps at least one token, never eats into the prompt
    draws = iter([0.0, 0.0, 0.9, 0.0, 0.3])  # row 0 cut to 1, row 1 not cut, row 2 cut to 1 + int(0.3 * 10)
    cut = DiffusionCollator(get_family("dream"), special, resp_cutoff_ratio=0.5, rng=lambda: next(draws))(rows)
    assert cut["attention_mask"].sum(1).tolist() == [6 + 1, 5, 2 + 4]


@pytest.mark.slow
def test_tokenizing_in_worker_processes_gives_the_same_rows() -> None:
    tokenizer = loaded("llada").tokenizer
    conversations = CONVERSATIONS * 40  # enough rows for the work to be spread (64 per process at least)
    alone = encode_conversations(conversations, tokenizer, max_length=24, truncation="filter")
    spread = encode_conversations(conversations, tokenizer, max_length=24, truncation="filter", num_proc=2)
    assert spread.rows == alone.rows and spread.dropped == alone.dropped and alone.dropped
