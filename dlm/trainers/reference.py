"""The reference policy of a trainer with a KL or preference term: a frozen copy, or the trained model itself with its
LoRA adapters switched off (no second copy in memory)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def has_adapters(model: torch.nn.Module) -> bool:
    """Whether `model` is a peft model whose adapters can be switched off."""
    return callable(getattr(model, "disable_adapter", None))


@contextlib.contextmanager
def reference_model(model: torch.nn.Module, ref_model: torch.nn.Module | None, accelerator: Any) -> Iterator[Any]:
    """The reference in eval mode, under the accelerator's autocast: `ref_model` when there is one, else `model`
    (as prepared, with any wrapper around it) with the adapters of the peft model inside switched off; `model`'s
    train/eval mode is restored after."""
    if ref_model is not None:
        with accelerator.autocast():
            yield ref_model
        return
    peft_model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    try:
        adapters = peft_model.disable_adapter() if has_adapters(peft_model) else contextlib.nullcontext()
        with adapters, accelerator.autocast():
            yield model
    finally:
        model.train(was_training)
