"""Load any supported checkpoint (tiny preset, local folder or hub id) with its tokenizer, family and special ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlm.checkpoints import cached_weights_folder, find_checkpoint, weight_shapes
from dlm.errors import ModelError
from dlm.families import FAMILIES, detect_family, get_family
from dlm.families.base import Family
from dlm.families.special_ids import SpecialIds, resolve_special_ids
from dlm.presets.resolve import resolve_model_path
from dlm.resume import refuse_damaged

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    family: Family
    special_ids: SpecialIds
    path: str
    """The local folder, or the hub id, the checkpoint was loaded from."""


def locate_checkpoint(name_or_path: str | Path, workspace: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """What to pass to `from_pretrained` for `name_or_path` (a tiny preset, a local folder or a hub id), and its
    `config.json`. Tiny presets are built on first use; hub ids are read from the local cache when the hub is
    offline."""
    return find_checkpoint(resolve_model_path(str(name_or_path), workspace))


def _use_remote_code(source: str, raw: dict[str, Any], trust_remote_code: bool) -> bool:
    """Whether loading must run the checkpoint's own code; raises when that is needed but not allowed.

    Model types that transformers or dlm implement always load locally, even when `config.json` carries an
    `auto_map` (the official LLaDA and Dream ones point at code that fails on transformers 5).
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = raw.get("model_type")
    if model_type in CONFIG_MAPPING or not raw.get("auto_map"):
        return False
    if not trust_remote_code:
        raise ModelError(
            f"checkpoint {source} (model_type {model_type!r}, architectures {raw.get('architectures')}) is not "
            f"implemented by transformers or dlm; its config.json points at its own code ({raw['auto_map']}). "
            "Running that code is off by default: pass trust_remote_code=True only for a source you trust."
        )
    return True


def _family_for(source: str, raw: dict[str, Any], family: Family | str | None) -> Family:
    detected = None
    try:
        detected = detect_family({**raw, "_name_or_path": source})
    except ModelError:
        if family is None:
            raise
    if family is None:
        return detected
    chosen = get_family(family)
    if detected is not None and detected.name in (chosen.converted_from, *_converted_to(chosen)):
        raise ModelError(
            f"checkpoint {source} belongs to family {detected.name} (is_causal={raw.get('is_causal', True)}), "
            f"not {chosen.name}: "
            + (
                "convert it with dlm.convert.convert_causal_to_diffusion to train it as diffusion"
                if chosen.converted_from is not None
                else f"it was converted to diffusion; load it as {detected.name}"
            )
        )
    return chosen


def _converted_to(family: Family) -> tuple[str, ...]:
    """The families whose checkpoints are converted from `family`'s."""
    return tuple(f.name for f in FAMILIES.values() if f.converted_from == family.name)


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def _quantization_config(family: Family, torch_dtype: Any, four_bit: bool) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    flag = "load_in_4bit" if four_bit else "load_in_8bit"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # any import failure means the library cannot run on this machine
        raise ModelError(
            f"{flag} needs bitsandbytes, which cannot run here ({type(e).__name__}: {e}); load the model "
            "without quantization"
        ) from e
    if isinstance(torch_dtype, torch.dtype):
        compute = torch_dtype
    elif torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        compute = torch.bfloat16
    else:
        compute = torch.float32
    # The output head stays in full precision: quantizing it costs accuracy for little memory.
    skip = [family.output_head]
    if four_bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def _auto_class(family: Family, raw: dict[str, Any], remote: bool) -> Any:
    import transformers

    name = family.auto_class
    if remote and name not in raw["auto_map"]:
        name = next((k for k in raw["auto_map"] if k.startswith("AutoModel")), name)
    return getattr(transformers, name)


# Integer and byte tensors in the weights are packed quantized values, not one number per parameter.
_PACKED_DTYPES = {"U8", "I8", "U4", "I4", "F8_E4M3", "F8_E5M2"}
# How far the model's parameters may exceed the weights' numbers before its config is refused: a head or norm
# initialized on purpose is small next to the model; a config describing another model is not.
_SIZE_SLACK = 1.05


