"""LLaDA's sampler (official `generate.py`): semi-autoregressive low-confidence remasking, block by block, for
LLaDA, BERT-style and converted models. A `LladaSampler` checks its settings when it is built; `generate_llada`
builds one and runs it.

Each run is a `_LladaRun` that denoises one block at a time with a `BlockLogits` (the forward pass, cached or not)
and a `_LladaChoice` (how tokens are picked and positions ranked).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

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
    divisors,
    masked_canvas,
    padding_mask,
    parallel_reveal,
    rand,
    reveal_top,
)
from dlm.samplers.elastic import REFRESH_SIMILARITY, ElasticLogits, check_elastic
from dlm.samplers.rows import RowRun

if TYPE_CHECKING:
    from dlm.families.base import Family
    from dlm.generation import SamplerSettings

LLADA_REMASKING = ("low_confidence", "random")


def llada_transfer_counts(mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to reveal at each of `steps` steps, per row: floor(m / steps), the remainder spread over the first
    steps (10 masks in 4 steps: 3, 3, 2, 2). `mask_counts` [B] -> [B, steps] int64."""
    mask_counts = mask_counts.long()
    base = mask_counts // steps
    remainder = mask_counts % steps
    extra = torch.arange(steps, device=mask_counts.device) < remainder.unsqueeze(-1)
    return base.unsqueeze(-1) + extra.long()


def growing(grow_canvas: int, gen_length: int) -> bool:
    """Whether `grow_canvas` grows the canvas (0, or at least `gen_length`, decodes the whole window at once)."""
    return 0 < grow_canvas < gen_length


def check_growth(steps: int, gen_length: int, grow_canvas: int) -> None:
    """A growing canvas (`grow_canvas` tokens at a time; 0, or at least `gen_length`, = off) must divide `gen_length` into chunks that share
    `steps` evenly."""
    if grow_canvas < 0:
        raise SamplingError(f"grow_canvas must be >= 0 (0 decodes the whole window at once), got {grow_canvas}")
    if not growing(grow_canvas, gen_length):
        return
    if gen_length % grow_canvas:
        raise SamplingError(
            f"grow_canvas={grow_canvas} must divide gen_length={gen_length}; values that work: "
            f"{', '.join(map(str, divisors(gen_length)))} (0 turns growing off)"
        )
    chunks = gen_length // grow_canvas
    if steps % chunks:
        raise SamplingError(
            f"steps={steps} must be a multiple of gen_length/grow_canvas = {chunks} (each chunk of the growing "
            f"canvas gets the same number of steps): use steps={max(chunks, steps // chunks * chunks)}"
        )


def check_llada_settings(
    steps: int, gen_length: int, block_length: int, temperature: float, remasking: str, cfg_scale: float
) -> None:
    if gen_length < 1:
        raise SamplingError(f"gen_length must be at least 1, got {gen_length}")
    check_blocks(steps, gen_length, block_length, "gen_length")
    if remasking not in LLADA_REMASKING:
        raise SamplingError(f"remasking={remasking!r} is unknown; choose one of: {', '.join(LLADA_REMASKING)}")
    if temperature < 0:
        raise SamplingError(f"temperature must be >= 0, got {temperature}")
    if cfg_scale < 0:
        raise SamplingError(f"cfg_scale must be >= 0 (0 turns classifier-free guidance off), got {cfg_scale}")


