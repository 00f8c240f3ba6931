"""Verifiable rewards for GRPO: built-in rewards by name (`REWARD_NAMES`), a user's rewards from a file, and
`build_rewards`, which gives the `WeightedRewards` a trainer calls on each batch of completions.

Built-in rewards (each `fn(prompts, completions, **columns) -> list[float]`, TRL's signature; the columns they
read in brackets):
- `answer_match` [answer]: 1 when the final answer (last `\\boxed{}`, else `#### x`, else the `<answer>` tag, else
  the last number) equals the row's answer (its `\\boxed{}` or what follows `####`) as text or as a number.
- `boxed_match` [answer]: the same, the answer read from the last `\\boxed{}` only (MATH).
- `integer_answer`, `strict_format`, `soft_format`, `tag_count`: d1's format rewards (0.5, 0.5, 0.5, 0.125 a tag).
- `countdown` [target, numbers or nums]: 1 for a right equation, 0.1 for a wrong one, 0 for none (d1).
- `sudoku` [puzzle, solution]: the share of empty cells filled right (d1).
- `code_tests` [tests, test_list or test_cases]: the share of unit tests the code passes, run in a child process
  with time and memory limits; only with `trust_remote_code`.
"""

from dlm.rewards.build import build_rewards
from dlm.rewards.errors import RewardError, RewardSettingError
from dlm.rewards.registry import DEFAULT_REWARD, REWARD_NAMES, RewardSpec
from dlm.rewards.weighted import WeightedRewards

__all__ = [
    "DEFAULT_REWARD",
    "REWARD_NAMES",
    "RewardError",
    "RewardSettingError",
    "RewardSpec",
    "WeightedRewards",
    "build_rewards",
]
