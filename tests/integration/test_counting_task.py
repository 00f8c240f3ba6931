"""The counting task (long, exactly checkable answers) and the cached model built on it."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from demo import counting
from demo.counting import (
    MAX_COUNT,
    MAX_NUMBER,
    MIN_COUNT,
    MODEL_NAME,
    TEST_SIZE,
    CountingTaskError,
    TrainSettings,
    build_task,
    chat,
    counting_model,
    counting_tokenizer,
    encode_row,
    is_correct,
    short_problem,
)

PROBLEM = re.compile(r"Count from (\d+) to (\d+)")


def _bounds(instruction: str) -> tuple[int, int]:
    match = PROBLEM.fullmatch(instruction)
    assert match, instruction
    return int(match[1]), int(match[2])


def test_same_seed_same_splits_other_seed_other_splits():
    assert build_task(seed=3) == build_task(seed=3)
    assert build_task(seed=3).rows["test"] != build_task(seed=4).rows["test"]


def test_splits_have_their_sizes_share_no_problem_and_cover_every_count():
    rows = build_task(test_size=20, validation_size=10).rows
    problems = [{r["instruction"] for r in rows[s]} for s in ("train", "validation", "test")]
    assert list(map(len, problems)) == [MAX_COUNT - MIN_COUNT + 1 - 30, 10, 20]  # no repeat inside a split either
    assert not (problems[0] & problems[1] or problems[0] & problems[2] or problems[1] & problems[2])
    assert {_bounds(p)[0] + 1 for p in set.union(*problems)} == set(range(MIN_COUNT, MAX_COUNT + 1))


def test_the_held_out_problems_do_not_depend_on_how_many_are_asked_for():
    assert build_task(test_size=8).rows["test"] == build_task().rows["test"][:8] and TEST_SIZE == 32


def test_answers_count_down_from_the_start_to_0_within_the_sizes():
    for row in build_task(test_size=5, min_count=100, max_count=120).rows["train"]:
        start, end = _bounds(row["instruction"])
        numbers = [int(w) for w in row["output"].split(" ")]
        assert end == 0 and numbers == list(range(start, -1, -1)) and 100 <= len(numbers) <= 120


def test_lengths_vary_so_rows_of_a_batch_end_apart():
    lengths = {len(r["output"].split()) for r in build_task().rows["train"]}
    assert len(lengths) > 50 and min(lengths) < 110 and max(lengths) > 230


def test_short_problems_count_down_within_their_size_and_are_never_bench_problems():
    rng = random.Random(0)
    bench = {r["instruction"] for split in build_task().rows.values() for r in split}
    rows = [short_problem(rng, 31) for _ in range(2000)]
    counts = set()
    for row in rows:
        start, end = _bounds(row["instruction"])
        numbers = [int(w) for w in row["output"].split(" ")]
        assert numbers == list(range(start, end - 1, -1)) and start <= MAX_NUMBER and end >= 0
        counts.add(len(numbers))
    assert counts == set(range(1, 32)) and not bench & {r["instruction"] for r in rows}
    with pytest.raises(CountingTaskError, match="short_max_count"):
        short_problem(rng, MIN_COUNT)


def test_training_batches_mix_short_counts_on_their_canvas_with_long_ones():
    tokenizer = counting_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    settings = TrainSettings(batch_size=4, canvases=(256, 1024), short_share=0.5, short_canvases=(32,))
    rows = build_task().rows["train"]
    batches = counting.training_batches(tokenizer, rows, settings, eos)
    shapes = [tuple(next(batches)["input_ids"].shape) for _ in range(200)]
    prompt = 13
    short, long = shapes.count((32, prompt + 32)), shapes.count((1, prompt + 1024))
    assert shapes.count((4, prompt + 256)) + short + long == 200  # 4 x 256 answer positions per batch
    assert 70 < short < 130 and 10 < long < 40


def test_is_correct_is_exact_up_to_whitespace():
    assert is_correct(" 3 4\n5 ", "3 4 5")
    assert not is_correct("3 4 6", "3 4 5")
    assert not is_correct("3 4", "3 4 5")
    assert not is_correct("3 4 5 6", "3 4 5")


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"min_count": 0}, "min_count"),
        ({"min_count": 50, "max_count": 40}, "max_count"),
        ({"max_count": MAX_NUMBER + 2}, "max_count"),
        ({"test_size": -1}, "test_size=-1"),
        ({"validation_size": -1}, "validation_size=-1"),
        ({"test_size": 100, "validation_size": 41}, "leave problems to train on"),
    ],
)
def test_sizes_that_cannot_be_built_are_refused_by_name(kwargs, named):
    with pytest.raises(CountingTaskError, match=named):
        build_task(**kwargs)


def test_every_number_is_one_token_and_answers_decode_back():
    tokenizer = counting_tokenizer()
    answer = " ".join(str(n) for n in range(MAX_NUMBER + 1))
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert len(ids) == MAX_NUMBER + 1 and len(set(ids)) == MAX_NUMBER + 1
    assert tokenizer.decode(ids) == answer
    assert tokenizer.mask_token_id == len(tokenizer) - 1
    prompt = tokenizer.apply_chat_template(
        chat("Count from 7 to 130"), tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert tokenizer.convert_tokens_to_ids("<unk>") not in prompt
    assert tokenizer.convert_ids_to_tokens(prompt)[4:9] == ["Count", "from", "7", "to", "130"]


def test_rows_are_padded_with_eos_to_the_canvas_after_the_end_of_turn():
    tokenizer = counting_tokenizer()
    eos, eot = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|eot_id|>"])
    row = {"instruction": "Count from 5 to 104", "output": counting.solve(5, 104)}
    ids, prompt_length = encode_row(tokenizer, row, 256, eos)
    assert len(ids) == prompt_length + 256
    answer = ids[prompt_length:]
    assert tokenizer.decode(answer[:100]) == row["output"]
    assert answer[100] == eot and set(answer[101:]) == {eos}
    with pytest.raises(CountingTaskError, match="canvas of 64"):
        encode_row(tokenizer, row, 64, eos)


TINY = TrainSettings(hidden=16, heads=2, layers=1, intermediate=32, steps=2, batch_size=2, canvases=(256,))


def test_the_model_is_built_once_and_rebuilt_for_other_settings(tmp_path, monkeypatch):
    built = []
    original = counting.build_counting_model
    monkeypatch.setattr(
        counting, "build_counting_model", lambda dst, s, threads: built.append(s) or original(dst, s, threads)
    )
    folder = counting_model(tmp_path, TINY)
    assert folder == tmp_path / "models" / MODEL_NAME and built == [TINY]
    assert counting_model(tmp_path, TINY) == folder and built == [TINY]
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_theta"] == TINY.rope_theta and config["max_sequence_length"] >= 256 + 13
    record = json.loads((folder / counting.TRAIN_RECORD).read_text())
    assert record["settings"]["steps"] == 2 and record["train_seconds"] > 0
    other = TrainSettings(**{**TINY.__dict__, "steps": 3})
    assert counting_model(tmp_path, other) == folder and built == [TINY, other]


def test_the_built_model_loads_and_answers_a_chat_prompt_on_a_long_canvas(tmp_path):
    from dlm.generation import decode_answers, encode_prompts
    from dlm.loading import load_model_and_tokenizer
    from dlm.samplers.llada import generate_llada

    loaded = load_model_and_tokenizer(counting_model(tmp_path, TINY))
    special = loaded.special_ids
    assert special.mask == len(loaded.tokenizer) - 1 and special.eos == special.pad
    ids, mask = encode_prompts(loaded.tokenizer, [chat("Count from 3 to 110")], special.pad)
    out = generate_llada(
        loaded.model, ids, steps=4, gen_length=1024, block_length=256, mask_id=special.mask, attention_mask=mask
    )
    assert out.sequences.shape == (1, ids.shape[1] + 1024) and not bool((out.sequences == special.mask).any())
    assert isinstance(decode_answers(loaded.tokenizer, special, out.sequences, ids.shape[1])[0], str)
    assert torch.isfinite(loaded.model(input_ids=out.sequences).logits).all()
