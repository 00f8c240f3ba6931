"""Evaluate a diffusion or causal LM on a dataset: likelihood metrics of texts and metrics of generated answers.

Metric groups (`EvalSettings.metrics`):
- `perplexity`: the ELBO upper bound of a diffusion LM (Monte-Carlo, with its standard error), the exact perplexity
  of a causal LM; both over the same tokens of plain texts (`dlm.metrics.likelihood`).
- `conditional_perplexity`: the same two kinds for prompt/answer data, of the reference answer given its prompt as
  the trainer encodes them (the family's chat template, the prompt never masked): the figure that falls with SFT,
  where plain-text perplexity of `prompt\nanswer` (a format no trained model saw) can rise.
- `accuracy`: masked-token accuracy at each mask ratio (diffusion), next-token accuracy (causal).
- `generation`: the answers to the prompts, their generation perplexity (under `scorer`, by default the model
  itself) always paired with their unigram entropy.
- `task_accuracy`: answers against the reference (`answer_extraction`: exact, first_number or regex).
- `diversity`: Self-BLEU and distinct-1/2 of the answers.
- `speed`: generated non-EOS tokens per second, forward passes (NFE) per sample, latency per prompt, peak memory.
The last four share one generation pass, which also reports `empty_answers` (answers that end at once) (batches of `batch_size` prompts, the family's sampler); every metric of a
generated answer carries the sampler settings in its details.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dlm.families.base import Family
from dlm.generation import SamplerSettings, build_sampler, decode_answers, encode_prompts, generate
from dlm.loading import LoadedModel
from dlm.metrics.likelihood import (
    ScoringInputs,
    causal_perplexity,
    causal_scores,
    conversation_inputs,
    diffusion_perplexity,
    masked_accuracy_name,
    masked_token_accuracy,
    next_token_accuracy,
    next_token_metric,
    perplexity,
    scoring_inputs,
    text_elbos,
)
from dlm.metrics.result import EvaluationError, MetricResult
from dlm.metrics.text import (
    ANSWER_EXTRACTIONS,
    compile_answer_regex,
    distinct_n,
    extract_answer,
    is_correct,
    reference_answer,
    self_bleu,
    unigram_entropy,
)
from dlm.samplers.common import SamplingError

__all__ = [
    "ANSWER_EXTRACTIONS",
    "METRIC_GROUPS",
    "EvalExample",
    "EvalOutput",
    "EvalSettings",
    "EvaluationError",
    "GenerationRun",
    "MetricResult",
    "ScoringInputs",
    "check_sampler_settings",
    "distinct_n",
    "example_fields",
    "evaluate",
    "extract_answer",
    "generate_answers",
    "is_correct",
    "masked_accuracy_name",
    "masked_token_accuracy",
    "next_token_accuracy",
    "perplexity",
    "reference_answer",
    "self_bleu",
    "unigram_entropy",
    "validate",
]

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
EMPTY_ANSWERS = "empty_answers"  # reported with every generation pass


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


@dataclass
class EvalOutput:
    """The metrics, and one record per generated answer: input (the last prompt message), output, reference,
    correct (None without task accuracy), empty (no token before the first end token), tokens (generated non-EOS
    tokens), latency_s, nfe."""

    metrics: list[MetricResult]
    samples: list[dict[str, Any]]


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


class _Progress:
    """Turns per-phase counts of finished items into one overall fraction, weighting each item by its cost."""

    def __init__(self, callback: Callable[[float], None] | None, total: float) -> None:
        self.callback, self.total, self.done = callback, max(total, 1.0), 0.0

    def phase(self, weight: float) -> Callable[[int], None]:
        def advance(items: int) -> None:
            self.done += items * weight
            if self.callback is not None:
                self.callback(min(self.done / self.total, 1.0))

        return advance


@dataclass
class GenerationRun:
    """One generation pass: per prompt the answer text, its generated token ids (up to the first end token),
    generated non-EOS tokens, forward passes and the wall time of its batch; plus totals."""

    device: str
    outputs: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    generated_tokens: list[int] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    peak_memory_gb: float = 0.0
    memory_measure: str = ""


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _until_end(row: list[int], end_ids: tuple[int, int]) -> list[int]:
    cut = next((i for i, token in enumerate(row) if token in end_ids), len(row))
    return row[:cut]


def generate_answers(
    loaded: LoadedModel,
    prompts: Sequence[Sequence[dict[str, str]]],
    settings: EvalSettings,
    progress: Callable[[int], None] | None = None,
) -> GenerationRun:
    """Answer `prompts` in batches of `settings.batch_size` with the family's sampler, timing each batch.
    Randomness comes from `settings.seed` (the global RNG state of the caller is restored afterwards)."""
    model, tokenizer, special = loaded.model, loaded.tokenizer, loaded.special_ids
    device = next(model.parameters()).device
    run = GenerationRun(device=str(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)  # transformers' `generate` samples from the global generator
        generator = torch.Generator().manual_seed(settings.seed)
        for first in range(0, len(prompts), settings.batch_size):
            batch = prompts[first : first + settings.batch_size]
            ids, attention = encode_prompts(
                tokenizer, batch, special.pad, apply_chat_template=settings.apply_chat_template
            )
            _synchronize(device)
            start = time.perf_counter()
            out = generate(model, loaded.family, special, ids, attention, settings.sampler, generator)
            _synchronize(device)
            elapsed = time.perf_counter() - start
            sequences = out.sequences.cpu()
            run.outputs += decode_answers(tokenizer, special, sequences, ids.shape[1])
            run.token_ids += [
                _until_end(row, (special.eos, special.eot)) for row in sequences[:, ids.shape[1] :].tolist()
            ]
            run.generated_tokens += out.generated_tokens.tolist()
            run.nfe += [out.nfe] * len(batch)
            run.latency_s += [elapsed] * len(batch)
            run.wall_time_s += elapsed
            if progress is not None:
                progress(len(batch))
    if device.type == "cuda":
        run.peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
        run.memory_measure = f"peak memory allocated on {device} during generation"
    else:
        # ru_maxrss is in KiB on Linux
        run.peak_memory_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        run.memory_measure = "peak resident memory of the process (CPU run)"
    return run


def _mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    mean = math.fsum(values) / len(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def _generation_metrics(
    run: GenerationRun,
    examples: Sequence[EvalExample],
    settings: EvalSettings,
    groups: frozenset[str],
    scorer: LoadedModel,
    progress: _Progress,
) -> tuple[list[MetricResult], list[bool | None]]:
    """The metrics of one generation pass, and per answer whether it is correct (None without task accuracy)."""
    sampler = _sampler_details(run, settings)
    metrics = [_empty_answers_metric(run, sampler)]
    correct: list[bool | None] = [None] * len(run.outputs)
    if "generation" in groups:
        metrics += _answer_likelihood_metrics(run, settings, scorer, progress, sampler)
    if "task_accuracy" in groups:
        correct = [
            is_correct(output, ex.reference, settings.answer_extraction, settings.answer_regex)
            for output, ex in zip(run.outputs, examples, strict=True)
        ]
        metrics.append(_task_accuracy_metric(correct, settings, sampler))
    if "diversity" in groups:
        metrics += _diversity_metrics(run, sampler)
    if "speed" in groups:
        metrics += _speed_metrics(run, sampler)
    return metrics, correct


def _sampler_details(run: GenerationRun, settings: EvalSettings) -> dict[str, Any]:
    """The settings every metric of a generated answer carries."""
    return {
        "sampler": asdict(settings.sampler),
        "apply_chat_template": settings.apply_chat_template,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "prompts": len(run.outputs),
    }


def _empty_answers_metric(run: GenerationRun, sampler: dict[str, Any]) -> MetricResult:
    """The fraction of answers with no token before the first end token: an answer that ends at once scores 0
    everywhere, so the report warns about it instead of showing a silent 0."""
    empty = [i for i, ids in enumerate(run.token_ids) if not ids]
    details = {**sampler, "empty": len(empty), "empty_prompts": empty[:20]}
    return MetricResult(EMPTY_ANSWERS, len(empty) / len(run.token_ids), None, "exact", details)


def _answer_likelihood_metrics(
    run: GenerationRun, settings: EvalSettings, scorer: LoadedModel, progress: _Progress, sampler: dict[str, Any]
) -> list[MetricResult]:
    """Generation perplexity of the answers under `scorer` (when any answer has a token) and their unigram
    entropy: a low perplexity means little alone (repetitive text scores well), so both are reported."""
    entropy, entropy_err = _mean_and_stderr([unigram_entropy(ids) for ids in run.token_ids])
    entropy_details = {**sampler, "unit": "nats, over the model's token ids of each answer, mean over answers"}
    inputs = scoring_inputs(scorer.tokenizer, scorer.special_ids.bos, run.outputs, settings.max_length, strict=False)
    metrics = []
    if inputs.ids:
        gen_ppl = _perplexity_metric(scorer, inputs, settings, progress, "generation_perplexity")
        gen_ppl.details.update(sampler, scorer=scorer.path, scored="the generated answers, without their prompts")
        metrics.append(gen_ppl)
    else:
        entropy_details["generation_perplexity"] = "not computed: every answer is empty"
    metrics.append(MetricResult("unigram_entropy", entropy, entropy_err, "estimate", entropy_details))
    return metrics


def _task_accuracy_metric(correct: list[bool], settings: EvalSettings, sampler: dict[str, Any]) -> MetricResult:
    value, stderr = _mean_and_stderr([float(c) for c in correct])
    details = {**sampler, "answer_extraction": settings.answer_extraction, "correct": sum(correct)}
    if settings.answer_extraction == "regex":
        details["answer_regex"] = settings.answer_regex
    return MetricResult("task_accuracy", value, stderr, "estimate", details)


def _diversity_metrics(run: GenerationRun, sampler: dict[str, Any]) -> list[MetricResult]:
    words = {**sampler, "tokens": "sacreBLEU 13a words"}
    return [
        MetricResult("self_bleu", self_bleu(run.outputs), None, "exact", {**words, "scale": "0-1"}),
        *(MetricResult(f"distinct_{n}", distinct_n(run.outputs, n), None, "exact", words) for n in (1, 2)),
    ]


def _speed_metrics(run: GenerationRun, sampler: dict[str, Any]) -> list[MetricResult]:
    timing = {**sampler, "device": run.device, "wall_time_s": run.wall_time_s}
    tokens = sum(run.generated_tokens)
    latency = {
        **timing,
        "latency": "wall time of the batch that answered the prompt",
        "amortized_s_per_prompt": run.wall_time_s / len(run.outputs),
    }
    counted = {**timing, "generated_tokens": tokens, "counted": "generated tokens other than EOS/end-of-turn"}
    return [
        MetricResult(
            "tokens_per_sec", tokens / run.wall_time_s if run.wall_time_s > 0 else 0.0, None, "estimate", counted
        ),
        MetricResult("nfe_per_sample", math.fsum(run.nfe) / len(run.nfe), None, "exact", timing),
        MetricResult("latency_per_prompt_s", math.fsum(run.latency_s) / len(run.latency_s), None, "estimate", latency),
        MetricResult("peak_memory_gb", run.peak_memory_gb, None, "estimate", {**timing, "measure": run.memory_measure}),
    ]


def _perplexity_metric(
    loaded: LoadedModel, inputs: ScoringInputs, settings: EvalSettings, progress: _Progress, name: str
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
    `scorer` scores generated answers for generation perplexity (default: the evaluated model)."""
    groups = validate(loaded, examples, settings)
    scorer = scorer or loaded
    loaded.model.eval()
    scorer.model.eval()
    tracker = _Progress(progress, _planned_work(loaded, scorer, examples, settings, groups))
    metrics: list[MetricResult] = []
    if groups & TEXT_GROUPS:
        metrics += _text_metrics(loaded, [ex.text for ex in examples], settings, groups, tracker)
    if "conditional_perplexity" in groups:
        metrics.append(_conditional_perplexity(loaded, examples, settings, tracker))
    samples: list[dict[str, Any]] = []
    if groups & GENERATION_GROUPS:
        run = generate_answers(
            loaded, [ex.prompt for ex in examples], settings, tracker.phase(_passes_per_answer(loaded, settings))
        )
        generation, correct = _generation_metrics(run, examples, settings, groups, scorer, tracker)
        metrics += generation
        samples = _samples(run, examples, correct)
    if progress is not None:
        progress(1.0)
    return EvalOutput(metrics=metrics, samples=samples)


