"""The built-in rewards by name: each one's function (TRL's signature), the columns it reads and whether it
runs the model's code."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from dlm.rewards.code_tests import TEST_COLUMNS, code_tests
from dlm.rewards.countdown import countdown
from dlm.rewards.errors import RewardSettingError
from dlm.rewards.formats import soft_format, strict_format, tag_count
from dlm.rewards.math_answers import answer_match, boxed_match, integer_answer
from dlm.rewards.rows import RewardFunction, per_row
from dlm.rewards.sudoku import sudoku

DEFAULT_REWARD = "answer_match"


@dataclass(frozen=True)
class RewardSpec:
    """A reward: its name, its function `fn(prompts, completions, **columns) -> list[float]`, the columns it
    needs (each a tuple of the names it accepts, the first preferred) and whether it runs the model's code."""

    name: str
    function: RewardFunction
    columns: tuple[tuple[str, ...], ...] = ()
    runs_code: bool = False
    summary: str = ""


def builtin(name, scorer, *columns: tuple[str, ...], summary: str) -> RewardSpec:
    return RewardSpec(name, per_row(scorer), columns, summary=summary)


BUILTIN_REWARDS: dict[str, RewardSpec] = {
    spec.name: spec
    for spec in (
        builtin("answer_match", answer_match, ("answer",), summary="1 for the right final answer (text or number)"),
        builtin("boxed_match", boxed_match, ("answer",), summary="1 for the right answer in the last \\boxed{}"),
        builtin("integer_answer", integer_answer, summary="0.5 for an integer in the answer tag (d1)"),
        builtin("strict_format", strict_format, summary="0.5 for exactly d1's reasoning/answer layout"),
        builtin("soft_format", soft_format, summary="0.5 for a reasoning tag then an answer tag (d1)"),
        builtin("tag_count", tag_count, summary="0.125 a well-placed tag, less text after the answer (d1)"),
        builtin("countdown", countdown, ("target",), ("numbers", "nums"), summary="Countdown equation (d1)"),
        builtin("sudoku", sudoku, ("puzzle",), ("solution",), summary="share of empty cells solved (d1)"),
        RewardSpec("code_tests", code_tests, (TEST_COLUMNS,), runs_code=True, summary="share of unit tests passed"),
    )
}
REWARD_NAMES: tuple[str, ...] = tuple(BUILTIN_REWARDS)


def unknown_reward(name: str, known: list[str]) -> RewardSettingError:
    closest = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {closest[0]!r}?)" if closest else ""
    return RewardSettingError(f"rewards: unknown reward {name!r}{hint}; known: {', '.join(known)}")


def builtin_reward(name: str) -> RewardSpec:
    """The built-in reward called `name`; an error listing the known ones (and the closest) otherwise."""
    if name not in BUILTIN_REWARDS:
        raise unknown_reward(name, list(REWARD_NAMES))
    return BUILTIN_REWARDS[name]
