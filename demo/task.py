"""The demo's procedural task: sort a handful of digits.

A tiny diffusion model learns it from scratch in a few CPU minutes, an untrained one never gets it right, and the
answer is checked exactly. Everything comes from one seed, so every machine builds the same splits: problems are
drawn without replacement, so no digit sequence appears in two splits. Preference pairs put the correct answer
against a plausible wrong one: two neighbours swapped (an ordering slip) or one digit off by one (a copying slip).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dlm.errors import DlmError

INSTRUCTION = "Sort: {digits}"
MIN_DIGITS = 4
MAX_DIGITS = 5
SPLITS = ("train", "validation", "test")


class DemoTaskError(DlmError, ValueError):
    """Task sizes that cannot be built; the message names the setting."""


@dataclass(frozen=True)
class DemoTask:
    """Rows `{"instruction", "output"}` per split, and preference pairs `{"prompt", "chosen", "rejected"}` built
    from the problems of the same split."""

    rows: dict[str, list[dict[str, str]]]
    preferences: dict[str, list[dict[str, str]]]
    settings: dict[str, int] = field(default_factory=dict)


def format_digits(digits: Iterable[int]) -> str:
    return " ".join(str(d) for d in digits)


def solve(digits: Sequence[int]) -> str:
    """The correct answer: the digits in ascending order, space separated."""
    return format_digits(sorted(digits))


def wrong_answer(digits: Sequence[int], rng: random.Random) -> str:
    """A plausible wrong answer, never the correct one: sorted, but with one digit copied over a different
    neighbour (a counting slip, the commonest mistake of a half-trained model; half the time), two different
    neighbours swapped (an ordering slip) or one digit moved by one (a copying slip)."""
    answer = sorted(digits)
    pairs = [(i, j) for i in range(len(answer)) for j in (i - 1, i + 1) if 0 <= j < len(answer)]
    pairs = [(i, j) for i, j in pairs if answer[i] != answer[j]]
    slip = rng.choice(["count", "count", "order", "digit"]) if pairs else "digit"
    if slip == "count":
        i, j = rng.choice(pairs)
        answer[i] = answer[j]
    elif slip == "order":
        i, j = rng.choice(pairs)
        answer[i], answer[j] = answer[j], answer[i]
    else:
        i = rng.randrange(len(answer))
        answer[i] += 1 if answer[i] == 0 else -1 if answer[i] == 9 else rng.choice([-1, 1])
    return format_digits(answer)


def normalize(text: str) -> str:
    """Whitespace-insensitive form of an answer, for exact-match scoring."""
    return " ".join(text.split())


def is_correct(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def build_task(
    train_size: int,
    validation_size: int,
    test_size: int,
    *,
    min_digits: int = MIN_DIGITS,
    max_digits: int = MAX_DIGITS,
    seed: int = 0,
) -> DemoTask:
    """Disjoint train/validation/test splits of digit-sorting problems with `min_digits`..`max_digits` digits."""
    if not 1 <= min_digits <= max_digits:
        raise DemoTaskError(f"need 1 <= min_digits <= max_digits, got min_digits={min_digits}, max_digits={max_digits}")
    sizes = {"train": train_size, "validation": validation_size, "test": test_size}
    if any(n < 0 for n in sizes.values()):
        raise DemoTaskError(f"split sizes must be >= 0, got {sizes}")
    available = sum(10**n for n in range(min_digits, max_digits + 1))
    wanted = sum(sizes.values())
    # Rejection sampling stays fast while at most half of the problems are taken.
    if wanted > available // 2:
        raise DemoTaskError(
            f"{wanted} problems asked for, but only {available} digit sequences of {min_digits}-{max_digits} digits "
            f"exist; ask for at most {available // 2} or allow more digits"
        )
    rng = random.Random(seed)
    slips = random.Random(f"{seed}/wrong answers")  # its own stream: the problems do not depend on how slips are drawn
    seen: set[tuple[int, ...]] = set()
    rows: dict[str, list[dict[str, str]]] = {}
    preferences: dict[str, list[dict[str, str]]] = {}
    for split in SPLITS:
        rows[split], preferences[split] = [], []
        while len(rows[split]) < sizes[split]:
            digits = tuple(rng.randrange(10) for _ in range(rng.randint(min_digits, max_digits)))
            if digits in seen:
                continue
            seen.add(digits)
            prompt = INSTRUCTION.format(digits=format_digits(digits))
            rows[split].append({"instruction": prompt, "output": solve(digits)})
            preferences[split].append(
                {"prompt": prompt, "chosen": solve(digits), "rejected": wrong_answer(digits, slips)}
            )
    settings = {**sizes, "min_digits": min_digits, "max_digits": max_digits, "seed": seed}
    return DemoTask(rows=rows, preferences=preferences, settings=settings)


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, str]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes files private; datasets are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_task(task: DemoTask, sft_folder: str | Path, preference_folder: str | Path) -> None:
    """Write the task as JSONL files `train.jsonl`, `validation.jsonl` and `test.jsonl` in each folder (a folder
    that every plugin reads as one dataset with those splits): the rows in `sft_folder`, the pairs in
    `preference_folder`."""
    for folder, data in ((sft_folder, task.rows), (preference_folder, task.preferences)):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            _write_jsonl(folder / f"{split}.jsonl", data[split])
