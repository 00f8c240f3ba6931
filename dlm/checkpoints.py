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


# A safetensors header is JSON of a few hundred bytes per tensor; a larger one is not a weights file.
_MAX_HEADER_BYTES = 100 * 2**20


def weight_shapes(folder: str | Path) -> dict[str, tuple[str, tuple[int, ...]]] | None:
    """`{tensor name: (dtype, shape)}` of a local checkpoint's safetensors weights, read from their headers only
    (a few KiB, whatever the weights' size), or None where the folder holds no safetensors weights."""
    folder = Path(folder)
    files = _weight_files(folder)
    if files is None:
        return None
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in files:
        path = folder / name
        try:
            with path.open("rb") as file:
                size = int.from_bytes(file.read(8), "little")
                if not 0 < size <= _MAX_HEADER_BYTES:
                    raise ModelError(f"{path} is not a safetensors file (header of {size} bytes)")
                header = json.loads(file.read(size))
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read the weights {path}: {e}") from e
        for tensor, entry in header.items():
            if tensor != "__metadata__" and isinstance(entry, dict):
                shapes[tensor] = (str(entry.get("dtype")), tuple(int(n) for n in entry.get("shape", ())))
    return shapes


def _weight_files(folder: Path) -> list[str] | None:
    """The names of `folder`'s safetensors weight files (from its shard index when it has one), or None."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(_read_config(index).get("weight_map", {}).values()))
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    return None


def cached_weights_folder(hub_id: str) -> Path | None:
    """The snapshot folder of `hub_id` (revision `main`, as loading takes it) in the local Hugging Face cache
    (HF_HUB_CACHE) when its config.json and every safetensors weight file are cached; None otherwise (weights still
    to download cannot be read before from_pretrained fetches them)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config_file = try_to_load_from_cache(hub_id, "config.json")
    except ValueError:  # not a hub id (huggingface_hub's validation error is a ValueError)
        return None
    if not isinstance(config_file, str):
        return None
    folder = Path(config_file).parent
    files = _weight_files(folder)
    return folder if files and all((folder / name).is_file() for name in files) else None
