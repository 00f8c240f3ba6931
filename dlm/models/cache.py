"""Approximate key/value caching for diffusion decoding (Fast-dLLM's prefix and dual caches), for LLaDA and Dream.

A diffusion LM attends bidirectionally, so no exact cache exists: every revealed token changes every key. Block-wise
decoding changes one block at a time, though, and the keys elsewhere drift little while it does. A `CanvasCache`
keeps every layer's keys and values from one full pass over the canvas (the refresh, once per block); later passes
run only a span of the canvas (the block, or the block and everything after it) and attend to fresh keys inside the
span and to the cached ones outside it.
"""

from __future__ import annotations

import torch


class CanvasCache:
    """Per-layer keys and values [B, H_kv, L, D] (after RoPE) of a whole canvas of length L.

    Passed empty to a model's forward (`past_key_values=`), it records every layer's keys and values. Passed filled,
    the forward's input is the span [span_start, span_start + n) of the same canvas: positions (RoPE) start at
    `span_start`, a 2-D attention mask still covers all L keys, and each layer attends to its fresh keys/values in the
    span and the cached ones elsewhere. Replays leave the cache as recorded. `span_start` is one int for the whole
    batch, or a LongTensor [B] of each row's own start (rows decoding different blocks).
    """

    def __init__(self, keys: list[torch.Tensor] | None = None, values: list[torch.Tensor] | None = None) -> None:
        self.keys: list[torch.Tensor] = keys or []
        self.values: list[torch.Tensor] = values or []
        self.span_start: int | torch.Tensor = 0

    @property
    def filled(self) -> bool:
        return bool(self.keys)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_: object) -> tuple[torch.Tensor, ...]:
        """The keys and values layer `layer_idx` attends to (the `transformers` Cache interface)."""
        if layer_idx == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
            return key, value
        return self._splice(self.keys[layer_idx], key), self._splice(self.values[layer_idx], value)

    def _splice(self, cached: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        if isinstance(self.span_start, torch.Tensor):
            columns = self.positions(fresh.shape[2], fresh.device)[:, None, :, None].expand_as(fresh)
            return cached.scatter(2, columns, fresh)
        end = self.span_start + fresh.shape[2]
        return torch.cat([cached[:, :, : self.span_start], fresh, cached[:, :, end:]], dim=2)

    def positions(self, span_length: int, device: torch.device) -> torch.Tensor:
        """Positions of the span's tokens on the canvas: [n], or [B, n] with per-row starts."""
        steps = torch.arange(span_length, device=device)
        if isinstance(self.span_start, torch.Tensor):
            return self.span_start.to(device)[:, None] + steps
        return self.span_start + steps

    def attention_bias(
        self, attention_mask: torch.Tensor | None, batch: int, span_length: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """Additive mask [B, 1, n, L] for a replay: 0 on real keys, the dtype's minimum on padded ones (always
        materialised, so no attention backend falls back to a causal default)."""
        device = self.keys[0].device
        if attention_mask is None:
            return torch.zeros(batch, 1, span_length, self.length, dtype=dtype, device=device)
        if attention_mask.shape != (batch, self.length):
            raise ValueError(
                f"attention_mask of a cached pass must cover the whole canvas [batch, {self.length}], got shape "
                f"{tuple(attention_mask.shape)}"
            )
        hidden = ~attention_mask.bool()[:, None, None, :].expand(batch, 1, span_length, self.length)
        return torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill(hidden, torch.finfo(dtype).min)
