"""A task with long, exactly checkable answers, and a tiny LLaDA model trained on it, for measuring decoders.

"Count from 118 to 0" is answered "118 117 116 ... 0": 100 to 240 numbers, each a single token of a word-level
tokenizer, so an answer fills most of a 256-token canvas and a fifth of a 1,024-token one. The first number is read
from the prompt; every later one is one less than its left neighbour, and the answer ends after 0. (Counting up to a
number read from the prompt was tried first: a model of this size did not learn to stop at an end more than ~100
positions away.) The bench problems are split by one seed: the test problems are held out of training.

Training mixes in short counts down ("Count from 57 to 41", as many numbers as a short canvas holds, never a bench
problem): in a long answer the first number, the one position that must read the prompt, is one of ~200, too rare a
signal to learn to copy it; with short counts half the batches teach it. With the default settings (9,600 steps,
about 21 minutes on one CPU thread) the model answers the bench's 16 held-out problems right with the exact sampler
at 256 and at 1,024 new tokens (`bench/sample.py`).

`counting_model(workspace)` trains the model once and caches it in `<workspace>/models/counting-llada/` like the
tiny presets (`dlm.presets.store.build_in_place`); it loads with `dlm.loading.load_model_and_tokenizer` and answers
chat prompts with the LLaDA sampler. Training rows are padded with EOS to the canvases the bench decodes with (256
and 1,024 answer positions), as LLaDA's SFT pads them: a model that never saw a long canvas of masks answers nothing
on one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from demo.task import is_correct, normalize
from dlm.errors import DlmError
from dlm.presets.shapes import Dims
from dlm.presets.store import build_in_place, models_dir

__all__ = ["is_correct", "normalize"]
log = logging.getLogger(__name__)

INSTRUCTION = "Count from {start} to {end}"
INSTRUCTION_WORDS = ("Count", "from", "to")
MAX_NUMBER = 319  # numbers 0..MAX_NUMBER are single tokens
MIN_COUNT = 100  # numbers in a bench answer
MAX_COUNT = 240
TEST_SIZE = 32  # bench problems held out of training
SPLITS = ("train", "validation", "test")
MODEL_NAME = "counting-llada"
MODEL_VERSION = 2
LOG_EVERY = 50
TRAIN_RECORD = "counting_train.json"  # the settings and measured training time, beside the weights


class CountingTaskError(DlmError, ValueError):
    """Task sizes that cannot be built; the message names the setting."""


@dataclass(frozen=True)
class CountingTask:
    """Rows `{"instruction", "output"}` per split."""

    rows: dict[str, list[dict[str, str]]]
    settings: dict[str, int] = field(default_factory=dict)


def solve(start: int, end: int) -> str:
    """The correct answer: every number from `start` to `end` (either way), space separated."""
    step = 1 if end >= start else -1
    return " ".join(str(n) for n in range(start, end + step, step))


def problem(start: int, end: int) -> dict[str, str]:
    """The row of one counting problem."""
    return {"instruction": INSTRUCTION.format(start=start, end=end), "output": solve(start, end)}


def build_task(
    *,
    test_size: int = TEST_SIZE,
    validation_size: int = 0,
    seed: int = 0,
    min_count: int = MIN_COUNT,
    max_count: int = MAX_COUNT,
) -> CountingTask:
    """The bench problems, "Count from N to 0" with `min_count`..`max_count` numbers, shuffled by `seed` and split:
    the first `test_size` are the test split, the next `validation_size` the validation split, the rest train."""
    if not 1 <= min_count <= max_count <= MAX_NUMBER + 1:
        raise CountingTaskError(
            f"need 1 <= min_count <= max_count <= {MAX_NUMBER + 1}, got min_count={min_count}, max_count={max_count}"
        )
    starts = list(range(min_count - 1, max_count))
    if min(test_size, validation_size) < 0 or test_size + validation_size >= len(starts):
        raise CountingTaskError(
            f"test_size={test_size} and validation_size={validation_size} must be >= 0 and leave problems to train "
            f"on: there are {len(starts)} counts of {min_count}-{max_count} numbers down to 0"
        )
    random.Random(seed).shuffle(starts)
    bounds = {"test": (0, test_size), "validation": (test_size, test_size + validation_size)}
    bounds["train"] = (test_size + validation_size, len(starts))
    rows = {split: [problem(n, 0) for n in starts[slice(*bounds[split])]] for split in SPLITS}
    settings = {"test": test_size, "validation": validation_size, "min_count": min_count, "max_count": max_count}
    return CountingTask(rows=rows, settings={**settings, "seed": seed})


def short_problem(rng: random.Random, max_count: int) -> dict[str, str]:
    """A random count down of 1..`max_count` numbers within 0..MAX_NUMBER."""
    if not 1 <= max_count < MIN_COUNT:  # below MIN_COUNT no short problem is a bench problem
        raise CountingTaskError(f"short counts need 1 <= short_max_count < {MIN_COUNT}, got {max_count}")
    count = rng.randint(1, max_count)
    start = rng.randint(count - 1, MAX_NUMBER)
    return problem(start, start - count + 1)


def chat(instruction: str) -> list[dict[str, str]]:
    """The chat prompt of one problem."""
    return [{"role": "user", "content": instruction}]


def counting_tokenizer() -> Any:
    """LLaDA's special tokens and chat template over a word-level vocabulary: the chat roles, the instruction's
    words and the numbers 0..MAX_NUMBER, one token each (the mask token is the last id, as in the presets)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from dlm.presets.builders import LLADA_SPECIALS, llada_tokenizer

    words = [*LLADA_SPECIALS, "<unk>", "system", "user", "assistant", *INSTRUCTION_WORDS]
    words += [str(n) for n in range(MAX_NUMBER + 1)]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return llada_tokenizer(with_mask=True, bpe=word_level)


