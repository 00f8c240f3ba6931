"""The error of the lm-eval integration."""

from dlm.errors import DlmError


class LmEvalError(DlmError):
    """An lm-eval task or setting that cannot run here; the message names the task and why."""
