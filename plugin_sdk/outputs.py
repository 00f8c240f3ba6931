"""A trained model's outputs handed to the workbench: the LoRA adapter in the job's adaptor folder, the full model
in the workspace's models, registered. The trainer does the saving (`save`, e.g. `dlm.trainers.outputs.save_outputs`
bound to its result); this module decides where, logs what was written and registers the model."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from plugin_sdk.errors import PluginError
from plugin_sdk.job import Job
from plugin_sdk.safe_files import check_no_links

# save(adaptor_dir=..., full_model_dir=...) -> the folders written; a None folder is not written.
SaveOutputs = Callable[..., list[Path]]


class OutputTaken(PluginError):
    """The folder a result would go to holds an earlier job's result."""


def output_dirs(job: Job, *, lora: bool, full_model: bool) -> list[Path]:
    """Where the job's results go: the adaptor folder (with LoRA) and the full model's folder (when asked)."""
    params = job.params
    dirs = [job.adaptor_dir] if lora else []
    if full_model:
        dirs.append(job.model_dir(f"{params.model_name.split('/')[-1]}_{params.adaptor_name}"))
    return dirs


def check_outputs_free(job: Job, *, lora: bool, full_model: bool) -> None:
    """Refuse, before training, to write a result where an earlier job's result is: no job replaces another's."""
    for path in output_dirs(job, lora=lora, full_model=full_model):
        check_no_links(path, job.workspace.root)  # the library saves there: never through a link
        _check_can_make(path)
        if path.exists() and any(path.iterdir()):
            raise OutputTaken(
                f"{path} already holds a result of an earlier job; choose another adaptor_name (or delete that "
                "folder to replace it)"
            )


def _check_can_make(path: Path) -> None:
    """The folders above `path` are folders (or can be made) and the nearest one can be written in: found now,
    not when the trained result is saved."""
    for folder in path.parents:
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise PluginError(f"{folder} is a file, not a folder: results go inside it; move the file away")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PluginError(f"cannot write in {folder} (no permission): results go inside it")
            return


def publish_outputs(job: Job, save: SaveOutputs, *, lora: bool, full_model: bool) -> list[Path]:
    """Save on the main process: the adapter in the job's adaptor folder (with LoRA), the full (merged) model in the
    workspace's models as `<model>_<adaptor_name>` (when asked, or without LoRA), registered under the class its
    saved config names (the trained object may be a LoRA wrapper, which is no architecture)."""
    if not job.is_main_process:
        return []
    job.report_status("saving outputs")
    dirs = output_dirs(job, lora=lora, full_model=full_model)
    for path in dirs:
        check_no_links(path, job.workspace.root)  # again: a link may have been planted while it trained
    full_dir = dirs[-1] if full_model else None
    written = save(adaptor_dir=dirs[0] if lora else None, full_model_dir=full_dir)
    for path in written:
        job.log(f"saved {path}")
    if full_dir is not None:
        full_dir = written[-1]  # a job that finished meanwhile may have taken the name: then it got a numbered one
        architecture = json.loads((full_dir / "config.json").read_text())["architectures"][0]
        job.register_model(full_dir, architecture=architecture)
    return written
