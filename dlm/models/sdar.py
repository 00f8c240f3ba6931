"""SDAR (JetLM/SDAR-1.7B-Chat, -4B-Chat, -8B-Chat; SDAR-30B-A3B) for transformers 5: block diffusion on Qwen3.

SDAR is Qwen3 (dense) or Qwen3-MoE (30B-A3B) trained to denoise blocks of ``config.block_size`` tokens: attention
is bidirectional inside a block and causal across blocks, and decoding runs block by block with an exact key/value
cache of the finished blocks (`dlm.samplers.sdar`). The layers, weight names and rotary embeddings are Qwen3's, so
these classes reuse transformers' Qwen3 classes and change only the attention mask:

- a 3-D [B, q, k] or 4-D [B, 1, q, k] ``attention_mask`` is used as given, read as SDAR's own code reads it: nonzero
  (True) = may attend (the official ``generate.py`` passes 0/1 float masks). It covers the cached keys too.
- otherwise (None, or a 2-D [B, past + q] padding mask, 1 = real token) the mask is block-causal by position:
  query i sees key j when ``position_j // block_size <= position_i // block_size``; cached keys (finished blocks)
  are all visible; padded keys are hidden, and every query sees itself so that padded rows stay finite.
  (The official modeling file attends everywhere when given no mask, which SDAR was never trained for.)

``past_key_values`` (a ``DynamicCache``) with ``use_cache`` appends the keys and values of the input, as in Qwen3;
``store_kv=False`` (as the official code passes for a denoising pass) reads the cache without appending to it.
The official configs carry ``attn_implementation: "flex_attention"`` (their training kernel, which takes a flex
block mask) and an ``auto_map`` to remote code written for transformers 4.x; both are dropped when a config is
loaded, so the local classes load the checkpoints with sdpa attention (or the one ``from_pretrained`` is asked for;
sdpa and eager are supported).
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import Qwen3Config, Qwen3MoeConfig
from transformers.cache_utils import Cache
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.qwen3.modeling_qwen3 import Qwen3ForCausalLM, Qwen3Model, Qwen3PreTrainedModel
from transformers.models.qwen3_moe.modeling_qwen3_moe import (
    Qwen3MoeForCausalLM,
    Qwen3MoeModel,
    Qwen3MoePreTrainedModel,
)


def _drop_training_only_keys(kwargs: dict[str, Any]) -> None:
    """The published configs' `auto_map` (remote code for transformers 4.x) and their training kernel
    (`attn_implementation: "flex_attention"`, which takes a flex block mask rather than a tensor mask)."""
    kwargs.pop("auto_map", None)
    if kwargs.get("attn_implementation") == "flex_attention":
        del kwargs["attn_implementation"]


@strict
class SDARConfig(Qwen3Config):
    """Configuration of dense SDAR checkpoints (``model_type: "sdar"``): Qwen3's fields plus the block size the
    model was trained with and its mask token id. Other fields of the official configs (``fuse_cross_entropy``,
    ``ep_size``, ...) are kept as they are."""

    model_type = "sdar"

    block_size: int = 4
    mask_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        _drop_training_only_keys(kwargs)
        if self.block_size < 1:
            raise ValueError(f"SDARConfig: block_size must be at least 1, got {self.block_size}")
        super().__post_init__(**kwargs)


@strict
class SDARMoeConfig(Qwen3MoeConfig):
    """Configuration of SDAR mixture-of-experts checkpoints (``model_type: "sdar_moe"``, SDAR-30B-A3B)."""

    model_type = "sdar_moe"

    block_size: int = 4
    mask_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        _drop_training_only_keys(kwargs)
        if self.block_size < 1:
            raise ValueError(f"SDARMoeConfig: block_size must be at least 1, got {self.block_size}")
        super().__post_init__(**kwargs)


def block_causal_mask(query_blocks: torch.Tensor, key_blocks: torch.Tensor) -> torch.Tensor:
    """Bool [B, q, k]: query i may attend key j when key j's block is not after query i's. Block indices are
    [B, q] and [B, k] (or broadcastable)."""
    return key_blocks.unsqueeze(-2) <= query_blocks.unsqueeze(-1)


def default_attention_mask(
    block_size: int,
    padding_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    past_length: int,
) -> torch.Tensor:
    """Bool [B, 1, q, past + q]: block-causal by `position_ids` [B or 1, q] among the q new tokens, every cached key
    visible, keys where `padding_mask` [B, past + q] is 0 hidden, and every query seeing itself."""
    blocks = torch.div(position_ids, block_size, rounding_mode="floor")
    query_len = blocks.shape[-1]
    new = block_causal_mask(blocks, blocks)
    past = torch.ones(*new.shape[:-1], past_length, dtype=torch.bool, device=new.device)
    allowed = torch.cat([past, new], dim=-1)
    if padding_mask is not None:
        if padding_mask.shape[-1] != past_length + query_len:
            raise ValueError(
                f"a 2-D attention_mask must cover the cached and the new tokens ({past_length} + {query_len}), got "
                f"shape {tuple(padding_mask.shape)}"
            )
        allowed = allowed & padding_mask.bool().unsqueeze(-2)
    itself = torch.arange(query_len, device=new.device)
    allowed[..., itself, past_length + itself] = True
    return allowed.unsqueeze(1)


def _mask_for_implementation(mask: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """sdpa (and kernels that take a bool mask) use the bool mask; eager attention adds the mask to its scores."""
    if implementation != "eager":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class _BlockDiffusionMask:
    """The SDAR attention mask (module docstring) before the Qwen3 forward; the mixin of both base models."""

    config: Any
    embed_tokens: torch.nn.Embedding

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None:
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        query_len = reference.shape[1]
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + query_len, device=reference.device).unsqueeze(0)
        if attention_mask is not None and attention_mask.dim() in (3, 4):
            mask = attention_mask if attention_mask.dim() == 4 else attention_mask.unsqueeze(1)
            mask = mask.bool() if mask.dtype == torch.bool else mask != 0
        else:
            mask = default_attention_mask(self.config.block_size, attention_mask, position_ids, past_length)
        dtype = inputs_embeds.dtype if inputs_embeds is not None else self.embed_tokens.weight.dtype
        mask = _mask_for_implementation(mask, self.config._attn_implementation, dtype)
        return super().forward(  # type: ignore[misc]
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


class _ReadOnlyCache:
    """`store_kv=False`: the forward reads `past_key_values` and the cache is cut back to its length afterwards."""

    takes_bool_attention_mask = True  # a float mask is read as SDAR's 0/1 one (`dlm.block_diffusion` asks)

    def forward(self, *args: Any, store_kv: bool | None = None, **kwargs: Any) -> Any:
        cache = kwargs.get("past_key_values")
        kept = cache.get_seq_length() if store_kv is False and cache is not None else None
        output = super().forward(*args, **kwargs)  # type: ignore[misc]
        if kept is not None and cache.get_seq_length() > kept:
            cache.crop(kept - cache.get_seq_length())  # a negative count removes that many positions
        return output


class SDARModel(_BlockDiffusionMask, Qwen3Model):
    config_class = SDARConfig


class SDARForCausalLM(_ReadOnlyCache, Qwen3ForCausalLM):
    """SDAR with its output head (``lm_head``); weight names as the official checkpoints (``model.layers.N...``)."""

    config_class = SDARConfig

    def __init__(self, config: SDARConfig) -> None:
        Qwen3PreTrainedModel.__init__(self, config)  # Qwen3ForCausalLM's body with the SDAR base model
        self.model = SDARModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class SDARMoeModel(_BlockDiffusionMask, Qwen3MoeModel):
    config_class = SDARMoeConfig


class SDARMoeForCausalLM(_ReadOnlyCache, Qwen3MoeForCausalLM):
    """SDAR-30B-A3B: Qwen3-MoE layers (per-expert checkpoint weights, fused on load as for Qwen3-MoE)."""

    config_class = SDARMoeConfig

    def __init__(self, config: SDARMoeConfig) -> None:
        Qwen3MoePreTrainedModel.__init__(self, config)  # Qwen3MoeForCausalLM's body with the SDAR base model
        self.model = SDARMoeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.router_aux_loss_coef = config.router_aux_loss_coef
        self.num_experts = config.num_experts
        self.num_experts_per_tok = config.num_experts_per_tok
        self.post_init()


# Checkpoints store each expert's projections apart; transformers fuses them on load (and splits them on save) for
# Qwen3-MoE by model_type, so the same conversion is registered for SDAR's.
register_checkpoint_conversion_mapping("sdar_moe", get_checkpoint_conversion_mapping("qwen3_moe"), overwrite=True)
