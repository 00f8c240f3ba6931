"""Settings and data checked before any model work, each error naming the setting or the examples to fix."""

from __future__ import annotations

from collections.abc import Sequence

from dlm.evaluation.settings import GENERATION_GROUPS, METRIC_GROUPS, TEXT_GROUPS, EvalExample, EvalSettings
from dlm.families.base import Family
from dlm.generation import SamplerSettings, build_sampler
from dlm.loading import LoadedModel
from dlm.metrics.result import EvaluationError
from dlm.metrics.text import (
    compile_answer_regex,
)
from dlm.samplers.common import SamplingError


def _listing(indices: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(map(str, indices[:limit]))
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def check_sampler_settings(family: Family, sampler: SamplerSettings) -> None:
    """Build the family's sampler, which checks its settings; `EvaluationError` for settings it rejects (saying
    which values work)."""
    try:
        build_sampler(family, sampler)
    except SamplingError as e:
        raise EvaluationError(f"sampler settings (gen_length is max_new_tokens): {e}") from e


def validate(loaded: LoadedModel, examples: Sequence[EvalExample], settings: EvalSettings) -> frozenset[str]:
    """Check settings and data before any model work; return the metric groups to compute."""
    if not examples:
        raise EvaluationError("no examples to evaluate: the dataset split is empty")
    groups = frozenset(settings.metrics)
    unknown = sorted(groups - set(METRIC_GROUPS))
    if unknown or not groups:
        raise EvaluationError(
            (f"unknown metrics: {', '.join(unknown)}; " if unknown else "no metrics chosen; ")
            + f"choose from: {', '.join(METRIC_GROUPS)}"
        )
    if settings.mc_num < 1:
        raise EvaluationError(f"mc_num (Monte-Carlo samples per text) must be at least 1, got {settings.mc_num}")
    if settings.batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {settings.batch_size}")
    if settings.max_length < 2:
        raise EvaluationError(f"max_length must be at least 2, got {settings.max_length}")
    if groups & TEXT_GROUPS:
        missing = [i for i, ex in enumerate(examples) if ex.text is None]
        if missing:
            raise EvaluationError(
                f"{' and '.join(sorted(groups & TEXT_GROUPS))} need a text in every example; examples "
                f"{_listing(missing)} have none (check the text column)"
            )
    if "accuracy" in groups and loaded.family.is_diffusion:
        if not settings.mask_ratios:
            raise EvaluationError("masked-token accuracy needs at least one mask ratio (mask_ratios)")
        bad = [r for r in settings.mask_ratios if not 0 < r <= 1]
        if bad:
            raise EvaluationError(f"mask ratios must lie in (0, 1], got {', '.join(map(str, bad))}")
    if "conditional_perplexity" in groups:
        _check_prompts(examples, "conditional_perplexity")
        _check_references(examples, "conditional_perplexity")
    if groups & GENERATION_GROUPS:
        _validate_generation(loaded, examples, settings, groups)
    return groups


def _validate_generation(
    loaded: LoadedModel, examples: Sequence[EvalExample], settings: EvalSettings, groups: frozenset[str]
) -> None:
    _check_prompts(examples, ", ".join(sorted(groups & GENERATION_GROUPS)))
    if "task_accuracy" in groups:
        _check_references(examples, "task_accuracy")
        compile_answer_regex(settings.answer_extraction, settings.answer_regex)
    if "diversity" in groups and len(examples) < 2:
        raise EvaluationError("diversity (Self-BLEU) compares answers with each other: it needs at least 2 prompts")
    check_sampler_settings(loaded.family, settings.sampler)


def _check_prompts(examples: Sequence[EvalExample], metrics: str) -> None:
    for i, ex in enumerate(examples):
        if not ex.prompt:
            raise EvaluationError(
                f"{metrics} need a prompt in every example; example {i} has none (check the prompt column)"
            )
        last = ex.prompt[-1]
        if not isinstance(last, dict) or last.get("role") != "user" or not isinstance(last.get("content"), str):
            raise EvaluationError(
                f"example {i}: a prompt must be chat messages ending with a user turn "
                f"({{'role': 'user', 'content': ...}}), its last message is {last!r}"
            )


def _check_references(examples: Sequence[EvalExample], metric: str) -> None:
    missing = [i for i, ex in enumerate(examples) if ex.reference is None]
    if missing:
        raise EvaluationError(
            f"{metric} needs a reference answer in every example; examples {_listing(missing)} have none "
            "(check the reference column)"
        )