@dataclass(frozen=True)
class _LladaChoice:
    """How a LLaDA step picks tokens and ranks positions."""

    temperature: float
    remasking: str
    banned: tuple[int, ...]  # never chosen
    last: tuple[int, ...]  # revealed after every other position of the block
    generator: torch.Generator | None

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, ranking confidence, probability of each token) for block logits [B, n, V]."""
        if self.banned:
            logits[..., list(self.banned)] = -torch.inf
        if self.temperature > 0:
            noise = rand(logits.shape, self.generator, logits.device, torch.float64)
            x0 = (logits.double().exp() / (-noise.log()) ** self.temperature).argmax(-1)
        else:
            x0 = logits.argmax(-1)
        probability = torch.softmax(logits, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        confidence = probability if self.remasking == "low_confidence" else rand(x0.shape, self.generator, x0.device)
        for token in self.last:
            # probabilities and noise lie in [0, 1]: -2 ranks these last but ahead of revealed positions
            confidence = torch.where(x0 == token, confidence - 2.0, confidence)
        return x0, confidence, probability


def _stochastic_count(
    masked: torch.Tensor, steps_left: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Per row, a Binomial(masks left, 1 / steps left) count: the linear schedule's expected count, at random;
    a row's last step reveals everything left."""
    if bool((steps_left == 1).all()):
        return masked.sum(-1)
    drawn = ((rand(masked.shape, generator, masked.device) < 1 / steps_left[:, None]) & masked).sum(-1)
    return torch.where(steps_left == 1, masked.sum(-1), drawn)


@dataclass(kw_only=True)
class _LladaRun(RowRun):
    """One LLaDA sampling run: the canvas (`RowRun`: each row at its own block) and how tokens are chosen."""

    choose: _LladaChoice
    cfg_scale: float
    threshold: float | None
    stochastic: bool

    def __post_init__(self) -> None:
        super().__post_init__()
        self.counts = torch.zeros(self.x.shape[0], self.steps, dtype=torch.long, device=self.x.device)

    def _enter(self, rows: torch.Tensor) -> None:
        masks = (self.x[rows[:, None], self.columns(rows)] == self.mask_id).sum(-1)
        self.counts[rows] = llada_transfer_counts(masks, self.steps)

    def _step(self, rows: torch.Tensor, refresh: bool) -> bool:
        columns = self.columns(rows)
        current = self.x[rows[:, None], columns]
        masked = current == self.mask_id
        logits = self.guided_logits(rows, columns[:, 0], refresh)
        if self.stochastic:
            count = _stochastic_count(masked, self.steps - self.step[rows], self.choose.generator)
        else:
            count = self.counts[rows, self.step[rows]]
        x0, confidence, probability = self.choose(logits)
        canvas_confidence = torch.full((len(rows), self.x.shape[1]), -torch.inf, device=self.x.device)
        canvas_confidence.scatter_(1, columns, confidence.masked_fill(~masked, -torch.inf))
        reveal = reveal_top(canvas_confidence, count, self.offsets[rows]).gather(1, columns)
        not_last = confidence >= 0  # tokens ranked last (EOS when suppressed) wait for the schedule
        reveal = parallel_reveal(reveal, masked, probability, self.threshold, not_last) & masked
        self.x[rows[:, None], columns] = torch.where(reveal, x0, current)
        return True

    def guided_logits(self, rows: torch.Tensor, starts: torch.Tensor, refresh: bool) -> torch.Tensor:
        if self.cfg_scale <= 0:
            return self.logits(self.x, rows, starts, refresh)
        unconditional = self.x.clone()
        unconditional[:, : self.prompt_len] = self.mask_id
        both_rows = torch.cat([rows, rows + self.x.shape[0]])
        both = self.logits(torch.cat([self.x, unconditional]), both_rows, starts.repeat(2), refresh)
        cond, uncond = both.chunk(2)
        return uncond + (self.cfg_scale + 1) * (cond - uncond)


