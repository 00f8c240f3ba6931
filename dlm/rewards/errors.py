"""The errors of the rewards: a reward that fails names itself, the row and what went wrong (the job stops; a
failing reward never scores 0 in silence), and a reward setting that cannot work names the setting."""

from __future__ import annotations

from dlm.errors import ConfigError, DlmError

EXCERPT_CHARS = 80


class RewardError(DlmError):
    """A reward function raised, returned the wrong number of values or a value that is not a finite number, or
    the rows lack a column it needs. `row` is the index of the row at fault in the batch (None: the whole batch)."""

    def __init__(self, reward: str, row: int | None, message: str, completion: str | None = None):
        self.reward = reward
        self.row = row
        self.message = message
        where = "" if row is None else f" on row {row}"
        if completion is not None:
            where += f" (completion {excerpt(completion)!r})"
        super().__init__(f"reward {reward!r} failed{where}: {message}")


class RewardSettingError(ConfigError):
    """Reward settings that cannot work: an unknown reward, bad weights, code run without `trust_remote_code`,
    a reward file that is missing or defines no reward."""


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The start of a completion, short enough for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
