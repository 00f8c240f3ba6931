"""Dream's sampler (official `diffusion_generate`): the whole canvas denoised together with shifted logits, or
block by block with a cache (Fast-dLLM's Dream). A `DreamSampler` checks its settings when it is built;
`generate_dream` builds one and runs it.

Each run is a `_DreamRun` that denoises one block at a time with a `BlockLogits` and a `_DreamChoice`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from dlm.samplers.common import (
    BlockLogits,
    DiffusionSampler,
    SampleOutput,
    SamplingError,
    StepHook,
    check_blocks,
    check_decoding,
    check_family_cache,
    check_model_cache,
    check_prompt,
    count_generated,
    masked_canvas,
    multinomial,
    padding_mask,
    parallel_reveal,
    rand,
    reveal_top,
)
from dlm.samplers.rows import RowRun

if TYPE_CHECKING:
    from dlm.families.base import Family
    from dlm.generation import SamplerSettings

DREAM_ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")
ENTROPY_EPS = 1e-10  # as the official Dream code: keeps log(0) finite for filtered-out tokens


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p` (the top token always)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


def _top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def _dream_choose(
    logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities after temperature/top-p/top-k, chosen tokens, their probabilities) as Dream's
    `sample_tokens`: filters apply at temperature 0 too, where the choice is the argmax."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p_filter(logits, top_p)
    if top_k is not None:
        logits = _top_k_filter(logits, top_k)
    probs = logits.softmax(dim=-1)
    if temperature > 0:
        flat = probs.reshape(-1, probs.shape[-1])
        x0 = multinomial(flat, 1, generator).reshape(probs.shape[:-1])
        return probs, x0, probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    top, x0 = probs.max(dim=-1)
    return probs, x0, top


def check_dream_settings(
    steps: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    alg: str,
    alg_temp: float | None,
    eps: float,
) -> None:
    if max_new_tokens < 1:
        raise SamplingError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if steps < 1:
        raise SamplingError(f"steps must be at least 1, got {steps}")
    if alg not in DREAM_ALGORITHMS:
        raise SamplingError(f"alg={alg!r} is unknown; choose one of: {', '.join(DREAM_ALGORITHMS)}")
    if temperature < 0:
        raise SamplingError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise SamplingError(f"top_p must be in (0, 1] (or unset), got {top_p}")
    if top_k is not None and top_k < 1:
        raise SamplingError(f"top_k must be at least 1 (or unset), got {top_k}")
    if alg_temp is not None and alg_temp < 0:
        raise SamplingError(f"alg_temp must be >= 0 (or unset), got {alg_temp}")
    if not 0 < eps < 1:
        raise SamplingError(f"eps (the final diffusion time) must be in (0, 1), got {eps}")


def check_dream_blocks(
    steps: int, max_new_tokens: int, block_length: int, alg: str, parallel_threshold: float | None
) -> None:
    """Block-wise Dream (cached decoding) needs blocks that divide the answer and steps; a threshold needs a
    confidence-ranked algorithm."""
    check_blocks(steps, max_new_tokens, block_length, "max_new_tokens")
    if parallel_threshold is not None and alg == "origin":
        raise SamplingError(
            "parallel_threshold needs a confidence-ranked algorithm (maskgit_plus, topk_margin or entropy); "
            "alg='origin' reveals positions at random"
        )


@dataclass(frozen=True)
class _DreamChoice:
    """How a Dream step picks tokens and ranks positions."""

    temperature: float
    top_p: float | None
    top_k: int | None
    alg: str
    banned: tuple[int, ...]  # never chosen
    generator: torch.Generator | None

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, ranking confidence, probability of each token) for block logits [B, n, V]."""
        if self.banned:
            logits[..., list(self.banned)] = -torch.inf
        probs, x0, probability = _dream_choose(logits, self.temperature, self.top_p, self.top_k, self.generator)
        if self.alg == "topk_margin":
            best_two = probs.topk(2, dim=-1).values
            return x0, best_two[..., 0] - best_two[..., 1], probability
        if self.alg == "entropy":
            return x0, (probs * (probs + ENTROPY_EPS).log()).sum(-1), probability
        return x0, probability, probability