@dataclass(frozen=True)
class LladaSampler(DiffusionSampler):
    """LLaDA sampling (official `generate.py`) for a batch of left-padded prompts [B, P].

    The canvas is the prompt followed by `gen_length` masks, filled block by block (`block_length`; smaller than
    `gen_length` is semi-autoregressive) with `steps` split evenly across blocks. Each step reveals, in the current
    block, the `llada_transfer_counts` positions of highest confidence (softmax probability of the chosen token for
    `low_confidence`, uniform noise for `random`); revealed tokens stay. Tokens are the argmax of the logits at
    temperature 0, else of Gumbel-perturbed logits in float64. `cfg_scale` > 0 adds a pass with the prompt masked
    (batched with the conditional one): `uncond + (cfg_scale + 1) * (cond - uncond)`.

    LLaDA Appendix B.4 options for instruct models: `suppress_eos_in_logits` never chooses `eos_id`;
    `suppress_eos_in_confidence` reveals positions whose chosen token is `eos_id` or `eot_id` only after every
    other masked position of the block (lowest confidence, still finite). `eos_id`/`eot_id` are also excluded from
    `generated_tokens`. A step with nothing to reveal in any row (more steps than masks) skips its forward pass.

    Options beyond the official sampler (the defaults leave it exact): `suppress_tokens` are never chosen;
    `infill` [B, gen_length] fixes tokens inside the answer (mask_id where tokens are generated);
    `stochastic_transfer` draws each step's count from Binomial(masks left, 1 / steps left); `cache` ('prefix',
    'dual': Fast-dLLM's approximate key/value caches, refreshed by the first pass of every block);
    `parallel_threshold` also reveals every masked position whose chosen token's probability reaches it, so a block
    can finish in fewer steps (with steps = gen_length this is Fast-dLLM's threshold decoding); `stop_at_end`
    stops each row once its answer has ended (an end token with nothing masked before it; the rest of the row is
    filled with `eos_id`, or `eot_id`), which leaves every answer as it was; `suffix_window` (DPad) keeps only that
    many positions after each row's block in view; `grow_canvas` decodes blocks of that many tokens with nothing
    after them in view and stops each row at its end (`block_length` = grow_canvas, `suffix_window` = 0,
    `stop_at_end`); `cache='elastic'` (LLaDA models; `dlm.samplers.elastic`) runs the whole canvas once per row,
    then a window of two blocks, and recomputes the layers after the first one whose attention drifted below
    `refresh_similarity` (Elastic-Cache). Rows advance on their own (`_LladaRun`); `row_nfe` counts each row's
    passes.
    """

    blockwise: ClassVar[bool] = True  # decodes block by block whatever the cache

    steps: int
    gen_length: int
    block_length: int
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    suppress_eos_in_logits: bool = False
    suppress_eos_in_confidence: bool = False
    stochastic_transfer: bool = False
    cache: str = "none"
    parallel_threshold: float | None = None
    grow_canvas: int = 0
    stop_at_end: bool = False
    suffix_window: int | None = None
    refresh_similarity: float = REFRESH_SIMILARITY

    def __post_init__(self) -> None:
        check_llada_settings(
            self.steps, self.gen_length, self.block_length, self.temperature, self.remasking, self.cfg_scale
        )
        check_growth(self.steps, self.gen_length, self.grow_canvas)
        check_decoding(self.cache, self.parallel_threshold, self.suffix_window)
        check_elastic(
            self.cache, self.refresh_similarity, self.suffix_window, growing(self.grow_canvas, self.gen_length)
        )

    @classmethod
    def from_settings(cls, settings: SamplerSettings, family: Family) -> LladaSampler:
        """The sampler for `settings` (`max_new_tokens` is the generated length); `SamplingError` names a setting
        that cannot work."""
        check_family_cache(settings.cache, family)
        return cls(
            steps=settings.steps,
            gen_length=settings.max_new_tokens,
            block_length=settings.block_length,
            temperature=settings.temperature,
            remasking=settings.remasking,
            cfg_scale=settings.cfg_scale,
            suppress_eos_in_confidence=settings.suppress_eos_confidence,
            cache=settings.cache,
            parallel_threshold=settings.parallel_threshold,
            grow_canvas=settings.grow_canvas,
            stop_at_end=settings.stop_at_end,
            suffix_window=settings.suffix_window,
            refresh_similarity=settings.refresh_similarity,
        )

    @classmethod
    def check_decoding_settings(cls, settings: SamplerSettings, family: Family) -> None:
        """The fast-decoding settings alone (cache, threshold, growing canvas), for callers that set the lengths
        later."""
        check_decoding(settings.cache, settings.parallel_threshold, settings.suffix_window)
        check_family_cache(settings.cache, family)
        check_growth(settings.steps, settings.max_new_tokens, settings.grow_canvas)
        check_elastic(
            settings.cache,
            settings.refresh_similarity,
            settings.suffix_window,
            growing(settings.grow_canvas, settings.max_new_tokens),
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
        steps, gen_length, block_length = self.steps, self.gen_length, self.block_length
        cache, grow_canvas = self.cache, self.grow_canvas
        if (grow_canvas or self.stop_at_end) and eos_id is None and eot_id is None:
            setting = "grow_canvas" if grow_canvas else "stop_at_end"
            raise SamplingError(f"{setting} needs eos_id or eot_id: a row stops once its answer holds one")
        check_model_cache(cache, model)
        offsets = check_prompt(prompt_ids, attention_mask, mask_id)
        if (self.suppress_eos_in_logits and eos_id is None) or (
            self.suppress_eos_in_confidence and eos_id is None and eot_id is None
        ):
            raise SamplingError("suppressing EOS needs eos_id (and eot_id for the confidence option)")
        canvas_mask = padding_mask(attention_mask, gen_length)
        if self.cfg_scale > 0 and canvas_mask is not None:
            canvas_mask = torch.cat([canvas_mask, canvas_mask])
        end_ids = tuple(i for i in (eos_id, eot_id) if i is not None)
        grows = growing(grow_canvas, gen_length)
        block_length = grow_canvas if grows else block_length
        window = 0 if grows else self.suffix_window
        run = _LladaRun(
            x=masked_canvas(prompt_ids, gen_length, mask_id, infill),
            prompt_len=prompt_ids.shape[1],
            offsets=offsets,
            mask_id=mask_id,
            logits=ElasticLogits(model, canvas_mask, block_length, self.refresh_similarity, mask_id)
            if cache == "elastic"
            else BlockLogits(model, canvas_mask, cache, False, block_length, window),
            choose=_LladaChoice(
                self.temperature,
                self.remasking,
                banned=(*suppress_tokens, *([eos_id] if self.suppress_eos_in_logits else [])),
                last=end_ids if self.suppress_eos_in_confidence else (),
                generator=generator,
            ),
            cfg_scale=self.cfg_scale,
            threshold=self.parallel_threshold,
            stochastic=self.stochastic_transfer,
            blocks=gen_length // block_length,
            steps=steps // (gen_length // block_length),
            end_ids=end_ids if grows or self.stop_at_end else (),
            on_step=on_step,
            pass_cost=2 if self.cfg_scale > 0 else 1,
        )
        row_nfe = run.decode()
        generated = run.x[:, run.prompt_len :]
        return SampleOutput(
            sequences=run.x,
            nfe=int(row_nfe.max()),
            generated_tokens=count_generated(generated, (eos_id, eot_id)),
            row_nfe=row_nfe,
        )


def generate_llada(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    *,
    steps: int,
    gen_length: int,
    block_length: int,
    mask_id: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    attention_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    eot_id: int | None = None,
    suppress_eos_in_logits: bool = False,
    suppress_eos_in_confidence: bool = False,
    suppress_tokens: Sequence[int] = (),
    infill: torch.Tensor | None = None,
    stochastic_transfer: bool = False,
    cache: str = "none",
    parallel_threshold: float | None = None,
    grow_canvas: int = 0,
    stop_at_end: bool = False,
    suffix_window: int | None = None,
    refresh_similarity: float = REFRESH_SIMILARITY,
    generator: torch.Generator | None = None,
) -> SampleOutput:
    """LLaDA sampling in one call: a `LladaSampler` with these settings, run on `prompt_ids`."""
    sampler = LladaSampler(
        steps=steps,
        gen_length=gen_length,
        block_length=block_length,
        temperature=temperature,
        remasking=remasking,
        cfg_scale=cfg_scale,
        suppress_eos_in_logits=suppress_eos_in_logits,
        suppress_eos_in_confidence=suppress_eos_in_confidence,
        stochastic_transfer=stochastic_transfer,
        cache=cache,
        parallel_threshold=parallel_threshold,
        grow_canvas=grow_canvas,
        stop_at_end=stop_at_end,
        suffix_window=suffix_window,
        refresh_similarity=refresh_similarity,
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
