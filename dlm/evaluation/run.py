"""`evaluate`: the chosen metric groups of one model on a list of examples, with progress."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dlm.evaluation.answers import answer_records, generate_answers, generation_metrics
from dlm.evaluation.checks import validate
from dlm.evaluation.likelihood import Progress, conditional_perplexity, text_metrics
from dlm.evaluation.settings import GENERATION_GROUPS, TEXT_GROUPS, EvalExample, EvalSettings
from dlm.generation import build_sampler, decoding_settings
from dlm.loading import LoadedModel
from dlm.metrics.result import MetricResult


@dataclass
class EvalOutput:
    """The metrics, and one record per generated answer: input (the last prompt message), output, reference,
    correct (None without task accuracy), empty (no token before the first end token), tokens (generated non-EOS
    tokens), latency_s, nfe."""

    metrics: list[MetricResult]
    samples: list[dict[str, Any]]


def _passes_per_answer(loaded: LoadedModel, settings: EvalSettings) -> int:
    return build_sampler(loaded.family, settings.sampler).forward_passes


def _planned_work(
    loaded: LoadedModel,
    scorer: LoadedModel,
    examples: Sequence[EvalExample],
    settings: EvalSettings,
    groups: frozenset[str],
) -> float:
    """Forward passes (roughly) the evaluation will run, so progress advances with the work done."""
    count = len(examples)
    work = 0.0
    likelihoods = len(groups & {"perplexity", "conditional_perplexity"})
    if loaded.family.is_diffusion:
        work += count * settings.mc_num * likelihoods
        work += count * len(settings.mask_ratios) * ("accuracy" in groups)
    else:
        work += count * (bool(groups & TEXT_GROUPS) + ("conditional_perplexity" in groups))
    if groups & GENERATION_GROUPS:
        work += count * _passes_per_answer(loaded, settings)
    if "generation" in groups:
        work += count * (settings.mc_num if scorer.family.is_diffusion else 1)
    return work


@torch.no_grad()
def evaluate(
    loaded: LoadedModel,
    examples: Sequence[EvalExample],
    settings: EvalSettings,
    progress: Callable[[float], None] | None = None,
    *,
    scorer: LoadedModel | None = None,
) -> EvalOutput:
    """Compute the metric groups of `settings.metrics` on `examples`; `progress` gets the fraction done (0..1).
    `scorer` scores generated answers for generation perplexity (default: the evaluated model). The sampler settings
    are the model's (`decoding_settings`: a block-diffusion model's own blocks), reported as used."""
    settings = dataclasses.replace(settings, sampler=decoding_settings(loaded.family, loaded.model, settings.sampler))
    groups = validate(loaded, examples, settings)
    scorer = scorer or loaded
    loaded.model.eval()
    scorer.model.eval()
    tracker = Progress(progress, _planned_work(loaded, scorer, examples, settings, groups))
    metrics: list[MetricResult] = []
    if groups & TEXT_GROUPS:
        metrics += text_metrics(loaded, [ex.text for ex in examples], settings, groups, tracker)
    if "conditional_perplexity" in groups:
        metrics.append(conditional_perplexity(loaded, examples, settings, tracker))
    samples: list[dict[str, Any]] = []
    if groups & GENERATION_GROUPS:
        run = generate_answers(
            loaded, [ex.prompt for ex in examples], settings, tracker.phase(_passes_per_answer(loaded, settings))
        )
        generation, correct = generation_metrics(run, examples, settings, groups, scorer, tracker)
        metrics += generation
        samples = answer_records(run, examples, correct)
    if progress is not None:
        progress(1.0)
    return EvalOutput(metrics=metrics, samples=samples)