@dataclass(kw_only=True)
class _DreamRun(RowRun):
    """One Dream sampling run: the canvas (`RowRun`: each row at its own block) and how tokens are chosen. Each
    block is denoised over times linspace(1, eps, steps + 1)."""

    choose: _DreamChoice
    alg_temp: float | None
    eps: float
    threshold: float | None

    def __post_init__(self) -> None:
        super().__post_init__()
        # float32 on the canvas' device as the official code, so int(masks * (1 - s/t)) rounds the same way
        self.times = torch.linspace(1, self.eps, self.steps + 1, device=self.x.device)

    def _step(self, rows: torch.Tensor, refresh: bool) -> bool:
        columns = self.columns(rows)
        current = self.x[rows[:, None], columns]
        masked = current == self.mask_id
        step = self.step[rows]
        plan = self.plan(masked, self.times[step], self.times[step + 1], step == self.steps - 1)
        if plan is None:
            return False
        logits = self.logits(self.x, rows, columns[:, 0], refresh)
        x0, confidence, probability = self.choose(logits)
        reveal = plan if self.choose.alg == "origin" else self.rank(confidence, masked, plan, rows, columns)
        reveal = parallel_reveal(reveal, masked, probability, self.threshold) & masked
        self.x[rows[:, None], columns] = torch.where(reveal, x0, current)
        return True

    def plan(self, masked: torch.Tensor, t: torch.Tensor, s: torch.Tensor, last: torch.Tensor) -> torch.Tensor | None:
        """`origin`: the positions to reveal (each with probability 1 - s/t); other algorithms: how many per row
        (at least one with a parallel threshold). Each row at its own time t -> s; None when the step has nothing
        to do."""
        if self.choose.alg == "origin":
            if not bool(masked.any()):
                return None
            if bool(last.all()):
                return masked
            drawn = rand(masked.shape, self.choose.generator, masked.device) < (1 - s / t)[:, None]
            return masked & (drawn | last[:, None])
        left = masked.sum(-1)
        counts = torch.where(last, left, (left.float() * (1 - s / t)).long())
        if self.threshold is not None:
            counts = torch.maximum(counts, (left > 0).long())
        return counts if bool(counts.any()) else None

    def rank(
        self, confidence: torch.Tensor, masked: torch.Tensor, counts: torch.Tensor, rows: torch.Tensor, columns
    ) -> torch.Tensor:
        """The `counts` masked positions of highest confidence per row, or with `alg_temp` a sample of them."""
        block_confidence = confidence.masked_fill(~masked, -torch.inf)
        if not self.alg_temp:
            canvas_confidence = torch.full((len(rows), self.x.shape[1]), -torch.inf, device=self.x.device)
            canvas_confidence.scatter_(1, columns, block_confidence)
            return reveal_top(canvas_confidence, counts, self.offsets[rows]).gather(1, columns)
        weights = F.softmax(block_confidence / self.alg_temp, dim=-1)
        reveal = torch.zeros_like(masked)
        for row in range(masked.shape[0]):
            if counts[row]:
                reveal[row, multinomial(weights[row], int(counts[row]), self.choose.generator)] = True
        return reveal


