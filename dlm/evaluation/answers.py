"""The generation pass (batches of prompts answered with the family's sampler, timed) and the metrics of its
answers: empty answers, generation perplexity and unigram entropy, task accuracy, diversity, speed."""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dlm.evaluation.likelihood import Progress, perplexity_metric
from dlm.evaluation.settings import EvalExample, EvalSettings
from dlm.generation import decode_answers, encode_prompts, generate
from dlm.loading import LoadedModel
from dlm.metrics.likelihood import (
    scoring_inputs,
)
from dlm.metrics.result import MetricResult
from dlm.metrics.text import (
    distinct_n,
    is_correct,
    self_bleu,
    unigram_entropy,
)

EMPTY_ANSWERS = "empty_answers"  # reported with every generation pass


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


def generation_metrics(
    run: GenerationRun,
    examples: Sequence[EvalExample],
    settings: EvalSettings,
    groups: frozenset[str],
    scorer: LoadedModel,
    progress: Progress,
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
    run: GenerationRun, settings: EvalSettings, scorer: LoadedModel, progress: Progress, sampler: dict[str, Any]
) -> list[MetricResult]:
    """Generation perplexity of the answers under `scorer` (when any answer has a token) and their unigram
    entropy: a low perplexity means little alone (repetitive text scores well), so both are reported."""
    entropy, entropy_err = _mean_and_stderr([unigram_entropy(ids) for ids in run.token_ids])
    entropy_details = {**sampler, "unit": "nats, over the model's token ids of each answer, mean over answers"}
    inputs = scoring_inputs(scorer.tokenizer, scorer.special_ids.bos, run.outputs, settings.max_length, strict=False)
    metrics = []
    if inputs.ids:
        gen_ppl = perplexity_metric(scorer, inputs, settings, progress, "generation_perplexity")
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


def answer_records(
    run: GenerationRun, examples: Sequence[EvalExample], correct: list[bool | None]
) -> list[dict[str, Any]]:
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