@dataclass(frozen=True)
class TrainSettings:
    """How the cached model is built: its shape, the training budget and the canvases it is padded to."""

    hidden: int = 128
    heads: int = 4
    layers: int = 2
    intermediate: int = 256
    rope_theta: float = 10000.0  # finer relative positions than LLaDA's 500,000: the rule is "one more than the left"
    steps: int = 9600
    batch_size: int = 8
    learning_rate: float = 3e-3
    loss_weight_type: str = "scheduler"  # dlm.losses: `scheduler` (LLaDA's 1/t) or `uniform`
    canvases: tuple[int, ...] = (256, 1024)
    long_share: float = 0.25  # share of batches padded to the longest canvas (with fewer rows: see training_batches)
    short_share: float = 0.5  # share of batches of short counts (see the module's docstring)
    short_canvases: tuple[int, ...] = (32,)  # a short count fills at most its canvas (less than MIN_COUNT numbers)
    seed: int = 0  # the task's split and the training's draws

    def dims(self) -> Dims:
        return Dims(self.hidden, self.heads, self.layers, self.intermediate)


def encode_row(tokenizer: Any, row: dict[str, str], canvas: int, eos_id: int) -> tuple[list[int], int]:
    """Ids of prompt + answer (ending with its end-of-turn token) padded with EOS to `canvas` answer positions, and
    the prompt length."""
    from dlm.data import encode_conversation

    messages = [*chat(row["instruction"]), {"role": "assistant", "content": row["output"]}]
    encoded = encode_conversation(messages, tokenizer, max_length=10**6)
    ids, prompt_length = encoded["input_ids"], encoded["prompt_length"]
    if len(ids) - prompt_length > canvas:
        raise CountingTaskError(f"an answer of {len(ids) - prompt_length} tokens does not fit a canvas of {canvas}")
    return ids + [eos_id] * (prompt_length + canvas - len(ids)), prompt_length


