"""LoRA adapters (and QLoRA for 4-/8-bit models) with per-family default target modules."""

from __future__ import annotations

from typing import Any

from dlm.errors import ModelError
from dlm.families import Family, get_family


def _matches(module_name: str, target: str) -> bool:
    return module_name == target or module_name.endswith("." + target)


def _output_head_name(model: Any, family: Family) -> str:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = next((name for name, module in model.named_modules() if head is not None and module is head), None)
    return found or family.output_head


def _parse_targets(target_modules: str | list[str] | tuple[str, ...]) -> list[str] | str:
    if isinstance(target_modules, str):
        if target_modules in ("default", "all-linear"):
            return target_modules
        target_modules = target_modules.split(",")
    targets = [t.strip() for t in target_modules if t.strip()]
    if not targets:
        raise ModelError("target_modules is empty; use 'default', 'all-linear' or a list of module names")
    return targets


def lora_targets(
    model: Any, family: Family | str, target_modules: str | list[str] | tuple[str, ...]
) -> list[str] | str:
    """The module-name suffixes LoRA adapts (or `"all-linear"`), checked against the model's modules.

    `"default"` is the family's list, restricted to the names this architecture has; a list (or a comma-joined
    string) must name modules that exist.
    """
    family = get_family(family)
    targets = _parse_targets(target_modules)
    if targets == "all-linear":
        return targets
    import torch

    names = [name for name, _ in model.named_modules()]
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
    config = LoraConfig(
        r=int(r),
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=targets,
        exclude_modules=exclude,
        task_type=None if family.is_diffusion else "CAUSAL_LM",
    )
    return get_peft_model(model, config)