def refuse_oversized_config(source: str, folder: Path, auto_class: Any, config: Any, remote: bool) -> None:
    """ModelError when `config` describes a model with more parameters than the weights of `source` (held in the
    local `folder`: the checkpoint itself, or a hub id's snapshot in the cache) hold, found from the safetensors
    headers and the model built on the meta device, before any memory is allocated (a config declaring a 25M
    vocabulary over small weights allocated 8 GB before the mismatch was noticed)."""
    import torch

    shapes = weight_shapes(folder)
    if (
        not shapes
        or getattr(config, "quantization_config", None)
        or any(d in _PACKED_DTYPES for d, _ in shapes.values())
    ):
        return
    held = sum(_numel(shape) for _, shape in shapes.values())
    try:
        with torch.device("meta"):
            skeleton = auto_class.from_config(config, trust_remote_code=remote)
    except Exception:  # a model that cannot be built on the meta device is checked after loading instead
        return
    needed = sum(p.numel() for p in skeleton.parameters())
    if needed > held * _SIZE_SLACK:
        sizes = ", ".join(
            f"{key}={getattr(config, key)}"
            for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "n_layers")
            if isinstance(getattr(config, key, None), int)
        )
        raise ModelError(
            f"checkpoint {source}: its config.json describes a model of {needed:,} parameters ({sizes}), but its "
            f"weights hold {held:,}; make {folder / 'config.json'} match the weights it was saved with"
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def refuse_unloaded_weights(source: str, info: dict[str, Any], shown: int = 5) -> None:
    """ModelError when loading `source` left parameters missing from the weights or of another shape (they would
    train from random values and the job end COMPLETE); `info` is from_pretrained's `output_loading_info`."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = [f"{name} {tuple(a)} in the weights, {tuple(b)} in the model" for name, a, b in _mismatched(info)]
    if not missing and not mismatched:
        return
    parts = []
    if missing:
        more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
        parts.append(f"{len(missing)} missing from its weights ({', '.join(missing[:shown])}{more})")
    if mismatched:
        more = f" and {len(mismatched) - shown} more" if len(mismatched) > shown else ""
        parts.append(f"{len(mismatched)} of another shape ({'; '.join(mismatched[:shown])}{more})")
    raise ModelError(
        f"checkpoint {source} does not match its config.json: of the model's parameters, {' and '.join(parts)}; "
        "they would start from random values. Use the config.json the weights were saved with"
    )


def _mismatched(info: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    entries = info.get("mismatched_keys") or ()
    return sorted(tuple(e) for e in entries if isinstance(e, tuple | list) and len(e) == 3)


def inference_device_map() -> dict[str, int] | None:
    """`device_map` for inference: the whole model on the current CUDA device, or None (the CPU) without CUDA."""
    import torch

    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else None


def load_model_and_tokenizer(
    name_or_path: str | Path,
    *,
    family: Family | str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    device_map: Any = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    gradient_checkpointing: bool = False,
    workspace: str | Path | None = None,
) -> LoadedModel:
    """Load a checkpoint of any supported family with its tokenizer.

    `name_or_path`: a tiny preset (`tiny-llada`, ...; built in `workspace/models/` on first use), a local folder
    or a hub id (read from the local cache when offline). `family` forces a family instead of detecting it.
    The tokenizer gets the family's chat template when it has none. Remote code runs only with
    `trust_remote_code=True`, and never for model types dlm or transformers implement.
    """
    from transformers import AutoConfig, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    if load_in_4bit and load_in_8bit:
        raise ModelError("load_in_4bit and load_in_8bit are exclusive: choose one")
    source, raw = locate_checkpoint(name_or_path, workspace)
    remote = _use_remote_code(source, raw, trust_remote_code)
    fam = _family_for(source, raw, family)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=remote)
    except (ValueError, KeyError) as e:
        raise ModelError(f"cannot read the config of {source}: {e}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=remote)
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"cannot load the tokenizer of {source}: {e}") from e
    if tokenizer.chat_template is None and fam.chat_template is not None:
        tokenizer.chat_template = fam.chat_template
    special_ids = resolve_special_ids(fam, config, tokenizer)

    kwargs: dict[str, Any] = {"config": config, "dtype": torch_dtype, "trust_remote_code": remote}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit or load_in_8bit:
        kwargs["quantization_config"] = _quantization_config(fam, torch_dtype, load_in_4bit)
    auto_class = _auto_class(fam, raw, remote)
    if Path(source).is_dir():
        folder: Path | None = Path(source)
        refuse_damaged(folder, advice="save or download the model again")
    else:  # a hub id: its weights are checked where the cache already holds them
        folder = cached_weights_folder(source)
    if folder is not None:
        refuse_oversized_config(source, folder, auto_class, config, remote)
    # mismatched shapes are reported in `info` (and refused below, by name) rather than as a bare RuntimeError
    model, info = auto_class.from_pretrained(source, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    refuse_unloaded_weights(source, info)
    if gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise ModelError(f"{type(model).__name__} does not support gradient checkpointing; turn it off")
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return LoadedModel(model=model, tokenizer=tokenizer, family=fam, special_ids=special_ids, path=source)
