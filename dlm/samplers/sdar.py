"""SDAR's sampler (official `generate.py`, `block_diffusion_generate`): block diffusion decoding with an exact
key/value cache of the finished blocks, for SDAR and other block-diffusion models with a block-causal mask.

The sequence is cut into blocks of `block_length` tokens counted from each prompt's first token. The prompt's full
blocks are run once (the prefill) and their keys and values cached. Then each block is denoised in turn: the block
(the prompt's last partial block, if any, followed by masks) is run against the cache `denoising_steps` times at
most, each pass revealing masked positions, and once it holds no mask it is run one more time to append its keys and
values to the cache. Attention is bidirectional inside a block and causal across blocks.

A pass reveals, per row, `k` = `sdar_transfer_counts(block_length, denoising_steps)[step]` positions (never more
than are masked): the `k` most confident (`low_confidence`), and with `confidence_threshold` every position whose
confidence exceeds it instead when there are at least `k` of them (`generate.py`'s `low_confidence_dynamic`); or
the first `k` masked positions (`sequential`). Tokens come from the logits divided by the temperature, top-k and
top-p filtered, sampled; at temperature 0 they are the argmax and the confidence is the softmax probability.

Batches of left-padded prompts of different lengths decode as each prompt alone would: every row's blocks start at
its own first token (the rows are laid out so their block boundaries line up) and padding is hidden from attention.
A row stops after the block in which it holds an end token (EOS or end of turn), and what it generates after that
block is filled with the end token; `generate.py` stops likewise (for its single row) and leaves masks. A row that
has stopped, or whose answer is complete, leaves the batch and the cache; within a block at temperature 0, a row that
holds no mask sits out the denoising passes left (`_SdarRun`), so each row takes the passes it takes alone
(`row_nfe`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from transformers.cache_utils import DynamicCache

from dlm.forward import logits_at_positions
from dlm.samplers.block_cache import cache_rows, extend_rows
from dlm.samplers.common import (
    DiffusionSampler,
    SampleOutput,
    SamplingError,
    StepHook,
    check_blocks,
    check_decoding,
    check_family_cache,
    check_prompt,
    count_generated,
    multinomial,
    reveal_top,
)

if TYPE_CHECKING:
    from dlm.families.base import Family
    from dlm.generation import SamplerSettings

SDAR_REMASKING = ("low_confidence", "sequential")


def sdar_transfer_counts(block_length: int, denoising_steps: int) -> list[int]:
    """Positions to reveal at each denoising step of a block: block_length // steps, the remainder spread over the
    first steps (4 tokens in 3 steps: 2, 1, 1)."""
    base, remainder = divmod(block_length, denoising_steps)
    return [base + int(step < remainder) for step in range(denoising_steps)]


def filter_top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Logits below the k-th largest of their row set to -inf."""
    if not top_k:
        return logits
    kth = torch.topk(logits, top_k).values[..., -1:]
    return logits.masked_fill(logits < kth, -torch.inf)


