"""`build_rewards`: the rewards a run's settings name, checked before anything loads."""

from __future__ import annotations

import dataclasses
import functools
import math

from dlm.rewards.code_tests import code_tests
from dlm.rewards.errors import RewardSettingError
from dlm.rewards.registry import REWARD_NAMES, RewardSpec, builtin_reward, unknown_reward
from dlm.rewards.sandbox import Limits
from dlm.rewards.user_file import load_reward_file
from dlm.rewards.weighted import WeightedRewards


def build_rewards(
    names: list[str],
    weights: list[float] | None,
    *,
    trust_remote_code: bool,
    reward_file: str | None = None,
    code_seconds_per_test: float = Limits.seconds,
    code_memory_mib: int = Limits.memory_mib,
) -> WeightedRewards:
    """The rewards `names` lists, with `weights` (None: 1 each). Names are built-in rewards (`REWARD_NAMES`) or
    functions of `reward_file` (needs `trust_remote_code`); when `names` names none of the file's functions,
    they all come after the named ones, so a file alone, or "answer_match" and a file, need no other setting.
    `code_seconds_per_test` and `code_memory_mib` limit each unit test of `code_tests`."""
    if not (math.isfinite(code_seconds_per_test) and code_seconds_per_test > 0):
        raise RewardSettingError(f"code_seconds_per_test: {code_seconds_per_test} is not a positive number")
    if code_memory_mib < 64:
        raise RewardSettingError(f"code_memory_mib: {code_memory_mib} MiB is too little to start Python (64 or more)")
    listed = names.split(",") if isinstance(names, str) else names  # "answer_match, tag_count" as a form writes it
    names = [name.strip() for name in listed if name.strip()]
    from_file = file_rewards(reward_file, trust_remote_code)
    if from_file and not set(names) & set(from_file):
        names += list(from_file)
    if not names:
        raise RewardSettingError(f"rewards: no reward given; choose from {', '.join(REWARD_NAMES)} or a reward_file")
    limits = {"seconds_per_test": code_seconds_per_test, "memory_mib": code_memory_mib}
    specs = tuple(with_code_limits(resolve(name, from_file), limits) for name in names)
    chosen = [1.0] * len(names) if weights is None else list(weights)
    return WeightedRewards(tuple(names), tuple(chosen), specs=specs, trust_remote_code=trust_remote_code)


def file_rewards(reward_file: str | None, trust_remote_code: bool) -> dict[str, RewardSpec]:
    if not reward_file:
        return {}
    if not trust_remote_code:
        raise RewardSettingError(
            f"reward_file {reward_file!r} is Python code to run; it needs trust_remote_code set to true"
        )
    specs = {spec.name: spec for spec in load_reward_file(reward_file)}
    clashes = sorted(set(specs) & set(REWARD_NAMES))
    if clashes:
        raise RewardSettingError(f"reward_file {reward_file!r}: {', '.join(clashes)} is a built-in reward's name")
    return specs


def with_code_limits(spec: RewardSpec, limits: dict[str, float]) -> RewardSpec:
    if spec.function is not code_tests:
        return spec
    return dataclasses.replace(spec, function=functools.partial(code_tests, **limits))


def resolve(name: str, from_file: dict[str, RewardSpec]) -> RewardSpec:
    if name in from_file:
        return from_file[name]
    if name in REWARD_NAMES:
        return builtin_reward(name)
    raise unknown_reward(name, [*REWARD_NAMES, *from_file])
