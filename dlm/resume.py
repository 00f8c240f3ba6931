"""Which checkpoint a training run resumes from, and whether its (and a saved model's) files are whole.

Every run records in its checkpoint folder whose checkpoints these are (`owner.json`: the trainer and the base model,
written whole or not at all), so `resume_from_checkpoint=latest` takes only a checkpoint of the same trainer and base
model; a folder without a readable owner.json (copied from elsewhere) is not this run's: it is resumed only when named
explicitly. Before any checkpoint is loaded, its tensor names and shapes (the safetensors headers) are compared with
the model's, and a mismatch is refused naming the first differing tensors. A checkpoint whose
`trainer_state.json` is missing or unreadable was cut off while being written (the Trainer writes that file last):
`latest` skips it with a log line and takes the previous complete one. The files of the checkpoint resumed from are
checked before the Trainer reads them, so a truncated or corrupted file is named instead of failing deep inside.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dlm.errors import DlmError

OWNER_FILE = "owner.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(DlmError):
    """A checkpoint or saved model cannot be used: missing, damaged, or of another trainer or base model."""


def write_owner(checkpoint_dir: Path, *, trainer: str, model_name: str) -> None:
    """Record whose checkpoints `checkpoint_dir` holds, through a temporary file and a rename: a reader (another
    run's `latest`) never sees an empty or half-written owner.json. Its `run` is one more than any run beside it,
    the order in which `latest` takes runs (file times can go back, between machines sharing a disk)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    owner = _owner(checkpoint_dir)
    if owner is None or owner["trainer"] != trainer or owner["model_name"] != model_name or not owner["run"]:
        siblings = (p for p in checkpoint_dir.parent.iterdir() if p.is_dir() and p != checkpoint_dir)
        run = 1 + max((_run_number(p) for p in siblings), default=0)
    else:
        run = owner["run"]  # a resumed run keeps its place
    fd, tmp = tempfile.mkstemp(dir=checkpoint_dir, prefix=f".{OWNER_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"trainer": trainer, "model_name": model_name, "run": run}, handle)
        os.replace(tmp, checkpoint_dir / OWNER_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _owner(folder: Path) -> dict | None:
    """The folder's owner, or None when unknown (no owner.json, an empty or unreadable one, or one without both
    names): unknown is never taken for this run's."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(owner, dict) or not all(isinstance(owner.get(k), str) for k in ("trainer", "model_name")):
        return None
    run = owner.get("run")
    valid_run = isinstance(run, int) and not isinstance(run, bool) and run > 0
    return {"trainer": owner["trainer"], "model_name": owner["model_name"], "run": run if valid_run else 0}


def _run_number(folder: Path) -> int:
    """The folder's place in the order of runs (0: unknown, an owner.json written before runs were numbered)."""
    owner = _owner(folder)
    return owner["run"] if owner else 0


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
    # hidden folders are staging folders (dlm.staging), never a run's
    siblings = [p for p in checkpoint_dir.parent.glob("[!.]*") if p.is_dir() and p != checkpoint_dir]
    # the latest run first: by run number, then (folders of before run numbers) by the time of their checkpoints
    siblings.sort(
        key=lambda p: (_run_number(p), max((c.stat().st_mtime for c in _checkpoints(p)), default=0)), reverse=True
    )
    others = []
    for folder in own + siblings:
        owner = _owner(folder)
        if owner is None or (owner["trainer"], owner["model_name"]) != (trainer, model_name):
            if _checkpoints(folder):
                whose = f"{owner['trainer']} of {owner['model_name']}" if owner else f"unknown: no valid {OWNER_FILE}"
                others.append(f"{folder.name} ({whose})")
            continue
        for checkpoint in _checkpoints(folder):
            if is_complete(checkpoint):
                return checkpoint
            log(f"skipping {checkpoint}: incomplete (no readable trainer_state.json; cut off while being written)")
    if others:
        raise CheckpointError(
            f"resume_from_checkpoint=latest: {checkpoint_dir} and the folders beside it hold only checkpoints of other "
            f"runs: {'; '.join(others)}; none of {trainer} of {model_name}. Give a checkpoint folder of this model"
            f" (a checkpoint copied from elsewhere, without {OWNER_FILE}, is resumed only when named explicitly, "
            "resume_from_checkpoint=<its checkpoint-N folder>, and only if its tensors match this model)"
        )
    return None


def check_checkpoint(checkpoint: Path, *, trainer: str, model_name: str, log: Callable[[str], None]) -> None:
    """Raise CheckpointError naming the file when a checkpoint's files are damaged, or naming both models when it
    was written for another base model or trainer. One of unknown owner (named explicitly) is let through with a
    log line: `check_tensors` then decides whether it fits the model."""
    owner = _owner(checkpoint.parent)
    if owner is None:
        log(
            f"{checkpoint.parent} has no valid {OWNER_FILE} (copied from elsewhere?): resuming {checkpoint} only "
            "because it was named explicitly, and only if its tensors match this model"
        )
    elif (owner["trainer"], owner["model_name"]) != (trainer, model_name):
        raise CheckpointError(
            f"{checkpoint} was written by {owner['trainer']} training {owner['model_name']}; this run is {trainer} "
            f"training {model_name}: resume only a checkpoint of the same trainer and base model"
        )
    refuse_damaged(checkpoint, advice="resume from another checkpoint")


def check_tensors(checkpoint: Path, model: Any) -> None:
    """Raise CheckpointError naming the first differing tensors when the checkpoint's weights (the safetensors
    headers of its adapter, else of its full model) do not have the names and shapes of `model`'s."""
    adapter = (checkpoint / "adapter_model.safetensors").is_file()
    files = [checkpoint / "adapter_model.safetensors"] if adapter else sorted(checkpoint.glob("model*.safetensors"))
    if not files:
        return  # weights in another format (pytorch_model.bin): left to the Trainer, which names them
    saved: dict[str, tuple[int, ...]] = {}
    for file in files:
        saved.update(_header_shapes(file))
    expected = _model_shapes(model, adapter=adapter)
    if expected is None:
        raise CheckpointError(
            f"{checkpoint} holds a LoRA adapter ({files[0].name}); this run trains the full model (lora=false): "
            "resume it with lora=true, or give a checkpoint of a full-model run"
        )
    shapes, tied = expected
    missing = [n for n in shapes if n not in saved and n not in tied]
    unexpected = [n for n in saved if n not in shapes]
    differing = [
        f"{n} {list(saved[n])} in the checkpoint, {list(shapes[n])} in the model"
        for n in shapes
        if n in saved and tuple(saved[n]) != tuple(shapes[n])
    ]
    problems = [
        f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)})"
        for label, names in (
            ("shapes differ", differing),
            ("missing from the checkpoint", missing),
            ("not in the model", unexpected),
        )
        if names
    ]
    if problems:
        raise CheckpointError(
            f"{checkpoint} does not fit this model ({'; '.join(problems)}): it was written for another model or "
            "settings (lora_r, lora_target_modules, lora=...); resume only a checkpoint of this model and settings"
        )


def _header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's header (8-byte length + JSON), without reading weights."""
    with file.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def _model_shapes(model: Any, *, adapter: bool) -> tuple[dict[str, tuple[int, ...]], set[str]] | None:
    """(name -> shape of what a checkpoint of `model` holds, names that may be left out as tied to another);
    None when an adapter is expected of a model without one."""
    if adapter:
        if not hasattr(model, "peft_config"):
            return None
        from peft import get_peft_model_state_dict

        return {n: tuple(t.shape) for n, t in get_peft_model_state_dict(model).items()}, set()
    if hasattr(model, "peft_config"):
        raise CheckpointError(
            "the checkpoint holds a full model (no adapter_model.safetensors); this run trains a LoRA adapter: resume "
            "it with lora=false, or give a checkpoint of a LoRA run"
        )
    state = model.state_dict()
    first_of_storage: dict[int, str] = {}
    tied = set()
    for name, tensor in state.items():  # save_pretrained writes a tied weight once, under one of its names
        pointer = tensor.data_ptr()
        if pointer in first_of_storage:
            tied |= {name, first_of_storage[pointer]}
        first_of_storage.setdefault(pointer, name)
    return {n: tuple(t.shape) for n, t in state.items()}, tied


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
