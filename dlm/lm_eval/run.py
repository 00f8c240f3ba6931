"""`run_lm_eval`: lm-eval tasks on a loaded model (`dlm_diffusion` for diffusion families, lm-eval's HFLM for causal
LMs), with its metrics summarized."""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lm_eval.utils import handle_non_serializable

from dlm.generation import SamplerSettings
from dlm.lm_eval.errors import LmEvalError
from dlm.lm_eval.model import DiffusionLM, Log, Progress, positive_int
from dlm.lm_eval.tasks import load_tasks
from dlm.loading import LoadedModel


def hf_lm(loaded: LoadedModel, *, batch_size: int = 8, max_length: int | None = None) -> Any:
    """lm-eval's HFLM around an already loaded causal LM (family `ar`): exact log-likelihoods, HF generation."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=loaded.model,
        tokenizer=loaded.tokenizer,
        batch_size=positive_int("batch_size", batch_size),
        max_length=max_length,
    )


class _LogHandler(logging.Handler):
    def __init__(self, log: Log) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        self._log(f"lm-eval: {record.getMessage()}")


@contextmanager
def _forward_lm_eval_warnings(log: Log) -> Iterator[None]:
    logger = logging.getLogger("lm_eval")
    handler = _LogHandler(log)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _number(value: Any) -> float | None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
        return float(value)
    return None


def summarize(results: dict[str, Any]) -> dict[str, dict[str, tuple[float, float | None]]]:
    """{task or group: {metric: (value, stderr or None)}} from lm-eval's results. A metric under a filter other
    than `none` is named `metric_filter` (gsm8k: `exact_match_strict-match`)."""
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    for task, values in results.get("results", {}).items():
        metrics = {}
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or _number(value) is None:
                continue
            name = metric if filt == "none" else f"{metric}_{filt}"
            metrics[name] = (_number(value), _number(values.get(f"{metric}_stderr,{filt}")))
        out[task] = metrics
    return out


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=handle_non_serializable))


def run_lm_eval(
    loaded: LoadedModel,
    tasks: str | Sequence[str],
    *,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    mc_num: int = 128,
    sampler: SamplerSettings | None = None,
    seed: int = 0,
    apply_chat_template: bool = False,
    log: Log | None = None,
    progress: Progress | None = None,
    bootstrap_iters: int = 1000,
    max_length: int | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Run lm-eval tasks on a loaded model.

    `tasks`: task names, glob patterns, task YAML files or folders (a list, or one comma-separated string).
    `num_fewshot`: None keeps each task's own. `limit`: documents per task (a fraction when < 1; None or 0: all).
    `batch_size`: sequences per forward pass. `mc_num`: ELBO samples per likelihood (diffusion families).
    `sampler`: generation settings (diffusion families; causal LMs use the task's generation settings).
    `seed`: lm-eval's seeds (few-shot choice, ...) and the ELBO masks and sampler noise.
    `progress(kind, done, total)`: called as requests of a kind (loglikelihood, generate_until, ...) complete.
    `trust_remote_code`: local task YAMLs may use `!function` (Python code beside the YAML); refused otherwise.

    Returns {"metrics": {task: {metric: (value, stderr)}}, "results": lm-eval's results (JSON-safe, without the
    samples), "samples": {task: per-document records (arguments, responses, metrics)}, "generation": tokens,
    forward passes and seconds spent generating (diffusion families)}.
    """
    log = log or logging.getLogger(__name__).info
    specs = _task_specs(tasks, num_fewshot, limit)
    from lm_eval import simple_evaluate

    with _forward_lm_eval_warnings(log):
        manager, items = load_tasks(specs, log, trust_remote_code=trust_remote_code)
        if loaded.family.is_diffusion:
            sampler = sampler or SamplerSettings()
            lm = DiffusionLM(
                loaded, mc_num=mc_num, batch_size=batch_size, sampler=sampler, seed=seed, max_length=max_length,
                log=log, progress=progress,
            )  # fmt: skip
        else:
            log(
                f"{loaded.path} is a causal LM: lm-eval's HFLM scores it with exact log-likelihoods and generates "
                "with the tasks' generation settings (mc_num and the sampler settings do not apply)"
            )
            lm = hf_lm(loaded, batch_size=batch_size, max_length=max_length)
        results = simple_evaluate(
            model=lm,
            tasks=items,
            num_fewshot=num_fewshot,
            limit=limit or None,
            batch_size=batch_size,
            task_manager=manager,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=apply_chat_template,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            bootstrap_iters=bootstrap_iters,
            log_samples=True,
        )
    return _outcome(results, lm)


def _task_specs(tasks: str | Sequence[str], num_fewshot: int | None, limit: int | float | None) -> list[str]:
    """The task names, patterns and paths of `tasks`, once the settings that go with them are checked."""
    specs = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not specs:
        raise LmEvalError("no lm-eval task given: name at least one task, task YAML file or folder")
    if num_fewshot is not None and num_fewshot < 0:
        raise LmEvalError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if limit is not None and limit < 0:
        raise LmEvalError(f"limit must be >= 0 (0: every document), got {limit}")
    return specs


def _outcome(results: dict[str, Any], lm: Any) -> dict[str, Any]:
    """`run_lm_eval`'s answer from lm-eval's results: metrics, results, samples and generation statistics."""
    samples = results.pop("samples", None) or {}
    stats = dict(lm.generation_stats) if isinstance(lm, DiffusionLM) else {}
    if stats.get("seconds"):
        stats["tokens_per_second"] = stats["generated_tokens"] / stats["seconds"]
    return {
        "metrics": summarize(results),
        "results": _json_safe(results),
        "samples": _json_safe(samples),
        "generation": stats,
    }
