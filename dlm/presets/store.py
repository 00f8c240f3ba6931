"""Where presets live and how they are written: `<workspace>/models/<name>/`, built in a temporary folder and renamed
into place with a marker file, so a half-written preset is never taken for a finished one."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlm.staging import staging_folder

PRESET_VERSION = 1
MARKER_FILE = "dlm_preset.json"


def default_workspace() -> Path:
    """`$DLM_WORKSPACE`, else `./workspace`."""
    return Path(os.environ.get("DLM_WORKSPACE") or "workspace")


def models_dir(workspace: str | Path | None) -> Path:
    return Path(workspace if workspace is not None else default_workspace()) / "models"


def _marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def build_in_place(final: Path, marker: dict[str, Any], build: Callable[[Path], None]) -> bool:
    """Build into `final` unless it already holds a model with this `marker`; True when it built.

    The model is written to a temporary folder and renamed into place, so a half-written preset (a crash, or
    another process building the same one) is never taken for a finished one."""
    if _marker(final) == marker:
        return False
    tmp = staging_folder(final)
    try:
        build(tmp)
        (tmp / MARKER_FILE).write_text(json.dumps(marker))
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished preset is an ordinary folder
        if final.exists() and _marker(final) != marker:
            stale = staging_folder(final)
            os.replace(final, stale / final.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if _marker(final) != marker:  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True
