"""`TrainResult`, a finished (or stopped) training run, and saving it: the LoRA adapter and/or the full model, each
written whole or not at all."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlm.loading import LoadedModel
from dlm.staging import staging_folder


@dataclass
class TrainResult:
    """A finished (or stopped) training run: the trained model (a PeftModel with LoRA) and what `save_outputs` and
    the plugin's summary need."""

    model: Any
    tokenizer: Any
    loaded: LoadedModel
    global_step: int
    stopped: bool
    summary: str
    checkpoint_dir: str


def save_outputs(result: TrainResult, *, adaptor_dir: Path | None, full_model_dir: Path | None) -> list[Path]:
    """Save the LoRA adapter (loadable with `PeftModel.from_pretrained` on the base) and/or the full model
    (LoRA merged) as a normal checkpoint. Written to a temporary folder and renamed, so nothing half-written is
    ever taken for a result; a folder that holds an earlier result is kept and the new one goes to `<name>-2`, ...
    Returns the folders written."""
    written = []
    model = result.model
    if adaptor_dir is not None and hasattr(model, "peft_config"):
        written.append(_save_atomically(model, result.tokenizer, adaptor_dir))
    if full_model_dir is not None:
        full = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        written.append(_save_atomically(full, result.tokenizer, full_model_dir))
    return written


def _save_atomically(model: Any, tokenizer: Any, destination: Path) -> Path:
    destination = Path(destination)
    staging = staging_folder(destination)  # removes what a killed save left beside it
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        return _claim(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _claim(staging: Path, destination: Path) -> Path:
    """Rename `staging` to `destination`, or, when an earlier job's result is there, to the first free
    `destination-2`, `-3`, ... (atomic, so jobs finishing together each get their own): no result replaces another."""
    candidates = [destination, *(destination.with_name(f"{destination.name}-{n}") for n in range(2, 1000))]
    for candidate in candidates:
        try:
            staging.rename(candidate)  # atomic; fails when the candidate is a non-empty folder
            return candidate
        except OSError:
            if not candidate.exists():
                raise
    raise FileExistsError(f"{destination} and its numbered variants are all taken")
