"""Adaptive, layer-aware cache refresh in the style of Elastic-Cache (Nguyen-Tri et al., 2025, "Attention Is All You
Need for KV Cache in Diffusion LLMs"), for LLaDA models: the sampler's `cache="elastic"`.

Fast-dLLM's dual cache recomputes the whole canvas at the start of every block, whether or not anything drifted.
Here a row runs the whole canvas once, at its first pass; every later pass runs only a window of three blocks (the
one before the block being decoded, whose last tokens were just revealed, the block, and the one after it) against
the cached keys and values of the rest of the canvas, and writes the window's fresh keys, values and layer inputs
into the cache. Whether the rest of the cache has gone stale is read from attention, layer by layer: each pass
watches the queries of the block and the next one, finds the cached key they attend to most (the most-attended
token, whose keys drift least) and keeps their attention on it, a vector over heads and queries; the row's next
pass compares it, by cosine similarity, with the attention the same queries pay the same key now, over the
queries that were masks both times (their tokens did not change, so any change comes from the context).
Where the cosine similarity first falls below `similarity`, at layer l,
the outputs of layer l over the canvas have gone stale, and with them the keys of every later layer: layers l and
after rerun over the whole canvas in the same step, from the layer-l inputs the cache keeps (fresh in the window,
cached elsewhere: outputs of layers that did not drift), which refreshes the keys from layer l + 1 on; layers up to
l keep theirs. Shallow layers drift least, so refreshes are partial. The last layer is not watched: no key depends
on its outputs.

Kept from the paper: the drift test (most-attended token, cosine similarity against `similarity`, the paper's γ)
and the depth-aware refresh (keys from the layer after the drifting one). Adapted to block decoding: the window is
the block before, the block and the block after rather than a sliding run of masks, the watched queries are those
still masked at both passes, and the paper's off-window masks are simply cached. Approximate like every cache;
`similarity` 0 never refreshes.
"""

from __future__ import annotations

import torch

from dlm.forward import unwrap_model
from dlm.models.cache import WatchedCanvasCache
from dlm.samplers.common import SamplingError

REFRESH_SIMILARITY = 0.9  # γ: below it, a layer's attention has drifted


def check_elastic(cache: str, similarity: float, suffix_window: int | None, growing: bool) -> None:
    """`refresh_similarity` is a cosine similarity in [0, 1]; the elastic cache keeps the whole canvas in view (no
    suffix window, no growing canvas)."""
    if not 0 <= similarity <= 1:
        raise SamplingError(
            f"refresh_similarity must be in [0, 1] (a cosine similarity of attention; 0 never refreshes), got "
            f"{similarity}"
        )
    if cache == "elastic" and (suffix_window is not None or growing):
        setting = "suffix_window" if suffix_window is not None else "grow_canvas"
        raise SamplingError(
            f"cache='elastic' keeps the whole canvas in view and cannot be combined with {setting}; use cache='dual' "
            f"with {setting}, or unset {setting}"
        )


