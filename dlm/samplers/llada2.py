"""LLaDA 2.x's sampler (dllm's `LLaDA2Sampler`, the official `generate`): block diffusion with confidence-threshold
parallel decoding inside each block and an exact key/value cache of the blocks before it.

The canvas is the prompt followed by masks up to a whole number of blocks, ceil((P + gen_length) / block_size)
blocks counted from the first prompt token; the block holding the end of the prompt is the first one decoded.
Attention is block-causal (bidirectional inside a block, causal across blocks), so a finished block's keys and values
never change again: they are computed once, by the first forward pass of the next block, and cached.

Within a block, each of at most `steps` passes picks every masked position's token (argmax at temperature 0, else a
draw from the temperature-scaled, top-k/top-p filtered distribution) with its probability, then reveals every masked
position whose probability exceeds `threshold` when there are at least as many as the step's share of the block
(block_size split evenly over the steps, remainder first), and otherwise the share's most probable masked positions.
A block ends when it holds no mask (or after `steps` passes). With `stop_at_end`, a row ends after the block in which
its answer holds an end token, as the official `generate` does, and leaves the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from dlm.forward import logits_at_positions
from dlm.samplers.block_cache import cache_rows
from dlm.samplers.common import (
    DiffusionSampler,
    SampleOutput,
    SamplingError,
    StepHook,
    check_decoding,
    check_family_cache,
    check_prompt,
    count_generated,
    multinomial,
)

if TYPE_CHECKING:
    from dlm.families.base import Family
    from dlm.generation import SamplerSettings

DEFAULT_THRESHOLD = 0.95  # the reference's default confidence threshold


def even_schedule(block_size: int, steps: int) -> list[int]:
    """Tokens each of `steps` steps must reveal at least: block_size split evenly, the remainder to the first steps
    (block 10 in 4 steps: 3, 3, 2, 2)."""
    return [block_size // steps + (step < block_size % steps) for step in range(steps)]


def filter_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Logits outside the `top_k` best and outside the smallest set holding probability `top_p` set to -inf (the
    token that crosses `top_p` is kept)."""
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        beyond = sorted_logits.softmax(-1).cumsum(-1) > top_p
        beyond[..., 1:] = beyond[..., :-1].clone()
        beyond[..., 0] = False
        logits = logits.masked_fill(beyond.scatter(-1, order, beyond), float("-inf"))
    return logits


def check_llada2_settings(steps: int, gen_length: int, block_size: int, temperature: float, threshold: float) -> None:
    for name, value in (("steps", steps), ("gen_length", gen_length), ("block_size", block_size)):
        if value < 1:
            raise SamplingError(f"{name} must be at least 1, got {value}")
    if temperature < 0:
        raise SamplingError(f"temperature must be >= 0, got {temperature}")
    check_decoding("none", threshold)