@dataclass(frozen=True)
class DreamSampler(DiffusionSampler):
    """Dream sampling (official `diffusion_generate`) for a batch of left-padded prompts [B, P].

    The prompt is followed by `max_new_tokens` masks, all denoised together over times linspace(1, eps, steps + 1),
    with shifted logits (the output at position i - 1 predicts token i). Tokens: temperature, top-p, top-k, then a
    sample (temperature > 0) or the argmax. `origin` reveals each masked position with probability 1 - s/t; the
    other algorithms reveal int(masks_left * (1 - s/t)) positions (all at the last step) ranked by confidence:
    `maskgit_plus` p(token), `topk_margin` p1 - p2, `entropy` sum p log p; `alg_temp` > 0 samples those positions
    from softmax(confidence / alg_temp) instead. `eos_id`/`eot_id` are excluded from `generated_tokens`. A step
    with nothing to reveal in any row skips its forward pass.

    Options beyond the official sampler (the defaults leave it exact): `suppress_tokens` are never chosen; `infill`
    [B, max_new_tokens] fixes tokens inside the answer (mask_id where tokens are generated); `block_length` denoises
    block by block (Fast-dLLM's Dream), each block over its share of `steps` with the whole schedule; `cache`
    ('prefix', 'dual') keeps approximate keys/values, refreshed by the first pass of every block;
    `parallel_threshold` (not with `origin`) also reveals every masked position whose chosen token's probability
    reaches it, and at least one position per step; `stop_at_end` stops each row once its answer has ended (answers
    unchanged; the rest of the row is filled with `eos_id`, or `eot_id`); `suffix_window` (DPad) keeps only that
    many positions after each row's block in view. Rows advance on their own (`dlm.samplers.rows`); `row_nfe`
    counts each row's passes.
    """

    blockwise: ClassVar[bool] = False  # decodes block by block whatever the cache

    steps: int
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg: str = "origin"
    alg_temp: float | None = None
    eps: float = 1e-3
    block_length: int | None = None
    cache: str = "none"
    parallel_threshold: float | None = None
    stop_at_end: bool = False
    suffix_window: int | None = None

    def __post_init__(self) -> None:
        check_dream_settings(
            self.steps, self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.alg, self.alg_temp, self.eps
        )
        check_dream_blocks(
            self.steps, self.max_new_tokens, self.block_length or self.max_new_tokens, self.alg, self.parallel_threshold
        )
        check_decoding(self.cache, self.parallel_threshold, self.suffix_window)

    @classmethod
    def from_settings(cls, settings: SamplerSettings, family: Family) -> DreamSampler:
        """The sampler for `settings` (block by block only with a cache); `SamplingError` names a setting that
        cannot work."""
        check_family_cache(settings.cache, family)
        return cls(
            steps=settings.steps,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            alg=settings.alg,
            alg_temp=settings.alg_temp,
            block_length=_block_length(settings),
            cache=settings.cache,
            parallel_threshold=settings.parallel_threshold,
            stop_at_end=settings.stop_at_end,
            suffix_window=settings.suffix_window,
        )

    @classmethod
    def check_decoding_settings(cls, settings: SamplerSettings, family: Family) -> None:
        """The fast-decoding settings alone (cache, threshold, blocks), for callers that set the lengths later."""
        check_decoding(settings.cache, settings.parallel_threshold, settings.suffix_window)
        check_family_cache(settings.cache, family)
        block_length = _block_length(settings) or settings.max_new_tokens
        check_dream_blocks(
            settings.steps, settings.max_new_tokens, block_length, settings.alg, settings.parallel_threshold
        )

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
        suppress_tokens: Sequence[int] = (),
        infill: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        on_step: StepHook | None = None,
    ) -> SampleOutput:
        """Sample continuations of left-padded prompts [B, P] (see the class); `on_step(canvas, step, block)` sees
        the canvas after every step that revealed tokens."""
        max_new_tokens, cache = self.max_new_tokens, self.cache
        block_length = self.block_length or max_new_tokens
        check_model_cache(cache, model)
        offsets = check_prompt(prompt_ids, attention_mask, mask_id)
        prompt_len = prompt_ids.shape[1]
        end_ids = tuple(i for i in (eos_id, eot_id) if i is not None)
        if self.stop_at_end and not end_ids:
            raise SamplingError("stop_at_end needs eos_id or eot_id: a row stops once its answer holds one")
        run = _DreamRun(
            x=masked_canvas(prompt_ids, max_new_tokens, mask_id, infill),
            prompt_len=prompt_len,
            offsets=offsets,
            mask_id=mask_id,
            logits=BlockLogits(
                model, padding_mask(attention_mask, max_new_tokens), cache, True, block_length, self.suffix_window
            ),
            blocks=max_new_tokens // block_length,
            steps=self.steps // (max_new_tokens // block_length),
            end_ids=end_ids if self.stop_at_end else (),
            on_step=on_step,
            choose=_DreamChoice(self.temperature, self.top_p, self.top_k, self.alg, tuple(suppress_tokens), generator),
            alg_temp=self.alg_temp,
            eps=self.eps,
            threshold=self.parallel_threshold,
        )
        row_nfe = run.decode()
        generated = run.x[:, prompt_len:]
        return SampleOutput(
            sequences=run.x,
            nfe=int(row_nfe.max()),
            generated_tokens=count_generated(generated, (eos_id, eot_id)),
            row_nfe=row_nfe,
        )


def _block_length(settings: SamplerSettings) -> int | None:
    """Dream decodes block by block only with a cache."""
    return settings.block_length if settings.cache != "none" else None


def generate_dream(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    *,
    steps: int,
    max_new_tokens: int,
    mask_id: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg: str = "origin",
    alg_temp: float | None = None,
    eps: float = 1e-3,
    attention_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    eot_id: int | None = None,
    suppress_tokens: Sequence[int] = (),
    infill: torch.Tensor | None = None,
    block_length: int | None = None,
    cache: str = "none",
    parallel_threshold: float | None = None,
    stop_at_end: bool = False,
    suffix_window: int | None = None,
    generator: torch.Generator | None = None,
) -> SampleOutput:
    """Dream sampling in one call: a `DreamSampler` with these settings, run on `prompt_ids`."""
    sampler = DreamSampler(
        steps=steps,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        alg=alg,
        alg_temp=alg_temp,
        eps=eps,
        block_length=block_length,
        cache=cache,
        parallel_threshold=parallel_threshold,
        stop_at_end=stop_at_end,
        suffix_window=suffix_window,
    )
    return sampler.sample(
        model,
        prompt_ids,
        mask_id=mask_id,
        attention_mask=attention_mask,
        eos_id=eos_id,
        eot_id=eot_id,
        suppress_tokens=suppress_tokens,
        infill=infill,
        generator=generator,
    )
