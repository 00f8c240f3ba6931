"""A model name as `dlm.loading` takes it: a tiny preset or a size preset (built on first use), a model registered in
the workspace by a trainer, or a path or hub id."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dlm.errors import ModelError
from dlm.presets.sizes import ensure_sized_preset, parse_sized_name
from dlm.presets.store import models_dir
from dlm.presets.tiny import PRESETS, ensure_preset


def resolve_model_path(name: str, workspace: str | Path | None = None) -> str:
    """The local folder of a tiny preset (built on first use) or of a model registered in the workspace by a
    trainer (`registered_model`); any other name or path is returned unchanged."""
    if name in PRESETS:
        return str(ensure_preset(name, workspace))
    if parse_sized_name(name) is not None:
        return str(ensure_sized_preset(name, workspace))
    registered = registered_model(name, workspace)
    if registered is not None:
        return str(registered)
    if name.startswith("tiny-") and not os.path.exists(name):
        raise ModelError(
            f"unknown tiny preset {name!r}; choose one of: {', '.join(PRESETS)}, or a model registered in "
            f"{models_dir(workspace)}"
        )
    return name


def _registered_names(folder: Path) -> set[str]:
    """The names a registered model answers to: its folder name, and the name and model id of its index.json."""
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    index = index if isinstance(index, dict) else {}
    data = index.get("json_data") if isinstance(index.get("json_data"), dict) else {}
    names = {folder.name, index.get("name"), index.get("model_id"), data.get("uniqueID")}
    return {n for n in names if isinstance(n, str)}


def registered_model(name: str, workspace: str | Path | None = None) -> Path | None:
    """The folder of the model a trainer registered in `<workspace>/models/` under `name` (its folder name, or the
    name or model id in its index.json, e.g. `TransformerLab/<name>`), or None when none is. An existing path is not
    a name. Raises `ModelError` listing the matches when several registered models answer to `name`."""
    models = models_dir(workspace)
    if os.path.exists(name) or not models.is_dir():
        return None
    matches = sorted(
        folder
        for folder in models.iterdir()
        if folder.is_dir() and (folder / "config.json").is_file() and name in _registered_names(folder)
    )
    if len(matches) > 1:
        raise ModelError(
            f"model name {name!r} is ambiguous: {len(matches)} models registered in {models} answer to it: "
            f"{', '.join(map(str, matches))}; pass the folder of the one you mean"
        )
    return matches[0] if matches else None
