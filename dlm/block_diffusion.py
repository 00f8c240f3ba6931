"""Block diffusion (BD3LM) training: one forward pass over the noisy and the clean sequence, `x_t ⊕ x_0`.

The sequence is cut into blocks of `block_size` tokens (the last one shorter when the length is not a multiple; the
SFT collator pads rows to a multiple with EOS, as dllm's `AppendEOSBlockWrapper` does). The model sees
`x_t ⊕ x_0` (length 2L) with position ids `[0..L-1, 0..L-1]` under the mask of `block_attention_mask`:

- a noisy block attends to itself (bidirectionally) and to the clean blocks before it;
- the clean stream is block-causal (a clean block attends to itself and the clean blocks before it), so each noisy
  block is conditioned on exactly the clean prefix that block-by-block sampling will have in its KV cache.

The loss reads logits of the noisy half only, and only at its masked positions (`dlm.forward.logits_at_positions`).

Times: dllm's BD3LM trainer draws one t per sequence (every block of a row is masked at the same rate); BD3LM's own
code draws one t per block, stratified over the batch's blocks (antithetic sampling). Both are here
(`BLOCK_TIMES`); per sequence is the default, as in the dllm trainer whose losses the project reproduces.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlm.errors import ModelError
from dlm.families.base import Family
from dlm.forward import logits_at_positions, unwrap_model
from dlm.schedules import get_schedule

BLOCK_TIMES = ("sequence", "block")


def block_attention_mask(length: int, block_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [2L, 2L] over `x_t ⊕ x_0` (L = `length`): True where the query (row) may attend to the key (column)."""
    if length < 1 or block_size < 1:
        raise ValueError(f"length and block_size must be positive, got {length} and {block_size}")
    index = torch.arange(2 * length, device=device)
    clean = index >= length
    block = torch.where(clean, index - length, index) // block_size
    same_block = block[:, None] == block[None, :]
    earlier_block = block[:, None] > block[None, :]
    noisy_query, clean_key = ~clean[:, None], clean[None, :]
    noisy_self = noisy_query & ~clean_key & same_block
    noisy_sees_clean_prefix = noisy_query & clean_key & earlier_block
    clean_block_causal = ~noisy_query & clean_key & (same_block | earlier_block)
    return noisy_self | noisy_sees_clean_prefix | clean_block_causal


def model_block_size(family: Family, model: nn.Module) -> int | None:
    """The block size a block-diffusion model was trained with: its config's `block_size`, else the family's
    default; None for a full-sequence family."""
    if family.block_size is None:
        return None
    return getattr(unwrap_model(model).config, "block_size", None) or family.block_size


def model_attention_mask(model: nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    """`allowed` (bool [Q, K] or [B, Q, K]) as the 4-D mask [1 or B, 1, Q, K] that `model`'s attention takes as is:
    bool for sdpa, an additive float mask (0 or the dtype's minimum) for eager attention, which adds the mask to the
    scores (transformers' convention). A model that converts masks itself (`takes_bool_attention_mask`: SDAR,
    whose float masks are 0/1 as in its own code) gets the bool mask under any attention."""
    base = unwrap_model(model)
    implementation = getattr(base.config, "_attn_implementation", None) or "sdpa"
    mask = allowed[None, None] if allowed.dim() == 2 else allowed[:, None]
    if implementation == "sdpa" or getattr(base, "takes_bool_attention_mask", False):
        return mask
    if implementation == "eager":
        dtype = base.dtype if base.dtype.is_floating_point else torch.float32
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    raise ModelError(
        f"block diffusion training needs attention that takes a 4-D mask: load the model with attn_implementation "
        f"sdpa or eager, not {implementation!r}"
    )


def block_logits_at_positions(
    model: nn.Module,
    noisy_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    block_size: int,
    positions: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [N, V] at the N selected (batch_idx, pos_idx) positions of the noisy half, from one forward pass over
    `noisy_ids ⊕ clean_ids` ([B, L] each) under the block diffusion mask. A 2-D `attention_mask` [B, L] (1 = real
    token) also hides padded keys in both halves; the reference trains without one (its pads are attended EOS)."""
    if noisy_ids.shape != clean_ids.shape or noisy_ids.dim() != 2:
        raise ValueError(
            f"noisy and clean ids must both be [batch, length], got {tuple(noisy_ids.shape)} and "
            f"{tuple(clean_ids.shape)}"
        )
    batch, length = clean_ids.shape
    both = torch.cat([noisy_ids, clean_ids], dim=1)
    position_ids = torch.arange(length, device=both.device).repeat(2)[None].expand(batch, -1)
    allowed = block_attention_mask(length, block_size, both.device)
    if attention_mask is not None:
        keys = attention_mask.bool().to(both.device).repeat(1, 2)
        itself = torch.eye(2 * length, dtype=torch.bool, device=both.device)  # no query row left without a key
        allowed = (allowed[None] & keys[:, None, :]) | itself
    mask = model_attention_mask(model, allowed)
    return logits_at_positions(model, both, mask, positions, position_ids=position_ids)


def block_times(
    batch_size: int,
    length: int,
    block_size: int,
    eps: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-block times as BD3LM draws them, repeated over each block's tokens: float32 [B, L].

    The n = B * blocks draws are stratified (antithetic sampling): u_k = (v_k / n + k / n) mod 1 with v ~ U[0, 1),
    then t = eps + (1 - eps) u.
    """
    num_blocks = math.ceil(length / block_size)
    n = batch_size * num_blocks
    draw_device = generator.device if generator is not None else device
    v = torch.rand(n, generator=generator, device=draw_device)
    u = (v / n + torch.arange(n, device=v.device) / n) % 1
    t = (eps + (1.0 - eps) * u).view(batch_size, num_blocks).repeat_interleave(block_size, dim=1)[:, :length]
    return t.to(device if device is not None else t.device)


def mask_with_token_times(
    maskable: torch.Tensor, t: torch.Tensor, schedule: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bool [B, L]: each maskable token masked independently with probability p(t) of its own time (t [B, L])."""
    p = get_schedule(schedule).mask_probability(t.float()).to(maskable.device)
    draw_device = generator.device if generator is not None else maskable.device
    u = torch.rand(maskable.shape, generator=generator, device=draw_device).to(maskable.device)
    return (u < p) & maskable.bool()