def _text_metrics(
    loaded: LoadedModel, texts: list[str], settings: EvalSettings, groups: frozenset[str], tracker: _Progress
) -> list[MetricResult]:
    """Perplexity and token accuracy of plain texts."""
    inputs = scoring_inputs(loaded.tokenizer, loaded.special_ids.bos, texts, settings.max_length)
    metrics = []
    if loaded.family.is_diffusion:
        if "perplexity" in groups:
            metrics.append(_perplexity_metric(loaded, inputs, settings, tracker, "perplexity"))
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


def _conditional_perplexity(
    loaded: LoadedModel, examples: Sequence[EvalExample], settings: EvalSettings, tracker: _Progress
) -> MetricResult:
    """Perplexity of each reference answer given its prompt, in the family's chat template (as trained)."""
    inputs = conversation_inputs(
        loaded.tokenizer, [ex.prompt for ex in examples], [ex.reference for ex in examples], settings.max_length
    )
    return _perplexity_metric(loaded, inputs, settings, tracker, "conditional_perplexity")


def _samples(run: GenerationRun, examples: Sequence[EvalExample], correct: list[bool | None]) -> list[dict[str, Any]]:
    """One record per generated answer (see `EvalOutput`)."""
    return [
        {
            "input": ex.prompt[-1]["content"],
            "output": output,
            "reference": ex.reference,
            "correct": ok,
            "empty": not ids,
            "tokens": tokens,
            "latency_s": latency,
            "nfe": nfe,
        }
        for ex, output, ids, ok, tokens, latency, nfe in zip(
            examples, run.outputs, run.token_ids, correct, run.generated_tokens, run.latency_s, run.nfe, strict=True
        )
    ]