def filter_top_p(logits: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """Logits outside the smallest set whose probability exceeds `top_p` set to -inf (the most probable is kept)."""
    if top_p is None or top_p >= 1.0:
        return logits
    ordered, order = torch.sort(logits, descending=True)
    beyond = torch.softmax(ordered, dim=-1).cumsum(-1) > top_p
    beyond = torch.cat([torch.zeros_like(beyond[..., :1]), beyond[..., :-1]], dim=-1)
    return logits.masked_fill(torch.zeros_like(beyond).scatter(-1, order, beyond), -torch.inf)


def choose_tokens(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, their probability) for logits [B, n, V], as `generate.py` samples them; greedy at temperature 0."""
    if temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, torch.softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    scaled = logits / temperature if temperature != 1.0 else logits
    probs = torch.softmax(filter_top_p(filter_top_k(scaled, top_k), top_p), dim=-1)
    tokens = multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator).view(probs.shape[:-1])
    return tokens, probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def check_sdar_settings(
    steps: int,
    gen_length: int,
    block_length: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    remasking: str,
    threshold: float | None,
) -> None:
    if gen_length < 1:
        raise SamplingError(f"gen_length must be at least 1, got {gen_length}")
    check_blocks(steps, gen_length, block_length, "gen_length")
    if remasking not in SDAR_REMASKING:
        raise SamplingError(f"remasking={remasking!r} is unknown to SDAR; choose one of: {', '.join(SDAR_REMASKING)}")
    if temperature < 0:
        raise SamplingError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise SamplingError(f"top_k must be at least 1 (unset for no top-k filter), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise SamplingError(f"top_p must be in (0, 1] (unset for no nucleus filter), got {top_p}")
    check_decoding("none", threshold)
    if threshold is not None and remasking != "low_confidence":
        raise SamplingError(
            f"parallel_threshold applies to remasking='low_confidence' (SDAR's dynamic strategy), not {remasking!r}"
        )


@dataclass
class _Canvas:
    """The rows laid out so that every row's blocks start at its first token: row b holds `lead[b]` hidden
    positions (a multiple of the block length), its prompt, then masks; the first `start` positions are the
    prompts' full blocks, and each row's answer begins `rest[b]` positions after `start`."""

    ids: torch.Tensor  # [B, T]
    real: torch.Tensor  # [B, T] bool: not a hidden padding position
    positions: torch.Tensor  # [B, T] position ids: 0 at each row's first token
    start: int
    rest: torch.Tensor  # [B]

    @classmethod
    def lay_out(cls, prompt_ids: torch.Tensor, offsets: torch.Tensor, gen_length: int, block: int, mask_id: int):
        rows, width = prompt_ids.shape
        lengths = width - offsets
        full, rest = lengths // block, lengths % block
        start = block * int(full.max())
        total = start + block * -(-(int(rest.max()) + gen_length) // block)
        lead = start - block * full
        index = torch.arange(total, device=prompt_ids.device)
        ids = torch.full((rows, total), mask_id, dtype=prompt_ids.dtype, device=prompt_ids.device)
        for row in range(rows):
            prompt = prompt_ids[row, int(offsets[row]) :]
            ids[row, : int(lead[row])] = prompt[0]  # hidden from attention; any id but the mask
            ids[row, int(lead[row]) : int(lead[row]) + len(prompt)] = prompt
        real = index >= lead.unsqueeze(-1)
        positions = (index - lead.unsqueeze(-1)).clamp_min(0)
        return cls(ids, real, positions, start, rest)

    def answers(self, gen_length: int) -> torch.Tensor:
        """[B, gen_length]: each row's generated tokens."""
        index = self.start + self.rest.unsqueeze(-1) + torch.arange(gen_length, device=self.ids.device)
        return self.ids.gather(1, index)


def _run(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache,
         logits: bool) -> torch.Tensor:  # fmt: skip
    """One forward pass against `cache` (which it appends to); logits [B, n, V] (at least float32) if asked."""
    wanted = torch.full(ids.shape, logits, dtype=torch.bool, device=ids.device)
    out = logits_at_positions(model, ids, mask, wanted, past_key_values=cache, position_ids=positions, use_cache=True)
    return out.to(torch.promote_types(out.dtype, torch.float32)).reshape(*ids.shape, -1)


@dataclass(frozen=True)
class SDARSampler(DiffusionSampler):
    """SDAR block decoding (module docstring) for a batch of left-padded prompts [B, P].

    `steps` is the total over the answer, as for the other samplers: each block gets `steps` / (`gen_length` /
    `block_length`) denoising steps (SDAR's `denoising_steps`; its published default is one per token, e.g. 4 for
    blocks of 4). `confidence_threshold` is `SamplerSettings.parallel_threshold`. A network evaluation (`nfe`) is
    any forward pass: the prefill, each denoising pass and each block's caching pass.
    """

    blockwise: ClassVar[bool] = True

    steps: int
    gen_length: int
    block_length: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    remasking: str = "low_confidence"
    confidence_threshold: float | None = None

    def __post_init__(self) -> None:
        check_sdar_settings(
            self.steps,
            self.gen_length,
            self.block_length,
            self.temperature,
            self.top_k,
            self.top_p,
            self.remasking,
            self.confidence_threshold,
        )

    @property
    def denoising_steps(self) -> int:
        return self.steps * self.block_length // self.gen_length

    @property
    def forward_passes(self) -> int:
        """At most: the prefill, then per block (one more than the answer's when the prompt ends inside a block)
        its denoising passes and its caching pass."""
        return 1 + (self.gen_length // self.block_length + 1) * (self.denoising_steps + 1)

    @classmethod
    def from_settings(cls, settings: SamplerSettings, family: Family) -> SDARSampler:
        """The sampler for `settings` (`max_new_tokens` is the generated length); `SamplingError` names a setting
        that cannot work. The LLaDA- and Dream-only settings (cfg, alg, growing canvas) do not apply."""
        cls.check_decoding_settings(settings, family)
        return cls(
            steps=settings.steps,
            gen_length=settings.max_new_tokens,
            block_length=settings.block_length,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            remasking=settings.remasking,
            confidence_threshold=settings.parallel_threshold,
        )

    @classmethod
    def check_decoding_settings(cls, settings: SamplerSettings, family: Family) -> None:
        """The fast-decoding settings alone: SDAR's cache is always on and exact, so `cache` must be 'none' (the
        approximate caches are LLaDA's and Dream's); a threshold must be a probability."""
        check_decoding(settings.cache, settings.parallel_threshold)
        check_family_cache(settings.cache, family)

    def _transfer(self, masked: torch.Tensor, confidence: torch.Tensor, count: int) -> torch.Tensor:
        """Bool [B, n]: the masked positions this step reveals."""
        counts = masked.sum(-1).clamp(max=count)
        if self.remasking == "sequential":
            index = torch.arange(masked.shape[-1], device=masked.device)
            first = masked.int().argmax(-1, keepdim=True)
            return masked & (index >= first) & (index < first + counts.unsqueeze(-1))
        confidence = confidence.masked_fill(~masked, -torch.inf)
        top = reveal_top(confidence, counts, torch.zeros_like(counts))
        if self.confidence_threshold is None:
            return top
        confident = confidence > self.confidence_threshold
        return torch.where((confident.sum(-1) >= counts).unsqueeze(-1), confident, top)

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
        """Sample continuations of left-padded prompts [B, P] (module docstring); `on_step(canvas, step, block)`
        sees the prompts and answers so far after every denoising pass."""
        offsets = check_prompt(prompt_ids, attention_mask, mask_id)
        canvas = _Canvas.lay_out(prompt_ids, offsets, self.gen_length, self.block_length, mask_id)
        end_ids = torch.tensor([i for i in (eos_id, eot_id) if i is not None], device=prompt_ids.device)
        run = _SdarRun(self, model, canvas, prompt_ids, mask_id, generator, on_step)
        run.prefill()
        stopped_at = torch.full_like(offsets, canvas.ids.shape[1])
        for index, block_start in enumerate(range(canvas.start, canvas.ids.shape[1], self.block_length)):
            end = block_start + self.block_length
            run.block(index, block_start)
            answer_start = canvas.start + canvas.rest[run.live]
            ended = torch.zeros_like(answer_start, dtype=torch.bool)
            if len(end_ids):
                span = torch.arange(end, device=prompt_ids.device) >= answer_start.unsqueeze(-1)
                ended = (torch.isin(canvas.ids[run.live, :end], end_ids) & span).any(-1)
            stopped_at[run.live] = torch.where(ended, end, stopped_at[run.live])
            leaving = ended | (answer_start + self.gen_length <= end)
            if bool(leaving.all()):
                break
            if bool(leaving.any()):
                run.leave(~leaving)
        after = torch.arange(canvas.ids.shape[1], device=prompt_ids.device) >= stopped_at.unsqueeze(-1)
        if len(end_ids):
            canvas.ids.masked_fill_(after, int(end_ids[0]))
        generated = canvas.answers(self.gen_length)
        return SampleOutput(
            sequences=torch.cat([prompt_ids, generated], dim=1),
            nfe=run.nfe,
            generated_tokens=count_generated(generated, (eos_id, eot_id)),
            row_nfe=run.row_nfe,
        )


@dataclass
class _SdarRun:
    """One sampling run: the canvas and the cache of finished blocks, for the `live` rows alone (a row leaves once
    its answer has ended or is complete). At temperature 0 a denoising pass runs only the live rows whose block still
    holds a mask (the others wait for the block's caching pass), so each row takes the passes it takes alone;
    `row_nfe` counts them per row, `nfe` the batch's."""

    sampler: SDARSampler
    model: torch.nn.Module
    canvas: _Canvas
    prompt_ids: torch.Tensor
    mask_id: int
    generator: torch.Generator | None
    on_step: StepHook | None
    cache: DynamicCache = field(default_factory=DynamicCache)
    nfe: int = 0
    live: torch.Tensor = field(init=False)  # [L] the canvas rows in the cache, in its order
    row_nfe: torch.Tensor = field(init=False)  # [B]

    def __post_init__(self) -> None:
        rows = self.canvas.ids.shape[0]
        self.live = torch.arange(rows, device=self.canvas.ids.device)
        self.row_nfe = torch.zeros(rows, dtype=torch.long, device=self.canvas.ids.device)

    def prefill(self) -> None:
        """Cache the prompts' full blocks (hidden positions see themselves alone, so that no query is empty). A row
        with no full block sits the pass out, as alone it makes none: its columns hold zeros that it never sees."""
        start = self.canvas.start
        if not start:
            return
        blocks = torch.arange(start, device=self.canvas.ids.device) // self.sampler.block_length
        allowed = (blocks.unsqueeze(0) <= blocks.unsqueeze(1)) & self.canvas.real[:, None, :start]
        allowed |= torch.eye(start, dtype=torch.bool, device=self.canvas.ids.device)
        rows = self.canvas.real[:, :start].any(-1).nonzero().squeeze(-1)
        whole = len(rows) == len(self.live)
        cache = self.cache if whole else DynamicCache()
        ids, positions = self.canvas.ids[rows, :start], self.canvas.positions[rows, :start]
        _run(self.model, ids, allowed[rows].unsqueeze(1), positions, cache, False)
        if not whole:
            extend_rows(self.cache, cache, rows, len(self.live), start)
        self._count(rows)

    def block(self, index: int, start: int) -> None:
        """Denoise the live rows' block at column `start` (at most `denoising_steps` passes), then append it to the
        cache."""
        end, canvas = start + self.sampler.block_length, self.canvas
        counts = sdar_transfer_counts(self.sampler.block_length, self.sampler.denoising_steps)
        for step in range(len(counts) + 1):
            stepping = (canvas.ids[self.live, start:end] == self.mask_id).any(-1)
            if not bool(stepping.any()):
                self._pass(self.live, start, self.cache, False)  # appends the finished block to the cache
                return
            if self.sampler.temperature > 0:  # random draws cover every live row, as `generate.py`'s do
                stepping = torch.ones_like(stepping)
            in_cache = stepping.nonzero().squeeze(-1)
            rows = self.live[in_cache]
            whole = len(rows) == len(self.live)
            logits = self._pass(rows, start, self.cache if whole else cache_rows(self.cache, in_cache), True)
            if whole:
                self.cache.crop(-self.sampler.block_length)  # a denoising pass reads the cache, keeps nothing
            sampler, block = self.sampler, canvas.ids[rows, start:end]
            tokens, confidence = choose_tokens(
                logits, sampler.temperature, sampler.top_k, sampler.top_p, self.generator
            )
            reveal = sampler._transfer(block == self.mask_id, confidence, counts[step] if step < len(counts) else 0)
            canvas.ids[rows, start:end] = torch.where(reveal, tokens, block)
            if self.on_step is not None:
                on_step_canvas = torch.cat([self.prompt_ids, canvas.answers(sampler.gen_length)], dim=1)
                self.on_step(on_step_canvas, step, index)

    def leave(self, staying: torch.Tensor) -> None:
        """Only the live rows where `staying` (bool [L]) go on."""
        kept = staying.nonzero().squeeze(-1)
        self.cache.batch_select_indices(kept)
        self.live = self.live[kept]

    def _pass(self, rows: torch.Tensor, start: int, cache: DynamicCache, logits: bool) -> torch.Tensor:
        """One forward pass of `rows`' block at column `start` against `cache`."""
        end = start + self.sampler.block_length
        mask = self.canvas.real[rows, None, None, :end].expand(-1, 1, end - start, -1)
        ids, positions = self.canvas.ids[rows, start:end], self.canvas.positions[rows, start:end]
        out = _run(self.model, ids, mask, positions, cache, logits)
        self._count(rows)
        return out

    def _count(self, rows: torch.Tensor) -> None:
        self.nfe += 1
        self.row_nfe[rows] += 1
