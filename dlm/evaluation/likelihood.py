"""Likelihood metrics of the evaluated model: perplexity (the ELBO bound of a diffusion LM, the exact value of a
causal LM) of texts and of reference answers given their prompts, and token accuracy; `Progress` weighs the work."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dlm.evaluation.settings import EvalExample, EvalSettings
from dlm.loading import LoadedModel
from dlm.metrics.likelihood import (
    ScoringInputs,
    causal_perplexity,
    causal_scores,
    conversation_inputs,
    diffusion_perplexity,
    masked_token_accuracy,
    next_token_metric,
    scoring_inputs,
    text_elbos,
)
from dlm.metrics.result import MetricResult


class Progress:
    """Turns per-phase counts of finished items into one overall fraction, weighting each item by its cost."""

    def __init__(self, callback: Callable[[float], None] | None, total: float) -> None:
        self.callback, self.total, self.done = callback, max(total, 1.0), 0.0

    def phase(self, weight: float) -> Callable[[int], None]:
        def advance(items: int) -> None:
            self.done += items * weight
            if self.callback is not None:
                self.callback(min(self.done / self.total, 1.0))

        return advance


def perplexity_metric(
    loaded: LoadedModel, inputs: ScoringInputs, settings: EvalSettings, progress: Progress, name: str
) -> MetricResult:
    if loaded.family.is_diffusion:
        means, stderrs = text_elbos(
            loaded,
            inputs,
            mc_num=settings.mc_num,
            batch_size=settings.batch_size,
            seed=settings.seed,
            progress=progress.phase(settings.mc_num),
        )
        return diffusion_perplexity(means, stderrs, inputs, settings.mc_num, name)
    scores = causal_scores(loaded, inputs, batch_size=settings.batch_size, progress=progress.phase(1))
    return causal_perplexity(scores, inputs, name)


def text_metrics(
    loaded: LoadedModel, texts: list[str], settings: EvalSettings, groups: frozenset[str], tracker: Progress
) -> list[MetricResult]:
    """Perplexity and token accuracy of plain texts."""
    inputs = scoring_inputs(loaded.tokenizer, loaded.special_ids.bos, texts, settings.max_length)
    metrics = []
    if loaded.family.is_diffusion:
        if "perplexity" in groups:
            metrics.append(perplexity_metric(loaded, inputs, settings, tracker, "perplexity"))
        if "accuracy" in groups:
            metrics += [
                masked_token_accuracy(
                    loaded, inputs, ratio, batch_size=settings.batch_size, seed=settings.seed, progress=tracker.phase(1)
                )
                for ratio in settings.mask_ratios
            ]
        return metrics
    # one causal pass serves both metrics
    scores = causal_scores(loaded, inputs, batch_size=settings.batch_size, progress=tracker.phase(1))
    if "perplexity" in groups:
        metrics.append(causal_perplexity(scores, inputs))
    if "accuracy" in groups:
        metrics.append(next_token_metric(scores, inputs))
    return metrics


def conditional_perplexity(
    loaded: LoadedModel, examples: Sequence[EvalExample], settings: EvalSettings, tracker: Progress
) -> MetricResult:
    """Perplexity of each reference answer given its prompt, in the family's chat template (as trained)."""
    inputs = conversation_inputs(
        loaded.tokenizer, [ex.prompt for ex in examples], [ex.reference for ex in examples], settings.max_length
    )
    return perplexity_metric(loaded, inputs, settings, tracker, "conditional_perplexity")
