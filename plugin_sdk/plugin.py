"""What the plugins' mains share around their call into the library: the model every plugin needs, and a trainer's
outputs (planned and checked before training, published after it).

A trainer's main is::

    require_model(p.get("model_name"))
    config = ...                                  # checks the settings before anything loads
    outputs = plan_outputs(job)                   # refuses now to overwrite an earlier job's result
    result = run_sft(config, rows, validation_rows, job)
    return finish_training(job, result, save_outputs, outputs)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from plugin_sdk.errors import JobStopped, ParameterError
from plugin_sdk.job import Job
from plugin_sdk.outputs import check_outputs_free, publish_outputs


class TrainingResult(Protocol):
    """What `finish_training` reads of a training run's result (`dlm.trainers.outputs.TrainResult`)."""

    stopped: bool
    global_step: int
    summary: str


# save(result, adaptor_dir=..., full_model_dir=...) -> the folders written (a None folder is not written), e.g.
# `dlm.trainers.outputs.save_outputs`
SaveResult = Callable[..., list[Path]]


@dataclass(frozen=True)
class PlannedOutputs:
    """What a trainer writes: the LoRA adapter (with LoRA) and the full (merged) model."""

    lora: bool
    full_model: bool


def require_model(model: str | None, *, presets: str = "a tiny preset such as tiny-llada") -> str:
    """`model`, unless none was given: then a ParameterError that says how to name one (`presets`: which presets
    the plugin takes)."""
    if not model:
        raise ParameterError(f"no model: set model_name (a local checkpoint, a hub id, or {presets})")
    return model


def plan_outputs(job: Job) -> PlannedOutputs:
    """The outputs the job's parameters ask for: the adapter with `lora`, the full model when `save_full_model` or
    without LoRA. Refused now, before training, where an earlier job's result holds their place."""
    p = job.params
    planned = PlannedOutputs(lora=p.lora, full_model=p.save_full_model or not p.lora)
    check_outputs_free(job, lora=planned.lora, full_model=planned.full_model)
    return planned


def finish_training(job: Job, result: TrainingResult, save: SaveResult, planned: PlannedOutputs) -> str:
    """A trainer's ending: a stopped run ends the job as stopped (resumable from its checkpoint); a finished run's
    outputs are saved, placed and registered. Returns the run's one-line summary."""
    if result.stopped:
        raise JobStopped(f"stopped at step {result.global_step}; resume with resume_from_checkpoint=latest")
    job.progress(96)
    publish_outputs(job, partial(save, result), lora=planned.lora, full_model=planned.full_model)
    return result.summary
