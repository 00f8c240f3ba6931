"""A trained model's outputs handed to the workbench: the LoRA adapter and/or the full model saved, the full model
registered. Shared by the trainers (SFT, DPO); `job` is the plugin's job (`plugin_sdk.Job`, duck-typed here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlm.sft import save_outputs


def publish_outputs(result: Any, job: Any, *, lora: bool, full_model: bool) -> list[Path]:
    """Save on the main process: the adapter in the job's adaptor folder (with LoRA), the full (merged) model in the
    workspace's models as `<model>_<adaptor_name>` (when asked, or without LoRA), registered under the class its
    saved config names (the trained object may be a LoRA wrapper, which is no architecture)."""
    if not job.is_main_process:
        return []
    params = job.params
    full_dir = job.model_dir(f"{params.model_name.split('/')[-1]}_{params.adaptor_name}") if full_model else None
    written = save_outputs(result, adaptor_dir=job.adaptor_dir if lora else None, full_model_dir=full_dir)
    for path in written:
        job.log(f"saved {path}")
    if full_dir is not None:
        full_dir = written[-1]  # a numbered folder when the name was taken (see dlm.sft.save_outputs)
        architecture = json.loads((full_dir / "config.json").read_text())["architectures"][0]
        job.register_model(full_dir, architecture=architecture)
    return written