def training_batches(tokenizer: Any, rows: Sequence[dict[str, str]], settings: TrainSettings, eos_id: int) -> Iterator:
    """Endless batches `{"input_ids", "labels"}`, each padded to one canvas (the longest for `long_share` of them)
    and holding `batch_size` rows of the shortest canvas or as many answer positions of a longer one; the prompt is
    never masked, the answer and its EOS padding are."""
    import torch

    rng = random.Random(settings.seed)
    shortest = min(settings.canvases)
    while True:
        short = rng.random() < settings.short_share
        if short:
            canvas = rng.choice(settings.short_canvases)
        else:
            canvas = max(settings.canvases) if rng.random() < settings.long_share else shortest
        size = max(1, settings.batch_size * shortest // canvas)  # every batch holds about as many answer positions
        if short:
            batch_rows = [short_problem(rng, min(canvas, MIN_COUNT) - 1) for _ in range(size)]
        else:
            batch_rows = rng.sample(list(rows), size)
        encoded = [encode_row(tokenizer, row, canvas, eos_id) for row in batch_rows]
        ids = torch.tensor([row for row, _ in encoded])
        labels = ids.clone()
        for i, (_, prompt_length) in enumerate(encoded):
            labels[i, :prompt_length] = -100
        yield {"input_ids": ids, "labels": labels}


def train(model: Any, tokenizer: Any, mask_id: int, eos_id: int, settings: TrainSettings) -> dict[str, float]:
    """Train `model` in place with the masked-diffusion loss; returns the last loss and the seconds taken."""
    import torch

    from dlm.losses import LossConfig, diffusion_loss, draw_mask

    rows = build_task(seed=settings.seed).rows["train"]
    config = LossConfig.for_family("llada", mask_id, loss_weight_type=settings.loss_weight_type)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    warmup = max(1, settings.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
    )
    generator = torch.Generator().manual_seed(settings.seed)
    batches = training_batches(tokenizer, rows, settings, eos_id)
    model.train()
    began = time.perf_counter()
    loss = torch.tensor(0.0)
    for step in range(settings.steps):
        batch = next(batches)
        t, masked = draw_mask(batch, config, generator)
        loss = diffusion_loss(model, batch, masked=masked, t=t, config=config).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % LOG_EVERY == 0:
            log.info(
                "counting model: step %d/%d, loss %.4f, %.0f s",
                step + 1,
                settings.steps,
                loss.item(),
                time.perf_counter() - began,
            )
    model.eval()
    return {"loss": loss.item(), "train_seconds": time.perf_counter() - began}


def build_counting_model(dst: Path, settings: TrainSettings, threads: int = 2) -> dict[str, float]:
    """Build a random tiny LLaDA over the counting tokenizer in `dst`, train it there on `threads` CPU threads and
    save it."""
    import torch

    from dlm.loading import load_model_and_tokenizer
    from dlm.presets.builders import build_llada

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        build_llada(dst, settings.dims(), counting_tokenizer())
        loaded = load_model_and_tokenizer(dst, dtype="float32")
        loaded.model.config.max_sequence_length = max(settings.canvases) + 64  # prompt + the longest canvas
        loaded.model.config.rope_theta = settings.rope_theta
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            stats = train(loaded.model, loaded.tokenizer, loaded.special_ids.mask, loaded.special_ids.eos, settings)
        loaded.model.save_pretrained(dst)
        (dst / TRAIN_RECORD).write_text(json.dumps({**stats, "settings": asdict(settings)}, indent=1))
    finally:
        torch.set_num_threads(threads_before)
    return stats


def counting_model(
    workspace: str | Path | None = None, settings: TrainSettings | None = None, threads: int = 2
) -> Path:
    """The folder of the trained counting model in `workspace` (`$DLM_WORKSPACE`, else `./workspace`), trained
    first (on `threads` CPU threads) when missing or built with other settings."""
    settings = settings or TrainSettings()
    final = models_dir(workspace) / MODEL_NAME
    # as JSON reads it back (tuples become lists), so that a finished build is recognised
    marker = json.loads(json.dumps({"preset": MODEL_NAME, "version": MODEL_VERSION, "settings": asdict(settings)}))
    build_in_place(final, marker, lambda dst: build_counting_model(dst, settings, threads))
    return final
