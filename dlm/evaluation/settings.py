"""The evaluator's inputs: examples, settings, and the metric groups with the example fields each needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dlm.generation import SamplerSettings
from dlm.metrics.result import EvaluationError

METRIC_GROUPS = (
    "perplexity",
    "conditional_perplexity",
    "accuracy",
    "generation",
    "task_accuracy",
    "diversity",
    "speed",
)
TEXT_GROUPS = frozenset({"perplexity", "accuracy"})
GENERATION_GROUPS = frozenset({"generation", "task_accuracy", "diversity", "speed"})


# The `EvalExample` fields each metric group needs in every example.
EXAMPLE_FIELDS = {
    "perplexity": ("text",),
    "conditional_perplexity": ("prompt", "reference"),
    "accuracy": ("text",),
    "generation": ("prompt",),
    "task_accuracy": ("prompt", "reference"),
    "diversity": ("prompt",),
    "speed": ("prompt",),
}


def example_fields(metrics: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`{metric group: the example fields it needs}` for `metrics` (text, prompt, reference)."""
    unknown = [m for m in metrics if m not in EXAMPLE_FIELDS]
    if unknown:
        raise EvaluationError(f"unknown metrics: {', '.join(unknown)}; choose from: {', '.join(METRIC_GROUPS)}")
    return {metric: EXAMPLE_FIELDS[metric] for metric in metrics}


@dataclass
class EvalExample:
    """One dataset row: `text` for likelihood metrics, `prompt` (chat messages ending with a user turn) for
    generation, `reference` (the expected answer) for task accuracy."""

    text: str | None = None
    prompt: list[dict[str, str]] | None = None
    reference: str | None = None


@dataclass
class EvalSettings:
    """Evaluation settings; the field names are the evaluator plugin's parameter names."""

    metrics: tuple[str, ...] = ("perplexity",)
    mc_num: int = 128
    mask_ratios: tuple[float, ...] = (0.15, 0.5, 0.85)
    batch_size: int = 8
    seed: int = 42
    max_length: int = 512
    apply_chat_template: bool = True
    answer_extraction: str = "exact"
    answer_regex: str = ""
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
