"""The exact key/value cache of a block-causal model (BD3LM-style block diffusion): the committed blocks' keys and
values, computed once; a block of masks runs against them without changing them."""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache

from dlm.block_diffusion import model_attention_mask
from dlm.forward import logits_at_positions, unwrap_model


def block_causal_mask(key_valid: torch.Tensor, query_valid: torch.Tensor, block_length: int) -> torch.Tensor:
    """Boolean [B, 1, Q, K]: query q (the last Q of the K columns) sees key k when both are real tokens and k's block
    (column // `block_length`) is not after q's."""
    keys, queries = key_valid.shape[1], query_valid.shape[1]
    key_block = torch.arange(keys, device=key_valid.device) // block_length
    query_block = key_block[keys - queries :]
    allowed = key_block.view(1, 1, keys) <= query_block.view(1, queries, 1)
    return (allowed & key_valid.unsqueeze(1) & query_valid.unsqueeze(2)).unsqueeze(1)


def cache_rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding rows `rows` of `cache` (their keys and values copied; each layer's kind and state kept),
    for a pass over some of the rows that must leave `cache` as it is."""
    selected = copy.copy(cache)
    selected.layers = []
    for layer in cache.layers:
        part = copy.copy(layer)
        if layer.is_initialized:
            part.keys, part.values = layer.keys[rows], layer.values[rows]
        selected.layers.append(part)
    return selected


def extend_rows(cache: DynamicCache, part: DynamicCache, rows: torch.Tensor, batch: int, length: int) -> None:
    """Append to `cache` (of `batch` rows) the last `length` columns of `part`, a cache that a pass over the rows
    `rows` alone extended; the other rows get zeros there, columns that none of their queries may see."""
    for index, layer in enumerate(part.layers):
        columns = []
        for tensor in (layer.keys, layer.values):
            full = tensor.new_zeros(batch, *tensor.shape[1:-2], length, tensor.shape[-1])
            full[rows] = tensor[..., -length:, :]
            columns.append(full)
        cache.update(*columns, index)


class BlockCausalCache:
    """The exact key/value cache of a block-causal model: every layer's keys and values of the committed columns
    (the padded prompt, then the finished blocks), which real tokens they hold, and how many real tokens came before
    (the next RoPE position). The committed length is always a whole number of blocks.

    `peek` runs a block against the cache (all its rows, or some) and leaves the cache unchanged; `commit` runs a
    block and keeps its keys and values; `keep_rows` drops the other rows for good (rows that left the batch).
    `forward_passes` counts the model calls."""

    def __init__(self, model: torch.nn.Module, block_length: int, batch: int, device: torch.device) -> None:
        self.model, self.block_length = model, block_length
        self.cache = DynamicCache(config=unwrap_model(model).config)
        self.valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)
        self.forward_passes = 0

    def peek(
        self,
        ids: torch.Tensor,
        valid: torch.Tensor,
        where: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [R, n, V] of a block (`valid`: its prompt and answer positions) that follows the cache's rows `rows`
        (indices; None: all, R = B); only at the positions `where` (bool [R, n]) when given, [N, V] in row-major
        order: the output head runs there alone."""
        if rows is not None and len(rows) == self.valid.shape[0]:
            rows = None  # every row: run against the cache itself
        logits = self._forward(ids, valid, logits_to_keep=0, where=where, rows=rows)[0]
        if rows is None:
            self.cache.crop(-ids.shape[1])
        return logits

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the rows `rows` (indices, in their new order) of the cache."""
        self.cache.batch_select_indices(rows)
        self.valid, self.seen = self.valid[rows], self.seen[rows]

    def commit(self, ids: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Append `ids` [B, n] (`valid`: real tokens) to the cache; return the logits [B, V] at its last column. With
        `rows` (indices), only those rows run: the others must hold no real token in these columns, which then
        hold zeros, and get zero logits."""
        if rows is None or len(rows) == self.valid.shape[0]:
            logits = self._forward(ids, valid, logits_to_keep=1)[0][:, -1]
        else:
            part, batch = self._forward(ids[rows], valid[rows], logits_to_keep=1, rows=rows)
            extend_rows(self.cache, batch, rows, len(valid), ids.shape[1])
            logits = part.new_zeros(len(valid), part.shape[-1])
            logits[rows] = part[:, -1]
        self.valid = torch.cat([self.valid, valid], dim=1)
        self.seen = self.seen + valid.sum(-1)
        return logits

    def _forward(
        self,
        ids: torch.Tensor,
        valid: torch.Tensor,
        logits_to_keep: int,
        where: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DynamicCache]:
        """The pass's logits (at least float32) and the cache it extended: the cache itself, or with `rows` a copy of
        those rows' cache."""
        cache, past, seen = self.cache, self.valid, self.seen
        if rows is not None:
            cache, past, seen = cache_rows(cache, rows), past[rows], seen[rows]
        allowed = block_causal_mask(torch.cat([past, valid], dim=1), valid, self.block_length)
        positions = torch.where(valid, seen.unsqueeze(1) + valid.long().cumsum(-1) - 1, 0)
        inputs = {"position_ids": positions, "past_key_values": cache, "use_cache": True}
        mask = model_attention_mask(self.model, allowed.squeeze(1))
        if where is not None:
            logits = logits_at_positions(self.model, ids, mask, where, **inputs)
        else:
            logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep, **inputs).logits
        self.forward_passes += 1
        return logits.to(torch.promote_types(logits.dtype, torch.float32)), cache
