"""Approximate key/value caching for diffusion decoding (Fast-dLLM's prefix and dual caches), for LLaDA and Dream.

A diffusion LM attends bidirectionally, so no exact cache exists: every revealed token changes every key. Block-wise
decoding changes one block at a time, though, and the keys elsewhere drift little while it does. A `CanvasCache`
keeps every layer's keys and values from one full pass over the canvas (the refresh, once per block); later passes
run only a span of the canvas (the block, or the block and everything after it) and attend to fresh keys inside the
span and to the cached ones outside it.
"""

from __future__ import annotations

from collections.abc import Callable

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


# `observe(layer, probabilities)`: the attention probabilities [B, H, m, L] of a pass's watched queries at `layer`
AttentionObserver = Callable[[int, torch.Tensor], None]


class WatchedCanvasCache(CanvasCache):
    """A `CanvasCache` that also shows the attention of some of a pass's queries over the whole canvas, layer by
    layer (Elastic-Cache's drift test), for models that hand the cache their queries with the keys (LLaDA:
    ``update(k, v, layer, {"query": q})``).

    `watch` [B, m]: which of the pass's input positions to watch (None: all), at layers below `watched_layers`;
    `observe(layer, probabilities [B, H, m, L])` gets
    their softmax attention (float32; `key_bias` [B, L] adds the padding mask: 0, or the minimum on padded keys).
    Without `keys` the cache records: the pass runs the whole canvas and may start at any layer (a forward resumed
    from a layer), and `computed[layer]` holds every layer's keys and values. With `keys` it replays a span as
    `CanvasCache` does, and `computed[layer]` holds the span's fresh keys and values.
    """

    def __init__(
        self,
        watch: torch.Tensor | None,
        observe: AttentionObserver,
        watched_layers: int,
        key_bias: torch.Tensor | None = None,
        keys: list[torch.Tensor] | None = None,
        values: list[torch.Tensor] | None = None,
    ) -> None:
        super().__init__(keys, values)
        self.watch, self.observe, self.watched_layers, self.key_bias = watch, observe, watched_layers, key_bias
        self.replaying = keys is not None
        self.computed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def filled(self) -> bool:
        return self.replaying

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, cache_kwargs: dict | None = None
    ) -> tuple[torch.Tensor, ...]:
        self.computed[layer_idx] = (key, value)
        if self.replaying:
            key, value = self._splice(self.keys[layer_idx], key), self._splice(self.values[layer_idx], value)
        query = (cache_kwargs or {}).get("query")
        if query is not None and layer_idx < self.watched_layers:
            self.observe(layer_idx, self._probabilities(query, key))
        return key, value

    def _probabilities(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        watched = query
        if self.watch is not None:
            watched = query.gather(2, self.watch[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[3]))
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        scores = watched.float() @ key.float().transpose(2, 3) * query.shape[-1] ** -0.5
        if self.key_bias is not None:
            scores = scores + self.key_bias[:, None, None, :]
        return scores.softmax(-1)