def watched_attention(probabilities: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The attention [R, H, m] that watched queries (`probabilities` [R, H, m, L]) pay to key `key[r]` of each row."""
    index = key[:, None, None, None].expand(-1, *probabilities.shape[1:3], 1)
    return probabilities.gather(3, index).squeeze(3)


class ElasticLogits:
    """Logits [rows, n, V] (at least float32) of each selected row's block, as `BlockLogits` gives them, with the
    cache refreshed adaptively (see the module). Keeps, per canvas row: every layer's keys, values and inputs; the
    watched queries of the row's last pass (the block and the next, `watch_length` positions from `watched`, and
    which were masks), and per layer the most-attended key and the watched queries' attention on it.
    `refreshes` [B] counts each row's refreshes (each one more forward pass for `RowRun`'s count)."""

    mode = "elastic"

    def __init__(
        self,
        model: torch.nn.Module,
        attention_mask: torch.Tensor | None,
        block_length: int,
        similarity: float,
        mask_id: int,
    ) -> None:
        self.base = unwrap_model(model)
        self.layers = self.base.config.n_layers
        # the last layer's drift is not watched: refreshing it would change no key a later pass reads
        self.watched_layers = self.layers - 1
        self.attention_mask, self.block_length, self.similarity = attention_mask, block_length, similarity
        # the padding as the watched attention adds it: 0 on real keys, the minimum on padded ones
        self.key_bias = None
        if attention_mask is not None:
            padded = ~attention_mask.bool()
            self.key_bias = torch.zeros(padded.shape, device=padded.device).masked_fill(padded, torch.finfo().min)
        self.mask_id = mask_id
        self.watch_length = 2 * block_length
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []
        self.ready: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, refresh: bool) -> torch.Tensor:
        """`refresh` is ignored: a row's first pass runs the whole canvas, later ones refresh as attention says."""
        if self.ready is None:
            self._allocate(x)
        first = ~self.ready[rows]
        parts = []
        if bool(first.any()):
            parts.append((first, self._full(x, rows[first], starts[first], 0)))
        if not bool(first.all()):
            parts.append((~first, self._window(x, rows[~first], starts[~first])))
        logits = parts[0][1].new_empty(len(rows), *parts[0][1].shape[1:])
        for picked, part in parts:
            logits[picked] = part
        self.ready[rows] = True
        return logits

    def _allocate(self, x: torch.Tensor) -> None:
        batch, device = x.shape[0], x.device
        self.ready = torch.zeros(batch, dtype=torch.bool, device=device)
        self.watched = torch.zeros(batch, dtype=torch.long, device=device)
        self.watched_masks = torch.zeros(batch, self.watch_length, dtype=torch.bool, device=device)
        self.anchor = torch.zeros(batch, self.watched_layers, dtype=torch.long, device=device)
        heads = self.base.config.n_heads
        self.signature = torch.zeros(batch, self.watched_layers, heads, self.watch_length, device=device)
        self.refreshes = torch.zeros(batch, dtype=torch.long, device=device)

    def _mask(self, rows: torch.Tensor) -> torch.Tensor | None:
        return None if self.attention_mask is None else self.attention_mask[rows]

    def _key_bias(self, rows: torch.Tensor) -> torch.Tensor | None:
        return None if self.key_bias is None else self.key_bias[rows]

    def _columns(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        return starts[:, None] + torch.arange(length, device=starts.device)

    def _watch(self, x: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """The canvas columns [R, watch_length] of the queries to watch this pass (the block and the next, the last
        column repeated past the canvas' end); records them and which are masks."""
        columns = self._columns(starts, self.watch_length)
        inside = columns < x.shape[1]
        columns = columns.clamp(max=x.shape[1] - 1)
        self.watched[rows] = starts
        self.watched_masks[rows] = (x[rows].gather(1, columns) == self.mask_id) & inside
        return columns

    def _full(self, x: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, first_layer: int) -> torch.Tensor:
        """The whole canvas from `first_layer` on (the row's first pass, or a refresh resuming from the cached
        inputs of that layer); records those layers' keys, values, inputs and watched attention."""
        watch = self._watch(x, rows, starts)
        anchors, signatures = {}, {}

        def observe(layer: int, probabilities: torch.Tensor) -> None:
            anchors[layer], signatures[layer] = self._most_attended(probabilities, starts)

        cache = WatchedCanvasCache(watch, observe, self.watched_layers, self._key_bias(rows))
        inputs = {"input_ids": x[rows]} if first_layer == 0 else {"inputs_embeds": self.inputs[first_layer][rows]}
        output = self.base.model(
            **inputs,
            attention_mask=self._mask(rows),
            past_key_values=cache,
            output_hidden_states=True,
            first_layer=first_layer,
        )
        for layer in range(first_layer, self.layers):
            self._store(layer, rows, None, *cache.computed[layer], output.hidden_states[layer - first_layer])
        for layer in range(first_layer, self.watched_layers):
            self.anchor[rows, layer], self.signature[rows, layer] = anchors[layer], signatures[layer]
        return self._block_logits(output.last_hidden_state, self._columns(starts, self.block_length))

    def _window(self, x: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """A pass over each row's window (the block before, the block, the block after) against the cache, then,
        for rows whose watched attention drifted, a refresh from the first drifting layer."""
        n, length = self.block_length, x.shape[1]
        width = min(3 * n, length)
        window_starts = (starts - n).clamp(0, length - width)
        earlier_columns = self._columns(self.watched[rows], self.watch_length).clamp(max=length - 1)
        earlier = earlier_columns - window_starts[:, None]  # where the last pass's watched queries are in the window
        in_window = ((earlier >= 0) & (earlier < width)).all(1)
        unchanged = self.watched_masks[rows] & in_window[:, None]
        unchanged &= x[rows].gather(1, earlier_columns) == self.mask_id  # still masks: the same query tokens
        current = self._watch(x, rows, starts) - window_starts[:, None]
        earlier = earlier.clamp(0, width - 1)
        similarity = torch.ones(len(rows), self.watched_layers, device=x.device)
        anchors, signatures = {}, {}

        def observe(layer: int, probabilities: torch.Tensor) -> None:
            """`probabilities` of every query of the window: the earlier and the current watched ones among them."""
            on_anchor = watched_attention(probabilities, self.anchor[rows, layer])
            now = on_anchor.gather(2, earlier[:, None].expand(-1, on_anchor.shape[1], -1)) * unchanged[:, None]
            before = self.signature[rows, layer] * unchanged[:, None]
            cosine = torch.cosine_similarity(now.flatten(1), before.flatten(1), dim=1)
            similarity[:, layer] = torch.where(unchanged.any(1), cosine, 1.0)  # no evidence: no drift
            index = current[:, None, :, None].expand(-1, probabilities.shape[1], -1, probabilities.shape[3])
            anchors[layer], signatures[layer] = self._most_attended(probabilities.gather(2, index), starts)

        every = len(rows) == len(self.ready)  # rows are sorted and distinct: every row of the cache needs no copy
        keys, values = (self.keys, self.values) if every else ([t[rows] for t in ts] for ts in (self.keys, self.values))
        cache = WatchedCanvasCache(None, observe, self.watched_layers, self._key_bias(rows), list(keys), list(values))
        cache.span_start = window_starts
        span = self._columns(window_starts, width)
        output = self.base.model(
            input_ids=x[rows].gather(1, span),
            attention_mask=self._mask(rows),
            past_key_values=cache,
            output_hidden_states=True,
        )
        for layer in range(self.layers):
            self._store(layer, rows, span, *cache.computed[layer], output.hidden_states[layer])
        for layer in range(self.watched_layers):
            self.anchor[rows, layer], self.signature[rows, layer] = anchors[layer], signatures[layer]
        logits = self._block_logits(output.last_hidden_state, self._columns(starts - window_starts, n))
        # a row whose watched queries left the window (it skipped a block) starts over
        restart = torch.where(in_window, self._first_drifting(similarity), 0)
        for layer in restart.unique().tolist():
            if layer < self.layers:
                picked = (restart == layer).nonzero()[:, 0]
                logits[picked] = self._full(x, rows[picked], starts[picked], layer)
                self.refreshes[rows[picked]] += 1
        return logits

    def _first_drifting(self, similarity: torch.Tensor) -> torch.Tensor:
        """Per row, the first layer whose similarity fell below the setting (`layers`: none). Its outputs over the
        canvas are stale, and with them the keys of every later layer: it reruns on its kept inputs (outputs of
        layers that did not drift)."""
        drifted = similarity < self.similarity
        return torch.where(drifted.any(1), drifted.int().argmax(1), self.layers)

    def _most_attended(self, probabilities: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key the watched queries (from the block at `starts`) attend to most, summed over heads and queries,
        and their attention on it. It is sought among keys the row's later passes read from the cache, not among
        those a window recomputes (the block before, the block and the two after)."""
        keys = torch.arange(probabilities.shape[-1], device=starts.device)
        n = self.block_length
        near = (keys >= (starts - n)[:, None]) & (keys < (starts + 3 * n)[:, None])
        anchor = probabilities.sum((1, 2)).masked_fill(near, -1.0).argmax(1)
        return anchor, watched_attention(probabilities, anchor)

    def _block_logits(self, hidden: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """The head at each row's block `columns` [R, n] of the final hidden states, in at least float32."""
        picked = hidden.gather(1, columns[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = self.base.logits_from_hidden(picked)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def _store(
        self,
        layer: int,
        rows: torch.Tensor,
        columns: torch.Tensor | None,
        key: torch.Tensor,
        value: torch.Tensor,
        inputs: torch.Tensor,
    ) -> None:
        """Write a pass's keys, values and layer inputs into the cache: the whole canvas (`columns` None) or each
        row's window (`columns` [R, w] canvas columns)."""
        if layer == len(self.keys):
            batch, length = self.ready.shape[0], inputs.shape[1]
            self.keys.append(key.new_zeros(batch, key.shape[1], length, key.shape[3]))
            self.values.append(value.new_zeros(batch, value.shape[1], length, value.shape[3]))
            self.inputs.append(inputs.new_zeros(batch, length, inputs.shape[2]))
        if columns is None:
            self.keys[layer][rows], self.values[layer][rows], self.inputs[layer][rows] = key, value, inputs
            return
        at = (rows[:, None], slice(None), columns)  # indexes [R, w, H, D]: in place, no copy of the cache
        self.keys[layer][at] = key.transpose(1, 2)
        self.values[layer][at] = value.transpose(1, 2)
        self.inputs[layer][rows[:, None], columns] = inputs
