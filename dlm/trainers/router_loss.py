"""The router's load-balancing loss of a mixture-of-experts model, in the training objective when its config asks for
it: with `output_router_logits` true, the model's forward returns `aux_loss` and the trainer adds
`router_aux_loss_coef * aux_loss` to each micro-batch's loss, as transformers' MoE models add it to theirs.

The diffusion loss reaches the model through `dlm.forward.logits_at_positions`, which keeps only the logits; the
`aux_loss` of the same forward pass is caught by a forward hook on the unwrapped model (so DDP, peft and gradient
checkpointing wrappers still run their own forward).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dlm.forward import unwrap_model


def router_aux_loss_coef(model: nn.Module) -> float:
    """The coefficient of the router loss in the training objective: the config's `router_aux_loss_coef` when it sets
    `output_router_logits`, else 0 (a dense model, or an MoE model trained without it)."""
    config = getattr(unwrap_model(model), "config", None)
    if not getattr(config, "output_router_logits", False):
        return 0.0
    return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)


@contextmanager
def caught_aux_losses(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The `aux_loss` of every forward pass of `model` inside the block, in order (none when it returns none)."""
    caught: list[torch.Tensor] = []

    def keep(_module: nn.Module, _args: Any, output: Any) -> None:
        aux = getattr(output, "aux_loss", None)
        if isinstance(aux, torch.Tensor):
            caught.append(aux)

    handle = unwrap_model(model).register_forward_hook(keep)
    try:
        yield caught
    finally:
        handle.remove()
