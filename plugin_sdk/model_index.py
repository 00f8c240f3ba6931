"""The host's model index: models a trainer registered in `<workspace>/models/<folder>/` with an `index.json`
(`LocalBackend.register_model`, the plugin-era host). A plugin resolves a registered model's name to its folder
before it hands the model to the library, which knows nothing of the host's formats."""

from __future__ import annotations

import json
import os
from pathlib import Path

from plugin_sdk.errors import ParameterError


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


def _is_result(folder: Path) -> bool:
    """A folder that may hold a finished model: hidden folders are the library's staging folders (a save still
    under way, or one a killed process left), never a result."""
    return folder.is_dir() and not folder.name.startswith(".")


def registered_model(name: str, workspace_root: str | os.PathLike[str]) -> Path | None:
    """The folder of the model a trainer registered in `<workspace_root>/models/` under `name` (its folder name, or
    the name or model id in its index.json, e.g. `TransformerLab/<name>`), or None when none is. An existing path is
    not a name. Raises `ParameterError` listing the matches when several registered models answer to `name`."""
    models = Path(workspace_root) / "models"
    if os.path.exists(name) or not models.is_dir():
        return None
    matches = sorted(
        folder
        for folder in models.iterdir()
        if _is_result(folder) and (folder / "config.json").is_file() and name in _registered_names(folder)
    )
    if len(matches) > 1:
        raise ParameterError(
            f"model name {name!r} is ambiguous: {len(matches)} models registered in {models} answer to it: "
            f"{', '.join(map(str, matches))}; pass the folder of the one you mean"
        )
    return matches[0] if matches else None


def model_location(name: str, workspace_root: str | os.PathLike[str]) -> str:
    """The folder of the registered model `name`, else `name` unchanged (a path, a hub id, a preset)."""
    found = registered_model(name, workspace_root)
    return name if found is None else str(found)