@dataclass
class _BlockRun:
    """One sampling run: the canvas, the cache of finished blocks and how a pass turns logits into tokens.

    Rows advance on their own: the cache holds the `live` rows alone (a row leaves once its answer has ended), a
    pass runs only the live rows whose block is not done (every live row where tokens are drawn at random), and
    `row_nfe` counts each row's passes."""

    model: torch.nn.Module
    x: torch.Tensor
    block_size: int
    mask_id: int
    keep: torch.Tensor | None  # [B, T] real (not padding) canvas positions, None when nothing is padded
    prompt_len: int
    sampler: LLaDA2Sampler
    generator: torch.Generator | None
    cache: DynamicCache | None = None
    final: int = 0  # the cache's keys/values of canvas positions [0, final) come from their final tokens
    live: torch.Tensor = field(init=False)  # [L] the canvas rows in the cache, in its order
    row_nfe: torch.Tensor = field(init=False)  # [B]

    def __post_init__(self) -> None:
        self.live = torch.arange(self.x.shape[0], device=self.x.device)
        self.row_nfe = torch.zeros(self.x.shape[0], dtype=torch.long, device=self.x.device)

    def block_logits(self, start: int, end: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [R, block, V] of block [start, end) for the live rows at `rows` (indices into `live`; None: all).
        The input runs from the end of the final part of the cache to `end` under the block-causal mask (the first
        pass of a block, which runs every live row, thus also computes the previous block's final keys); afterwards
        everything before `start` is final. A pass over some rows extends a copy of their cache."""
        if self.cache is None or self.final == 0:
            self.cache = DynamicCache()
        elif self.cache.get_seq_length() > self.final:
            self.cache.crop(self.final - self.cache.get_seq_length())
        cache, canvas_rows = self.cache, self.live
        if rows is not None and len(rows) < len(self.live):
            canvas_rows = self.live[rows]
            if self.final:
                cache = cache_rows(self.cache, rows)
        span = self.x[canvas_rows, self.final : end]
        selected = torch.zeros_like(span, dtype=torch.bool)
        selected[:, start - self.final :] = True
        logits = logits_at_positions(
            self.model,
            span,
            self._mask(self.final, end, canvas_rows),
            selected,
            past_key_values=cache,
            position_ids=self._positions(self.final, end, canvas_rows),
            use_cache=True,
        )
        self.final = start
        self.row_nfe[canvas_rows] += 1
        return logits.view(span.shape[0], end - start, -1).to(torch.promote_types(logits.dtype, torch.float32))

    def passing(self, needed: torch.Tensor) -> torch.Tensor:
        """Indices into `live` of the rows a pass runs: those that `needed` (bool [L]) marks, or every live row when
        tokens are drawn at random (the draws then follow the reference's, which covers the whole batch)."""
        if self.sampler.temperature > 0:
            return torch.arange(len(self.live), device=self.live.device)
        return needed.nonzero().squeeze(-1)

    def leave(self, staying: torch.Tensor) -> None:
        """Only the live rows where `staying` (bool [L]) go on."""
        kept = staying.nonzero().squeeze(-1)
        if self.final:
            self.cache.batch_select_indices(kept)
        else:  # nothing final is cached yet: the next pass starts a new cache
            self.cache = None
        self.live = self.live[kept]

    def _mask(self, query_start: int, end: int, rows: torch.Tensor) -> torch.Tensor | None:
        """Bool [R, 1, queries, keys] for queries [query_start, end) over keys [0, end) of canvas rows `rows`; None
        when every key is visible to every query (one block over finished blocks, nothing padded)."""
        if end - query_start <= self.block_size and self.keep is None:
            return None
        blocks = torch.arange(end, device=self.x.device) // self.block_size
        visible = blocks[None, :] <= blocks[query_start:end, None]
        visible = visible[None, None].expand(len(rows), 1, -1, -1)
        if self.keep is not None:
            visible = visible & self.keep[rows, None, None, :end]
        return visible

    def _positions(self, start: int, end: int, rows: torch.Tensor) -> torch.Tensor:
        """Position ids [R, n] of canvas rows `rows`: canvas columns counted from each row's first real token."""
        columns = torch.arange(start, end, device=self.x.device)[None, :].expand(len(rows), -1)
        if self.keep is None:
            return columns
        offsets = (~self.keep[rows]).sum(-1, keepdim=True)
        return (columns - offsets).clamp_min(0)

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, their probabilities) for block logits [B, n, V]."""
        sampler = self.sampler
        if sampler.temperature == 0:
            probs = F.softmax(logits, dim=-1)
            tokens = probs.argmax(-1)
            return tokens, probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        filtered = filter_top_k_top_p(logits / sampler.temperature, sampler.top_k, sampler.top_p)
        probs = F.softmax(filtered, dim=-1)
        tokens = multinomial(probs.view(-1, probs.shape[-1]), 1, self.generator).view(probs.shape[:-1])
        return tokens, probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def reveal(self, tokens: torch.Tensor, probs: torch.Tensor, active: torch.Tensor, count: int) -> torch.Tensor:
        """Bool [B, n]: per row, every active position above the threshold when there are at least `count` of
        them, else the `count` most probable active positions."""
        confidence = probs.masked_fill(~active, float("-inf"))
        confident = (confidence > self.sampler.threshold) & active
        reveal = torch.zeros_like(active)
        for row in range(active.shape[0]):
            if int(confident[row].sum()) >= count:
                reveal[row] = confident[row]
            elif count > 0 and bool(active[row].any()):
                top = confidence[row].topk(min(count, int(active[row].sum()))).indices
                reveal[row, top] = True
        return reveal


@dataclass(frozen=True)
class LLaDA2Sampler(DiffusionSampler):
    """LLaDA 2.x block-diffusion sampling (see the module) for a batch of left-padded prompts [B, P].

    `steps` are per block; the reference's `minimal_topk` (1) caps them at `gen_length`. `threshold` defaults to the
    reference's 0.95 (1.0 turns parallel decoding off: the even schedule alone). Unpadded prompts give the
    reference's token ids exactly; in a padded row the padding is hidden from every query and positions count from
    the row's first real token, while blocks stay aligned to the canvas.

    `editing_threshold` switches to LLaDA 2.1's rule (dllm's `LLaDA21Sampler`): no step schedule; each pass reveals
    the masked positions above `threshold`, or at least `tokens_per_step` of the most probable, and also rewrites
    every generated token of the block whose new choice differs and has a probability above `editing_threshold`.
    A row's block ends at the first pass after its last mask that edits nothing, or after `max_post_steps` such
    passes. Rows decide alone, so a batch gives each row's single-prompt result (the reference takes one prompt).

    `stop_at_end` stops a row after the block in which its answer holds an end token (`eos_id`/`eot_id`), as the
    official `generate` stops after the block holding EOS (dllm's sampler decodes every block): the rest of the row
    becomes the first end token. Rows advance on their own (`_BlockRun`): a row that has stopped leaves the batch and
    the cache, and at temperature 0 a row whose block is done sits out the block's remaining passes; `row_nfe`
    counts each row's passes, `nfe` the batch's.
    """

    blockwise: ClassVar[bool] = False  # any generated length: the canvas is rounded up to whole blocks

    steps: int
    gen_length: int
    block_size: int
    temperature: float = 0.0
    threshold: float = DEFAULT_THRESHOLD
    top_k: int | None = None
    top_p: float | None = None
    editing_threshold: float | None = None
    max_post_steps: int = 16
    tokens_per_step: int = 1
    stop_at_end: bool = False

    def __post_init__(self) -> None:
        check_llada2_settings(self.steps, self.gen_length, self.block_size, self.temperature, self.threshold)
        if self.editing_threshold is not None:
            check_decoding("none", self.editing_threshold)
            if self.max_post_steps < 0 or self.tokens_per_step < 1:
                raise SamplingError(
                    f"max_post_steps must be >= 0 and tokens_per_step >= 1, got {self.max_post_steps} and "
                    f"{self.tokens_per_step}"
                )

    @property
    def forward_passes(self) -> int:
        """At most `steps` passes (LLaDA 2.1 editing: the masks' passes plus the post passes) for every block the
        answer can touch."""
        per_block = self.steps
        if self.editing_threshold is not None:
            per_block = -(-self.block_size // self.tokens_per_step) + self.max_post_steps + 1
        return per_block * (-(-self.gen_length // self.block_size) + 1)

    @classmethod
    def from_settings(cls, settings: SamplerSettings, family: Family) -> LLaDA2Sampler:
        """The sampler for `settings`: `block_length` is the block size, `steps` the passes per block,
        `parallel_threshold` the confidence threshold (unset: 0.95); `SamplingError` names a setting that cannot
        work."""
        cls.check_decoding_settings(settings, family)
        return cls(
            steps=settings.steps,
            gen_length=settings.max_new_tokens,
            block_size=settings.block_length,
            temperature=settings.temperature,
            threshold=DEFAULT_THRESHOLD if settings.parallel_threshold is None else settings.parallel_threshold,
            top_k=settings.top_k,
            top_p=settings.top_p,
            stop_at_end=settings.stop_at_end,
        )

    @classmethod
    def check_decoding_settings(cls, settings: SamplerSettings, family: Family) -> None:
        """The cache and threshold settings alone: the exact block cache is always on, so only cache='none' is
        accepted (the approximate canvas caches do not apply)."""
        check_decoding(settings.cache, settings.parallel_threshold)
        check_family_cache(settings.cache, family)

    @torch.no_grad()
    def sample(
        self,
        model: torch.nn.Module,
        prompt_ids: torch.Tensor,
        *,
        mask_id: int,
        attention_mask: torch.Tensor | None = None,
        eos_id: int | None = None,
        eot_id: int | None = None,
        generator: torch.Generator | None = None,
        on_step: StepHook | None = None,
    ) -> SampleOutput:
        """Sample continuations of left-padded prompts [B, P]: sequences [B, P + gen_length]; `on_step(canvas,
        step, block)` sees the canvas after every pass."""
        offsets = check_prompt(prompt_ids, attention_mask, mask_id)
        if self.stop_at_end and eos_id is None and eot_id is None:
            raise SamplingError("stop_at_end needs eos_id or eot_id (the tokens that end an answer)")
        prompt_len, block = prompt_ids.shape[1], self.block_size
        blocks = -(-(prompt_len + self.gen_length) // block)
        x = prompt_ids.new_full((prompt_ids.shape[0], blocks * block), mask_id)
        x[:, :prompt_len] = prompt_ids
        keep = None
        if bool((offsets > 0).any()):
            keep = torch.arange(x.shape[1], device=x.device)[None, :] >= offsets.to(x.device)[:, None]
        run = _BlockRun(model, x, block, mask_id, keep, prompt_len, self, generator)
        schedule = even_schedule(block, min(self.steps, self.gen_length))
        end_ids = torch.tensor([i for i in (eos_id, eot_id) if i is not None], device=x.device)
        nfe = 0
        for index in range(prompt_len // block, blocks):
            if self.editing_threshold is None:
                nfe += self._block(run, index, schedule, on_step)
            else:
                nfe += self._editing_block(run, index, on_step)
            if self.stop_at_end and not self._stop_ended_rows(run, (index + 1) * block, end_ids):
                break
        generated = x[:, prompt_len : prompt_len + self.gen_length]
        return SampleOutput(
            sequences=x[:, : prompt_len + self.gen_length],
            nfe=nfe,
            generated_tokens=count_generated(generated, (eos_id, eot_id)),
            row_nfe=run.row_nfe,
        )

    def _stop_ended_rows(self, run: _BlockRun, end: int, end_ids: torch.Tensor) -> bool:
        """After the block ending at column `end`: the live rows whose answer holds an end token stop (the rest of
        their canvas becomes the first end token) and leave the batch; whether any row goes on."""
        answer = run.x[run.live, run.prompt_len : min(end, run.prompt_len + self.gen_length)]
        ended = torch.isin(answer, end_ids).any(-1)
        if bool(ended.any()):
            run.x[run.live[ended], end:] = end_ids[0]
            run.leave(~ended)
        return len(run.live) > 0

    def _block(self, run: _BlockRun, index: int, schedule: Sequence[int], on_step: StepHook | None) -> int:
        start, end = index * run.block_size, (index + 1) * run.block_size
        passes = 0
        for step, count in enumerate(schedule):
            active = run.x[run.live, start:end] == run.mask_id
            stepping = active.any(-1)
            if not bool(stepping.any()):
                break
            rows = run.passing(stepping)
            canvas_rows = run.live[rows]
            tokens, probs = run.choose(run.block_logits(start, end, rows))
            passes += 1
            reveal = run.reveal(tokens, probs, active[rows], count)
            run.x[canvas_rows, start:end] = torch.where(reveal, tokens, run.x[canvas_rows, start:end])
            if on_step is not None:
                on_step(run.x, step, index)
        return passes

    def _editing_block(self, run: _BlockRun, index: int, on_step: StepHook | None) -> int:
        start, end = index * run.block_size, (index + 1) * run.block_size
        live = run.live
        generated = (torch.arange(start, end, device=run.x.device) >= run.prompt_len)[None, :]
        post_passes = torch.zeros(len(live), dtype=torch.long, device=run.x.device)
        done = torch.zeros(len(live), dtype=torch.bool, device=run.x.device)
        passes = 0
        while True:
            old = run.x[live, start:end]
            active = old == run.mask_id
            unmasked = ~active.any(-1)
            post_passes += (unmasked & ~done).long()
            done |= post_passes > self.max_post_steps
            if bool(done.all()):
                return passes
            rows = run.passing(~done)
            tokens, probs = run.choose(run.block_logits(start, end, rows))
            reveal = run.reveal(tokens, probs, active[rows], self.tokens_per_step)
            edit = (probs > self.editing_threshold) & ~active[rows] & generated & (tokens != old[rows])
            run.x[live[rows], start:end] = torch.where((reveal | edit) & ~done[rows, None], tokens, old[rows])
            done[rows] |= unmasked[rows] & ~edit.any(-1)
            if on_step is not None:
                on_step(run.x, passes, index)
            passes += 1
