"""Which checkpoint a training run resumes from, and whether its (and a saved model's) files are whole.

Every run records in its checkpoint folder whose checkpoints these are (`owner.json`: the trainer and the base model),
so `resume_from_checkpoint=latest` takes only a checkpoint of the same trainer and base model. A checkpoint whose
`trainer_state.json` is missing or unreadable was cut off while being written (the Trainer writes that file last):
`latest` skips it with a log line and takes the previous complete one. The files of the checkpoint resumed from are
checked before the Trainer reads them, so a truncated or corrupted file is named instead of failing deep inside.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dlm.errors import DlmError

OWNER_FILE = "owner.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(DlmError):
    """A checkpoint or saved model cannot be used: missing, damaged, or of another trainer or base model."""


def write_owner(checkpoint_dir: Path, *, trainer: str, model_name: str) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / OWNER_FILE).write_text(json.dumps({"trainer": trainer, "model_name": model_name}))


def _owner(folder: Path) -> dict | None:
    try:
        return json.loads((folder / OWNER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return True


def _checkpoints(folder: Path) -> list[Path]:
    """`checkpoint-N` folders, newest step first."""
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and _STEP.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP.match(p.name)[1]), reverse=True)


def latest_checkpoint(
    checkpoint_dir: Path, *, trainer: str, model_name: str, log: Callable[[str], None]
) -> Path | None:
    """The newest complete checkpoint of this run's folder, else of the sibling folders of earlier runs of the same
    trainer and base model (a job resumed from the workbench is a new job, with its own, still empty folder)."""
    own = [checkpoint_dir] if checkpoint_dir.is_dir() else []
    siblings = [p for p in checkpoint_dir.parent.glob("*") if p.is_dir() and p != checkpoint_dir]
    siblings.sort(key=lambda p: max((c.stat().st_mtime for c in _checkpoints(p)), default=0), reverse=True)
    others = []
    for folder in own + siblings:
        owner = _owner(folder)
        if owner is not None and owner != {"trainer": trainer, "model_name": model_name}:
            if _checkpoints(folder):
                others.append(f"{folder.name} ({owner['trainer']} of {owner['model_name']})")
            continue
        for checkpoint in _checkpoints(folder):
            if is_complete(checkpoint):
                return checkpoint
            log(f"skipping {checkpoint}: incomplete (no readable trainer_state.json; cut off while being written)")
    if others:
        raise CheckpointError(
            f"resume_from_checkpoint=latest: {checkpoint_dir} and the folders beside it hold only checkpoints of other "
            f"runs: {'; '.join(others)}; none of {trainer} of {model_name}. Give a checkpoint folder of this model"
        )
    return None


def check_checkpoint(checkpoint: Path, *, trainer: str, model_name: str) -> None:
    """Raise CheckpointError naming the file when a checkpoint's files are damaged, or naming both models when it
    was written for another base model or trainer."""
    owner = _owner(checkpoint.parent)
    if owner is not None and owner != {"trainer": trainer, "model_name": model_name}:
        raise CheckpointError(
            f"{checkpoint} was written by {owner['trainer']} training {owner['model_name']}; this run is {trainer} "
            f"training {model_name}: resume only a checkpoint of the same trainer and base model"
        )
    refuse_damaged(checkpoint, advice="resume from another checkpoint")


def refuse_damaged(folder: Path, *, advice: str) -> None:
    """Raise CheckpointError naming the first file of `folder` (weights, optimizer state, JSON) that is truncated or
    corrupted; reads headers and indexes only, not the weights."""
    for file in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        problem = _damage(file)
        if problem:
            raise CheckpointError(f"{file} is damaged ({problem}); {advice}")


def _damage(file: Path) -> str | None:
    """What is wrong with one checkpoint file, or None (files of other kinds are not checked)."""
    suffix = file.suffix
    try:
        if suffix == ".json":
            json.loads(file.read_text())
        elif suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as opened:
                opened.keys()
        elif suffix in (".pt", ".pth", ".bin") and file.open("rb").read(4) == b"PK\x03\x04":
            with zipfile.ZipFile(file) as archive:  # torch.save's format; a cut-off file has no central directory
                archive.namelist()
    except Exception as err:  # noqa: BLE001 - json, zipfile and safetensors each raise their own kind
        return f"{type(err).__name__}: {err}"
    return None


@contextlib.contextmanager
def disk_full_named(checkpoint_dir: Path) -> Iterator[None]:
    """Training under this: when the disk fills, the cut-off checkpoints are removed and the error names the folder."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        removed = [p for p in _checkpoints(checkpoint_dir) if not is_complete(p)] if checkpoint_dir.is_dir() else []
        for checkpoint in removed:
            shutil.rmtree(checkpoint, ignore_errors=True)
        what = f"; removed the partial {', '.join(p.name for p in removed)}" if removed else ""
        raise CheckpointError(
            f"no space left on the device while writing {err.filename or checkpoint_dir}{what}. Free space, or lower "
            "save_total_limit / raise save_steps"
        ) from err
