"""What every evaluation metric returns, and the error raised for evaluation input that cannot work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dlm.errors import DlmError

METRIC_KINDS = ("upper_bound", "exact", "estimate")


class EvaluationError(DlmError, ValueError):
    """Evaluation settings or data that cannot work; the message names the setting or example at fault."""


@dataclass
class MetricResult:
    """One reported number. `kind`: `upper_bound` (a diffusion LM's perplexity from its ELBO), `exact` (computed
    without sampling error) or `estimate`. `stderr` is its standard error (None when it has none); `details` holds
    the settings that produced it (Monte-Carlo samples, mask ratio, sampler settings, answer extraction, ...)."""

    name: str
    value: float
    stderr: float | None = None
    kind: str = "estimate"
    details: dict[str, Any] = field(default_factory=dict)
