"""`WeightedRewards`: several rewards and their weights, called on a batch of completions. Each reward is checked
as it is called: the columns it needs, the number of values, each value a finite number; a reward that raises is
called again row by row to name the row at fault. Any failure stops the job (`RewardError`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import torch

from dlm.rewards.errors import RewardError, RewardSettingError
from dlm.rewards.registry import RewardSpec, builtin_reward

FLOAT32_MAX = torch.finfo(torch.float32).max


@dataclass(frozen=True)
class WeightedRewards:
    """Rewards by name with their weights. Called with a batch, it gives a `[N, len(names)]` float32 tensor of
    each reward's values; the trainer logs each column and adds them up with the weights. `specs` holds the
    rewards (left empty: the built-ins of `names`); a reward that runs code needs `trust_remote_code`."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    specs: tuple[RewardSpec, ...] = field(default=(), repr=False, compare=False)
    trust_remote_code: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not self.names:
            raise RewardSettingError("rewards: no reward given")
        if len(self.weights) != len(self.names):
            raise RewardSettingError(
                f"reward_weights: {len(self.weights)} weights for {len(self.names)} rewards ({', '.join(self.names)})"
            )
        if not all(isinstance(w, Real) and math.isfinite(w) for w in self.weights):
            raise RewardSettingError(f"reward_weights: {list(self.weights)} are not all finite numbers")
        if len(set(self.names)) != len(self.names):
            raise RewardSettingError(f"rewards: a reward is named twice in {', '.join(self.names)}")
        specs = self.specs or tuple(builtin_reward(name) for name in self.names)
        if [spec.name for spec in specs] != list(self.names):
            raise RewardSettingError(f"rewards: {list(self.names)} do not name the rewards given")
        for spec in specs:
            if spec.runs_code and not self.trust_remote_code:
                raise RewardSettingError(
                    f"rewards: {spec.name!r} runs the model's code; it needs trust_remote_code set to true"
                )
        object.__setattr__(self, "specs", specs)
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> torch.Tensor:
        check_batch("+".join(self.names), prompts, completions, columns)
        values = [score(spec, prompts, completions, columns) for spec in self.specs]
        return torch.tensor(values, dtype=torch.float32).reshape(len(self.specs), len(completions)).T.contiguous()

    def weight_tensor(self) -> torch.Tensor:
        """The weights as a float32 tensor, to multiply the rewards' columns with."""
        return torch.tensor(self.weights, dtype=torch.float32)


def check_batch(
    rewards: str, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence[Any]]
) -> None:
    if len(prompts) != len(completions):
        raise RewardError(rewards, None, f"{len(prompts)} prompts for {len(completions)} completions")
    for name, values in columns.items():
        if len(values) != len(completions):
            raise RewardError(rewards, None, f"column {name!r} has {len(values)} values for {len(completions)} rows")


def check_columns(spec: RewardSpec, columns: Mapping[str, Sequence[Any]]) -> None:
    for accepted in spec.columns:
        if not any(name in columns for name in accepted):
            wanted = " or ".join(repr(name) for name in accepted)
            have = ", ".join(sorted(columns)) or "none"
            raise RewardError(spec.name, None, f"needs the dataset column {wanted}; the rows have: {have}")


def score(spec: RewardSpec, prompts: list[str], completions: list[str], columns: Mapping[str, list]) -> list[float]:
    """One reward's values for the batch, each checked."""
    check_columns(spec, columns)
    try:
        values = list(spec.function(prompts, completions, **columns))
    except Exception as error:
        row = failing_row(spec, prompts, completions, columns)
        completion = None if row is None else completions[row]
        raise RewardError(spec.name, row, f"{type(error).__name__}: {error}", completion) from error
    if len(values) != len(completions):
        raise RewardError(spec.name, None, f"returned {len(values)} values for {len(completions)} completions")
    numbers = [finite_float(value) for value in values]
    for row, number in enumerate(numbers):
        if number is None:
            raise RewardError(spec.name, row, f"returned {values[row]!r}, not a finite number", completions[row])
    return numbers


def finite_float(value: Any) -> float | None:
    """The value as a float when it is a finite number that float32 holds (a bool, an int, a float, a one-element
    tensor or array), else None."""
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return None
    return number if math.isfinite(number) and abs(number) <= FLOAT32_MAX else None


def failing_row(
    spec: RewardSpec, prompts: list[str], completions: list[str], columns: Mapping[str, list]
) -> int | None:
    """The first row on which the reward raises when called on that row alone; None when none does."""
    for row in range(len(completions)):
        try:
            spec.function([prompts[row]], [completions[row]], **{name: [v[row]] for name, v in columns.items()})
        except Exception:
            return row
    return None
