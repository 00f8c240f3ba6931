"""Resuming a training run: which checkpoint `resume_from_checkpoint` names, checked, and the training from it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlm.callbacks import Reporter
from dlm.errors import ModelError
from dlm.resume import check_checkpoint, check_tensors, disk_full_named, latest_checkpoint, write_owner
from dlm.trainers.arguments import schedule_note
from dlm.trainers.config import TrainerConfig


def resume_path(config: TrainerConfig, checkpoint_dir: Path, log: Callable[[str], None]) -> str | None:
    """The checkpoint to resume from (None: start afresh), checked whole and of this trainer and base model; records
    in `checkpoint_dir` whose checkpoints it will hold."""
    owner = {"trainer": type(config).__name__, "model_name": config.model_name}
    wanted = config.resume_from_checkpoint.strip()
    found = None
    if wanted == "latest":
        found = latest_checkpoint(checkpoint_dir, **owner, log=log)
        if found is None:
            raise ModelError(
                f"resume_from_checkpoint=latest, but neither {checkpoint_dir} nor the folders beside it hold a "
                "checkpoint yet"
            )
    elif wanted:
        found = Path(wanted)
        if not (found / "trainer_state.json").is_file():
            raise ModelError(f"resume_from_checkpoint={wanted!r} is not a checkpoint folder (no trainer_state.json)")
    if found is not None:
        check_checkpoint(found, **owner, log=log)
    write_owner(checkpoint_dir, **owner)
    return str(found) if found is not None else None


def train_or_resume(trainer: Any, config: TrainerConfig, reporter: Reporter) -> None:
    """`trainer.train()`, from the checkpoint `resume_from_checkpoint` names, if any; a full disk is named. Says
    first how the learning-rate schedule set differs from the one used, if it does."""
    checkpoint_dir = Path(config.output_dir)
    note = schedule_note(config)
    if note:
        reporter.log(note)
    resume = resume_path(config, checkpoint_dir, reporter.log)
    if resume:
        check_tensors(Path(resume), trainer.model)
        reporter.log(f"resuming from {resume}")
    with disk_full_named(checkpoint_dir):
        trainer.train(resume_from_checkpoint=resume)
