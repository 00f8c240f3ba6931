"""`build_rewards`: the rewards a run's settings name, checked before anything loads."""

from __future__ import annotations

from dlm.rewards.errors import RewardSettingError
from dlm.rewards.registry import REWARD_NAMES, RewardSpec, builtin_reward, unknown_reward
from dlm.rewards.user_file import load_reward_file
from dlm.rewards.weighted import WeightedRewards


def build_rewards(
    names: list[str], weights: list[float] | None, *, trust_remote_code: bool, reward_file: str | None = None
) -> WeightedRewards:
    """The rewards `names` lists, with `weights` (None: 1 each). Names are built-in rewards (`REWARD_NAMES`) or
    functions of `reward_file` (needs `trust_remote_code`); when `names` names none of the file's functions,
    they all come after the named ones, so a file alone, or "answer_match" and a file, need no other setting."""
    names = [name.strip() for name in names if name.strip()]
    from_file = file_rewards(reward_file, trust_remote_code)
    if from_file and not set(names) & set(from_file):
        names += list(from_file)
    if not names:
        raise RewardSettingError(f"rewards: no reward given; choose from {', '.join(REWARD_NAMES)} or a reward_file")
    specs = tuple(resolve(name, from_file) for name in names)
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


def resolve(name: str, from_file: dict[str, RewardSpec]) -> RewardSpec:
    if name in from_file:
        return from_file[name]
    if name in REWARD_NAMES:
        return builtin_reward(name)
    raise unknown_reward(name, [*REWARD_NAMES, *from_file])
