"""Where a checkpoint is: a local folder or a hub id (read from the local cache when the hub is offline), and its
`config.json`. A leaf: it imports nothing of dlm but its errors, so loading, presets and conversion can all use it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dlm.errors import ModelError


def hub_offline() -> bool:
    """True when the environment forbids reaching the model hub (read now, not when huggingface_hub was imported)."""
    from huggingface_hub import is_offline_mode

    values = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(v in ("1", "true", "yes", "on") for v in values) or is_offline_mode()


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else that is not an existing folder is a missing path."""
    return name.startswith(("/", "~", ".", "\\")) or name.count("/") > 1 or "\\" in name or name.endswith("/")


def _read_config(file: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{file} does not hold a JSON object")
    return data


def find_checkpoint(source: str | Path) -> tuple[str, dict[str, Any]]:
    """What to pass to `from_pretrained` for `source` (a local folder or a hub id), and its `config.json`; hub ids
    are read from the local cache when the hub is offline."""
    from transformers.utils import cached_file

    source = str(source)
    local = Path(source).expanduser()
    if local.is_dir():
        config_file = local / "config.json"
        if config_file.is_file():
            return str(local), _read_config(config_file)
        if (local / "adapter_config.json").is_file():
            raise ModelError(
                f"{local} holds a LoRA adapter, not a model: load the base model named in its adapter_config.json "
                "(base_model_name_or_path) and apply the adapter to it"
            )
        raise ModelError(f"{local} is not a model checkpoint: it has no config.json")
    if local.exists():
        raise ModelError(f"{local} is a file; pass the checkpoint folder that holds config.json")
    if _looks_like_path(source):
        raise ModelError(f"model path {source} does not exist")
    offline = hub_offline()
    try:
        config_file = cached_file(source, "config.json", local_files_only=offline)
    except OSError as e:
        if offline or "connect" in str(e).lower():
            raise ModelError(
                f"{source!r} is not a local folder, and the model hub is unreachable (HF_HUB_OFFLINE=1 / no network); "
                f"download {source} elsewhere and pass its local folder"
            ) from e
        raise ModelError(f"{source!r} is neither a local folder nor a model on the hub: {e}") from e
    if config_file is None:
        raise ModelError(f"{source!r} has no config.json")
    return source, _read_config(config_file)
