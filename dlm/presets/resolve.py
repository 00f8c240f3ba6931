"""A model name as `dlm.loading` takes it: a tiny preset or a size preset (built on first use), or a path or hub id."""

from __future__ import annotations

import os
from pathlib import Path

from dlm.errors import ModelError
from dlm.presets.sizes import ensure_sized_preset, parse_sized_name
from dlm.presets.store import models_dir
from dlm.presets.tiny import PRESETS, ensure_preset


def resolve_model_path(name: str, workspace: str | Path | None = None) -> str:
    """The local folder of a tiny or size preset (built on first use); any other name or path is returned unchanged
    (a model registered by a trainer is resolved to its folder by the plugin, `plugin_sdk.model_index`)."""
    if name in PRESETS:
        return str(ensure_preset(name, workspace))
    if parse_sized_name(name) is not None:
        return str(ensure_sized_preset(name, workspace))
    if name.startswith("tiny-") and not os.path.exists(name):
        raise ModelError(
            f"unknown tiny preset {name!r}; choose one of: {', '.join(PRESETS)}, or a model registered in "
            f"{models_dir(workspace)}"
        )
    return name
