"""Built-in rewards score one row at a time; `per_row` gives such a scorer the signature TRL's reward functions
have: `fn(prompts, completions, **columns) -> list[float]`, the columns holding one value per row."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

RowScorer = Callable[[str, Mapping[str, Any]], float]
RewardFunction = Callable[..., Sequence[float]]


def per_row(score: RowScorer) -> RewardFunction:
    """A reward function scoring each completion with `score(completion, row)`, `row` its values of the columns."""

    def reward(prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]) -> list[float]:
        return [
            score(completion, {name: values[index] for name, values in columns.items()})
            for index, completion in enumerate(completions)
        ]

    reward.__name__ = score.__name__
    reward.__doc__ = score.__doc__
    return reward


def first_present(row: Mapping[str, Any], *names: str) -> Any:
    """The row's value of the first of `names` it has (a column some datasets spell differently)."""
    for name in names:
        if name in row:
            return row[name]
    raise KeyError(f"none of the columns {', '.join(names)}")
