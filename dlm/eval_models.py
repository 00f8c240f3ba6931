"""Evaluate several models on the same examples, one after the other (each loaded with its optional LoRA adapter,
evaluated, then freed), for a side-by-side comparison."""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlm.evaluation.checks import check_sampler_settings
from dlm.evaluation.run import evaluate
from dlm.evaluation.settings import GENERATION_GROUPS, EvalExample, EvalSettings
from dlm.families import detect_family
from dlm.families.base import Family
from dlm.loading import inference_device_map, locate_checkpoint
from dlm.lora import adapter_base_model, load_model_with_adapter
from dlm.metrics.result import EvaluationError
from dlm.report import ModelResult, lm_eval_metrics

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: `label` names it in tables, `model` is what `load_model_and_tokenizer` takes (or an
    adapter folder), `adapter` an optional LoRA adapter folder to apply."""

    label: str
    model: str
    adapter: Path | None = None


def model_specs(
    main: str, compare_with: Sequence[str] = (), *, adapter: Path | None = None, label: str | None = None
) -> list[ModelSpec]:
    """The main model (with its optional adapter), then each `compare_with` entry. Labels are the folder or id names
    (`label` for the main model), `+adapter` for an adapter, and `#2`, `#3`, ... on repeats, so they are unique."""
    first = ModelSpec((label or Path(main).name) + (f"+{adapter.name}" if adapter else ""), main, adapter)
    specs: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for spec in [first, *(ModelSpec(Path(name).name, name) for name in compare_with)]:
        seen[spec.label] = seen.get(spec.label, 0) + 1
        specs.append(
            spec if seen[spec.label] == 1 else dataclasses.replace(spec, label=f"{spec.label}#{seen[spec.label]}")
        )
    return specs


@dataclass(frozen=True)
class LmEvalOptions:
    """lm-evaluation-harness tasks run on every model (none: no lm-eval)."""

    tasks: tuple[str, ...] = ()
    num_fewshot: int | None = None
    limit: int | None = None
    trust_remote_code: bool = False  # local task YAMLs may run their `!function` Python code


@dataclass(frozen=True)
class LoadOptions:
    """How every model is loaded (`dlm.loading.load_model_and_tokenizer` arguments)."""

    dtype: str = "auto"
    trust_remote_code: bool = False
    workspace: str | None = None


def evaluate_models(
    specs: Sequence[ModelSpec],
    examples: Sequence[EvalExample],
    settings: EvalSettings,
    *,
    lm_eval: LmEvalOptions = LmEvalOptions(),
    load: LoadOptions = LoadOptions(),
    log: Log = print,
    progress: Callable[[float], None] | None = None,
) -> list[ModelResult]:
    """Evaluate each model in turn; `progress` gets the overall fraction done (0..1, never decreasing). Every model is
    checked (`check_models`) before the first one loads."""
    check_models(specs, settings, load)
    results = []
    for index, spec in enumerate(specs):
        span = (index / len(specs), (index + 1) / len(specs))
        results.append(_evaluate_one(spec, examples, settings, lm_eval, load, log, _Span(progress, *span)))
        log(f"{spec.label} evaluated in {results[-1].seconds:.1f} s")
    return results


def check_models(specs: Sequence[ModelSpec], settings: EvalSettings, load: LoadOptions = LoadOptions()) -> None:
    """Before any model loads: each model can be found, belongs to a supported family, and suits the sampler
    settings when answers are generated, so that a bad `compare_with` entry fails the job at once rather than after
    the models before it were evaluated. Raises `ModelError` or `EvaluationError` naming the model."""
    generates = bool(set(settings.metrics) & GENERATION_GROUPS)
    for spec in specs:
        family = _family_of(spec, load.workspace)
        if generates:
            try:
                check_sampler_settings(family, settings.sampler)
            except EvaluationError as e:
                raise EvaluationError(f"{spec.label} ({family.name} family): {e}") from None


def _family_of(spec: ModelSpec, workspace: str | None) -> Family:
    """The family of the model `load_model_with_adapter` would load for `spec`, from its config.json alone."""
    name = spec.model
    folder = Path(name).expanduser()
    if spec.adapter is None and (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        name = adapter_base_model(folder) or name  # an adapter folder given as the model: its base model
    source, raw = locate_checkpoint(name, workspace)
    return detect_family({**raw, "_name_or_path": source})


class _Span:
    """Maps a model's own progress (0..1) into its share of the whole run, never moving backwards."""

    def __init__(self, callback: Callable[[float], None] | None, low: float, high: float) -> None:
        self.callback, self.low, self.high, self.reached = callback, low, high, low

    def __call__(self, fraction: float) -> None:
        self.reached = max(self.reached, self.low + min(max(fraction, 0.0), 1.0) * (self.high - self.low))
        if self.callback is not None:
            self.callback(self.reached)


def _evaluate_one(
    spec: ModelSpec,
    examples: Sequence[EvalExample],
    settings: EvalSettings,
    lm_eval: LmEvalOptions,
    load: LoadOptions,
    log: Log,
    progress: _Span,
) -> ModelResult:
    import torch

    started = time.perf_counter()
    loaded = load_model_with_adapter(
        spec.model, spec.adapter, device_map=inference_device_map(), **dataclasses.asdict(load)
    )
    # a model given as an adapter folder comes back with the adapter applied on its base
    adapter = spec.adapter or (Path(spec.model) if hasattr(loaded.model, "peft_config") else None)
    log(
        f"{spec.label}: {loaded.family.name} model from {loaded.path}" + (f" with adapter {adapter}" if adapter else "")
    )
    result = ModelResult(spec.label, spec.model, loaded.path, loaded.family.name, adapter=_text(adapter))
    progress(0.05)
    # metrics, then lm-eval (which restarts its counts for each kind of request), share the model's span
    metrics_end = (0.525 if lm_eval.tasks else 1.0) if settings.metrics else 0.05
    if settings.metrics:
        output = evaluate(
            loaded, examples, settings, progress=lambda done: progress(0.05 + (metrics_end - 0.05) * done)
        )
        result.metrics, result.samples = list(output.metrics), output.samples
    if lm_eval.tasks:
        from dlm.lm_eval.run import run_lm_eval

        arguments = _lm_eval_arguments(lm_eval, settings)
        result.lm_eval = run_lm_eval(
            loaded,
            lm_eval.tasks,
            **arguments,
            trust_remote_code=lm_eval.trust_remote_code,
            log=log,
            progress=lambda kind, done, total: progress(metrics_end + (1 - metrics_end) * done / max(total, 1)),
        )
        if not loaded.family.is_diffusion:  # lm-eval's HFLM: exact likelihoods, the tasks' own generation settings
            arguments = {k: v for k, v in arguments.items() if k not in ("mc_num", "sampler")}
        details = {"source": "lm-eval", **arguments}
        result.metrics += lm_eval_metrics(result.lm_eval["metrics"], details)
    result.seconds = time.perf_counter() - started
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _lm_eval_arguments(lm_eval: LmEvalOptions, settings: EvalSettings) -> dict[str, Any]:
    """`run_lm_eval`'s settings; each lm-eval metric carries them in its details."""
    return {
        "num_fewshot": lm_eval.num_fewshot,
        "limit": lm_eval.limit,
        "batch_size": settings.batch_size,
        "mc_num": settings.mc_num,
        "sampler": settings.sampler,
        "seed": settings.seed,
        "apply_chat_template": settings.apply_chat_template,
    }


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
