"""Logits at selected positions only, without ever building the full [B, L, V] logits tensor.

A diffusion loss needs logits at the masked positions alone, often a small fraction of B x L, while the output head
(hidden -> vocabulary) with V = 126k-152k dominates activation memory. Here the model's own forward runs as usual,
with a forward pre-hook on its output head that hands the head only the selected rows of the hidden states. Going
through the top-level forward keeps every wrapper working: DDP/FSDP/DeepSpeed (they sync gradients and gather
parameters only inside their forward), accelerate's autocast, peft adapters (including ones on the head) and
gradient checkpointing.

The one place that knows model structures is `_HEADS`: per architecture, the head module that receives the
post-final-norm hidden states, and the function that turns hidden states into logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Positions = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class _HeadSpec:
    entry: str  # dotted path of the head module whose input is the backbone's final (normed) hidden states
    apply: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # hidden [..., H] -> logits [..., V]
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)


def _lm_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.lm_head(hidden)


_CAUSAL = _HeadSpec("lm_head", _lm_head, {"use_cache": False})
_HEADS: dict[str, _HeadSpec] = {
    # logits_from_hidden adds LLaDA's optional scale_logits after model.transformer.ff_out
    "LLaDAModelLM": _HeadSpec("model.transformer.ff_out", lambda m, h: m.logits_from_hidden(h)),
    "LLaDAMoEModelLM": _HeadSpec("lm_head", _lm_head),
    "DreamModel": _HeadSpec("lm_head", _lm_head),
    "LLaDA2MoeModelLM": _HeadSpec("lm_head", _lm_head),
    # ModernBERT's head is dense + activation + norm, then the decoder projection
    "ModernBertForMaskedLM": _HeadSpec("head", lambda m, h: m.decoder(m.head(h))),
    "BertForMaskedLM": _HeadSpec("cls", lambda m, h: m.cls(h)),
    "LlamaForCausalLM": _CAUSAL,
    "Qwen2ForCausalLM": _CAUSAL,
    "Qwen3ForCausalLM": _CAUSAL,
    # SDAR (block diffusion on Qwen3): unshifted; a sampler's cached calls pass use_cache=True themselves
    "SDARForCausalLM": _CAUSAL,
    "SDARMoeForCausalLM": _CAUSAL,
}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP/FSDP/DeepSpeed (`.module`), peft (`get_base_model()`) and torch.compile."""
    while True:
        if callable(getattr(model, "get_base_model", None)):
            inner = model.get_base_model()
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            inner = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            inner = model.module
        else:
            return model
        if inner is model:
            return model
        model = inner


def _head_spec(base: nn.Module) -> _HeadSpec:
    for cls in type(base).__mro__:
        spec = _HEADS.get(cls.__name__)
        if spec is not None:
            return spec
    raise TypeError(
        f"logits at selected positions are not supported for {type(base).__name__}; supported architectures: "
        f"{', '.join(_HEADS)}. Add its output head to dlm.forward._HEADS."
    )


def _selection(positions: Positions, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch_idx, pos_idx) from a bool [B, L] matrix (row-major order) or from such a pair."""
    if isinstance(positions, torch.Tensor):
        if positions.dtype != torch.bool or positions.shape != shape:
            raise ValueError(
                f"positions must be a bool tensor of shape {tuple(shape)} or a (batch_idx, pos_idx) pair, got "
                f"{positions.dtype} of shape {tuple(positions.shape)}"
            )
        return positions.nonzero(as_tuple=True)
    batch_idx, pos_idx = positions
    if batch_idx.shape != pos_idx.shape or batch_idx.dim() != 1:
        raise ValueError(
            f"(batch_idx, pos_idx) must be two 1-D tensors of the same length, got shapes "
            f"{tuple(batch_idx.shape)} and {tuple(pos_idx.shape)}"
        )
    return batch_idx, pos_idx


def _run_with_head_input(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    replace: Callable[[torch.Tensor], torch.Tensor],
    **model_kwargs: Any,
) -> torch.Tensor:
    """Run `model`'s own forward, giving its head `replace(hidden)` instead of the hidden states [B, L, H]."""
    base = unwrap_model(model)
    spec = _head_spec(base)
    head = base.get_submodule(spec.entry)

    def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        if hidden.shape[:2] != input_ids.shape:
            raise RuntimeError(
                f"{type(base).__name__}: the output head received hidden states of shape {tuple(hidden.shape)} for "
                f"input ids of shape {tuple(input_ids.shape)}; prompt-learning adapters that add virtual tokens are "
                "not supported with sparse logits"
            )
        return (replace(hidden), *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        kwargs = {"input_ids": input_ids, **spec.forward_kwargs, **model_kwargs}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        output = model(**kwargs)
    finally:
        handle.remove()
    return output.logits if hasattr(output, "logits") else output[0]


def logits_at_positions(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    positions: Positions,
    shift: bool = False,
    **model_kwargs: Any,
) -> torch.Tensor:
    """Logits [N, V] predicting the tokens at the N selected positions, in selection order (row-major for a mask).

    Unshifted (LLaDA, BERT, converted causal LMs): the row for (b, i) is the head applied at position i.
    Shifted (Dream; next-token prediction): token i is predicted from position i - 1, and position 0 from itself,
    which equals shifting full logits right by one while keeping the first column, as the reference Dream trainer
    does. `model` may be wrapped (DDP, FSDP, peft, torch.compile); its forward is called once, with `model_kwargs`
    too (a sampler's `past_key_values`).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    batch_idx, pos_idx = _selection(positions, input_ids.shape)
    source_idx = (pos_idx - 1).clamp_min(0) if shift else pos_idx
    return _run_with_head_input(
        model, input_ids, attention_mask, lambda hidden: hidden[batch_idx, source_idx], **model_kwargs
    )


def hidden_states(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The backbone's hidden states [B, L, H] after its final norm (what the output head reads).

    The model's forward runs with an empty selection for the head. For several position sets on one forward pass
    (evaluation), follow with `logits_at`; training under DDP/FSDP should use `logits_at_positions`, which applies
    the head inside the wrapper's forward.
    """
    captured: list[torch.Tensor] = []

    def keep(hidden: torch.Tensor) -> torch.Tensor:
        captured.append(hidden)
        return hidden[:, :0]

    _run_with_head_input(model, input_ids, attention_mask, keep)
    return captured[0]


def logits_at(model: nn.Module, hidden: torch.Tensor, index: Positions) -> torch.Tensor:
    """Apply `model`'s output head to the rows of `hidden` [B, L, H] selected by `index` (bool [B, L] or a
    (batch_idx, pos_idx) pair): logits [N, V]. Shifting, if wanted, is the caller's index arithmetic."""
    base = unwrap_model(model)
    batch_idx, pos_idx = _selection(index, hidden.shape[:2])
    return _head_spec(base).apply(base, hidden[batch_idx, pos_idx])
