"""LoRA adapters (and QLoRA for 4-/8-bit models) with per-family default target modules."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from dlm.errors import ModelError
from dlm.families import get_family
from dlm.families.base import Family
from dlm.loading import LoadedModel, load_model_and_tokenizer
from dlm.resume import refuse_damaged

DEFAULT_AND_EXPERTS = "default+experts"  # a mixture-of-experts family's defaults and its experts' MLPs


def _matches(module_name: str, target: str) -> bool:
    return module_name == target or module_name.endswith("." + target)


def _output_head_name(model: Any, family: Family) -> str:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = next((name for name, module in model.named_modules() if head is not None and module is head), None)
    return found or family.output_head


def _parse_targets(target_modules: str | list[str] | tuple[str, ...]) -> list[str] | str:
    if isinstance(target_modules, str):
        if target_modules in ("default", DEFAULT_AND_EXPERTS, "all-linear"):
            return target_modules
        target_modules = target_modules.split(",")
    targets = [t.strip() for t in target_modules if t.strip()]
    if not targets:
        raise ModelError(
            f"target_modules is empty; use 'default', '{DEFAULT_AND_EXPERTS}', 'all-linear' or a list of module names"
        )
    return targets


def lora_targets(
    model: Any, family: Family | str, target_modules: str | list[str] | tuple[str, ...]
) -> list[str] | str:
    """The module-name suffixes LoRA adapts (or `"all-linear"`), checked against the model's modules.

    `"default"` is the family's list, restricted to the names this architecture has; `"default+experts"` adds a
    mixture-of-experts family's expert MLPs (`Family.expert_lora_targets`); a list (or a comma-joined string) must
    name modules that exist.
    """
    family = get_family(family)
    targets = _parse_targets(target_modules)
    if targets == "all-linear":
        return targets
    import torch

    names = [name for name, _ in model.named_modules()]
    if targets == DEFAULT_AND_EXPERTS:
        if not family.expert_lora_targets:
            raise ModelError(
                f"target_modules {DEFAULT_AND_EXPERTS!r} is for mixture-of-experts families; {family.name} has no "
                "experts: use 'default'"
            )
        return [t for t in family.expert_lora_targets if any(_matches(n, t) for n in names)]
    if targets == "default":
        chosen = [t for t in family.default_lora_targets if any(_matches(n, t) for n in names)]
        if not chosen:
            raise ModelError(
                f"none of the {family.name} family's default LoRA targets {list(family.default_lora_targets)} "
                f"exist in {type(model).__name__}; pass target_modules explicitly or 'all-linear'"
            )
        return chosen
    missing = [t for t in targets if not any(_matches(n, t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ModelError(
            f"LoRA target_modules {missing} match no module of {type(model).__name__}; its linear layers are "
            f"named: {', '.join(linear)}"
        )
    return targets


def keep_4bit_weights_trainable(model: Any) -> int:
    """Keep every 4-bit linear layer of `model` in the weight layout that training can backpropagate through;
    returns how many layers had to be unpacked.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a `Linear4bit`'s weight for its inference kernel at the
    first forward in eval mode without gradients (any sampling or evaluation pass) and never packs it back. Every
    later training forward then runs that kernel, which has no backward: the gradient through the frozen base
    layer is silently dropped, and a layer with a bias (Dream's q/k/v) fails outright ("a view of a leaf Variable
    that requires grad is being used in an in-place operation"). So a model that is trained never takes that path:
    the repack is switched off, and weights an earlier pass already repacked are unpacked.
    """
    import bitsandbytes as bnb

    unpacked = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
            _unpack_from_cpu_inference_layout(module.weight)
            unpacked += 1
    return unpacked


def _unpack_from_cpu_inference_layout(weight: Any) -> None:
    """bitsandbytes' own inverse of its CPU repack (what it runs before saving), plus the block scales' order: for
    weights without nested statistics it leaves them transposed, which scrambles the dequantized weights. The
    scales stay rounded to bfloat16 as the repack left them."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    weight.data, state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
    if state.absmax.dim() == 2:
        state.absmax = state.absmax.T.reshape(-1).float()
    weight.quant_state = state


def apply_lora(
    model: Any,
    family: Family | str,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.05,
    target_modules: str | list[str] | tuple[str, ...] = "default",
) -> Any:
    """Wrap `model` in a `peft.PeftModel` with LoRA adapters; the output head never gets one.

    A 4-/8-bit model is first prepared for training (`prepare_model_for_kbit_training`: norms and head in float32,
    input gradients enabled), which is QLoRA.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    family = get_family(family)
    if int(r) < 1:
        raise ModelError(f"LoRA rank r must be at least 1, got {r}")
    if not 0 <= float(dropout) < 1:
        raise ModelError(f"LoRA dropout must be in [0, 1), got {dropout}")
    targets = lora_targets(model, family, target_modules)
    head = _output_head_name(model, family)
    exclude = [head] if isinstance(targets, list) and any(_matches(head, t) for t in targets) else None
    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(getattr(model, "is_activation_checkpointing", False)),
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        keep_4bit_weights_trainable(model)
    config = LoraConfig(
        r=int(r),
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=targets,
        exclude_modules=exclude,
        task_type=None if family.is_diffusion else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def adapter_base_model(adapter_dir: str | Path) -> str | None:
    """The base model a saved LoRA adapter names (`base_model_name_or_path` of its adapter_config.json)."""
    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        raise ModelError(f"{adapter_dir} is not a LoRA adapter folder: it has no adapter_config.json")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelError(f"{config} is not valid JSON: {e}") from e
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    return str(base) if base else None


def load_adapter(loaded: LoadedModel, adapter_dir: str | Path) -> LoadedModel:
    """`loaded` with the LoRA adapter saved in `adapter_dir` (by `save_pretrained`, e.g. an SFT run) applied for
    inference; an adapter that does not fit the model is an error naming both."""
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights

    trained_on = adapter_base_model(adapter_dir)
    mismatch = (
        f"the LoRA adapter {adapter_dir} (trained on {trained_on or 'an unnamed base model'}) does not fit "
        f"{loaded.path} ({type(loaded.model).__name__})"
    )
    refuse_damaged(Path(adapter_dir), advice="train or copy the adapter again")
    try:
        model = PeftModel.from_pretrained(loaded.model, str(adapter_dir), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, AttributeError) as e:  # what peft raises for a mismatched model
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{mismatch}: {reason}") from e
    # peft only warns when the adapter's LoRA weights and the model's adapted layers differ; an adapter that does
    # not cover its layers would evaluate a half-adapted model. (Full embedding weights saved beside are peft's.)
    saved = {k for k in load_peft_weights(str(adapter_dir), device="cpu") if "lora_" in k}
    expected = {k for k in get_peft_model_state_dict(model, save_embedding_layers=False) if "lora_" in k}
    if saved != expected:
        missing, unexpected = sorted(expected - saved), sorted(saved - expected)
        raise ModelError(
            f"{mismatch}: {len(missing)} adapted weights of the model are not in the adapter (e.g. "
            f"{', '.join(missing[:2]) or 'none'}) and {len(unexpected)} adapter weights match no layer (e.g. "
            f"{', '.join(unexpected[:2]) or 'none'})"
        )
    model.eval()
    return dataclasses.replace(loaded, model=model)


def load_model_with_adapter(
    name_or_path: str | Path, adapter_dir: str | Path | None = None, **load_kwargs: Any
) -> LoadedModel:
    """`dlm.loading.load_model_and_tokenizer(name_or_path, **load_kwargs)` with the LoRA adapter in `adapter_dir`
    applied. `name_or_path` may itself be an adapter folder: its base model (from adapter_config.json) is loaded."""
    folder = Path(str(name_or_path)).expanduser()
    if adapter_dir is None and (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        base = adapter_base_model(folder)
        if base is None:
            raise ModelError(f"the LoRA adapter {folder} does not name its base model (base_model_name_or_path)")
        name_or_path, adapter_dir = base, folder
    loaded = load_model_and_tokenizer(name_or_path, **load_kwargs)
    return loaded if adapter_dir is None else load_adapter(loaded, adapter_dir)
