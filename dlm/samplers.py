"""Batched samplers of masked-diffusion LMs: LLaDA's semi-autoregressive low-confidence remasking and Dream's
whole-canvas denoising, with the semantics of the official `generate.py` and `diffusion_generate`.

Both take a batch of left-padded prompts (`attention_mask` 0 on the padding), append masks, and denoise them with
one batched forward pass per step that computes the output head only where tokens can be revealed (the current
block for LLaDA, the generated region for Dream). At temperature 0 every row gets the tokens that a one-prompt
run of the official algorithm gives it: RoPE attention depends only on relative positions and padded keys are
hidden, so left padding changes nothing but rounding.

Randomness (Gumbel noise, random remasking, token sampling) comes from the optional `generator` only, so runs are
reproducible; it does not replay the official code's global random stream.

Fast decoding (off by default, which keeps the samplers exact), after Fast-dLLM: `cache` 'prefix' or 'dual' runs
the whole canvas once per block (the refresh) and then only the block and what follows it, or the block alone,
against the refreshed keys and values (`dlm.models.cache`; LLaDA and Dream models only; Dream then decodes block
by block too); `parallel_threshold` also reveals every position whose chosen token is at least that probable.
Each run is a `_LladaRun` or `_DreamRun` that denoises one block at a time with a `_BlockLogits` (the forward pass,
cached or not) and a choice rule (`_LladaChoice`, `_DreamChoice`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm.errors import DlmError
from dlm.forward import logits_at_positions, unwrap_model
from dlm.models import DreamModel, LLaDAModelLM
from dlm.models.cache import CanvasCache

LLADA_REMASKING = ("low_confidence", "random")
DREAM_ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")
ENTROPY_EPS = 1e-10  # as the official Dream code: keeps log(0) finite for filtered-out tokens


class SamplingError(DlmError, ValueError):
    """Sampler settings or prompts that cannot work; the message names the setting and what would work."""


@dataclass
class SampleOutput:
    """`sequences` [B, prompt + generated] (prompt included, padding as given); `nfe`: network evaluations per
    sequence (a classifier-free-guidance step counts two); `generated_tokens` [B]: generated tokens that are not
    EOS/EOT, the numerator of tokens per second."""

    sequences: torch.Tensor
    nfe: int
    generated_tokens: torch.Tensor


def llada_transfer_counts(mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to reveal at each of `steps` steps, per row: floor(m / steps), the remainder spread over the first
    steps (10 masks in 4 steps: 3, 3, 2, 2). `mask_counts` [B] -> [B, steps] int64."""
    mask_counts = mask_counts.long()
    base = mask_counts // steps
    remainder = mask_counts % steps
    extra = torch.arange(steps, device=mask_counts.device) < remainder.unsqueeze(-1)
    return base.unsqueeze(-1) + extra.long()


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _check_blocks(steps: int, length: int, block_length: int, name: str) -> None:
    """`block_length` divides the generated length (`name`) and `steps` is a multiple of the number of blocks."""
    if block_length < 1 or length % block_length:
        raise SamplingError(
            f"block_length={block_length} must divide {name}={length}; block lengths that work: "
            f"{', '.join(map(str, _divisors(length)))}"
        )
    blocks = length // block_length
    if steps < 1 or steps % blocks:
        lower = max(blocks, steps // blocks * blocks)
        raise SamplingError(
            f"steps={steps} must be a positive multiple of the number of blocks, {name}/block_length = "
            f"{length}/{block_length} = {blocks}: use steps={lower} or steps={lower + blocks} (any multiple of "
            f"{blocks}), or change block_length"
        )


def check_growth(steps: int, gen_length: int, grow_canvas: int) -> None:
    """A growing canvas (`grow_canvas` tokens at a time; 0, or at least `gen_length`, = off) must divide `gen_length` into chunks that share
    `steps` evenly."""
    if grow_canvas < 0:
        raise SamplingError(f"grow_canvas must be >= 0 (0 decodes the whole window at once), got {grow_canvas}")
    if grow_canvas == 0 or grow_canvas >= gen_length:
        return
    if gen_length % grow_canvas:
        raise SamplingError(
            f"grow_canvas={grow_canvas} must divide gen_length={gen_length}; values that work: "
            f"{', '.join(map(str, _divisors(gen_length)))} (0 turns growing off)"
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
    _check_blocks(steps, gen_length, block_length, "gen_length")
    if remasking not in LLADA_REMASKING:
        raise SamplingError(f"remasking={remasking!r} is unknown; choose one of: {', '.join(LLADA_REMASKING)}")
    if temperature < 0:
        raise SamplingError(f"temperature must be >= 0, got {temperature}")
    if cfg_scale < 0:
        raise SamplingError(f"cfg_scale must be >= 0 (0 turns classifier-free guidance off), got {cfg_scale}")


def _check_prompt(prompt_ids: torch.Tensor, attention_mask: torch.Tensor | None, mask_id: int) -> torch.Tensor:
    """Validate the prompts; return each row's left-padding length [B]."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise SamplingError(
            f"prompt_ids must be 2-D [batch, length] with at least one token, got shape {tuple(prompt_ids.shape)}"
        )
    hits = (prompt_ids == mask_id).nonzero()
    if len(hits):
        row, col = hits[0].tolist()
        raise SamplingError(
            f"prompt row {row} holds the mask token id {mask_id} at position {col}: prompts (and their padding) must "
            "not contain the mask token; pad with EOS or the pad token instead"
        )
    if attention_mask is None:
        return torch.zeros(prompt_ids.shape[0], dtype=torch.long, device=prompt_ids.device)
    if attention_mask.shape != prompt_ids.shape:
        raise SamplingError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from prompt_ids shape "
            f"{tuple(prompt_ids.shape)}"
        )
    keep = attention_mask.bool()
    if bool((keep[:, :-1] & ~keep[:, 1:]).any()) or not bool(keep[:, -1].all()):
        raise SamplingError(
            "prompts must be left-padded (attention_mask 0...0 1...1 in every row, ending with a real token): "
            "set tokenizer.padding_side = 'left'"
        )
    return (~keep).sum(-1)


def _padding_mask(attention_mask: torch.Tensor | None, gen_length: int) -> torch.Tensor | None:
    """The canvas' attention mask, or None when nothing is padded (the model then attends everywhere)."""
    if attention_mask is None or bool(attention_mask.bool().all()):
        return None
    ones = attention_mask.new_ones(attention_mask.shape[0], gen_length)
    return torch.cat([attention_mask, ones], dim=1)


def _rand(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform [0, 1) noise drawn on the generator's device (so a CPU generator seeds CUDA runs too)."""
    source = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)


def _multinomial(probs: torch.Tensor, num_samples: int, generator: torch.Generator | None) -> torch.Tensor:
    source = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(source), num_samples, generator=generator).to(probs.device)


def _reveal_top(confidence: torch.Tensor, counts: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boolean [B, T]: the `counts[b]` most confident positions of each row b.

    `confidence` covers the whole canvas (-inf where nothing may be revealed). Each row runs `torch.topk` on its
    canvas without the left padding (`offsets[b]` positions), as the official code does on a one-prompt canvas:
    ties (saturated probabilities are common) then break exactly as there, whatever the batch.
    """
    reveal = torch.zeros_like(confidence, dtype=torch.bool)
    for row, (count, offset) in enumerate(zip(counts.tolist(), offsets.tolist(), strict=True)):
        if count:
            reveal[row, offset + torch.topk(confidence[row, offset:], count).indices] = True
    return reveal


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _count_generated(generated: torch.Tensor, end_ids: Sequence[int | None]) -> torch.Tensor:
    keep = torch.ones_like(generated, dtype=torch.bool)
    for end_id in end_ids:
        if end_id is not None:
            keep &= generated != end_id
    return keep.sum(dim=-1)


CACHE_MODES = ("none", "prefix", "dual")
CACHE_FAMILIES = ("llada", "dream")  # their dlm.models forward records and replays a CanvasCache


def check_decoding(cache: str, parallel_threshold: float | None, family: str) -> None:
    """Validate the fast-decoding settings for a model of `family` (a family name, or the model's class name)."""
    if cache not in CACHE_MODES:
        raise SamplingError(f"cache={cache!r} is unknown; choose one of: {', '.join(CACHE_MODES)}")
    if cache != "none" and family not in CACHE_FAMILIES:
        raise SamplingError(
            f"cache={cache!r} needs a model that can return and accept a key/value cache, which the "
            f"{' and '.join(CACHE_FAMILIES)} families can; {family} cannot: use cache='none'"
        )
    if parallel_threshold is not None and not 0 < parallel_threshold <= 1:
        raise SamplingError(
            f"parallel_threshold must be in (0, 1] (a probability; unset for the exact schedule), got "
            f"{parallel_threshold}"
        )


def _cache_family(model: torch.nn.Module) -> str:
    base = unwrap_model(model)
    if isinstance(base, LLaDAModelLM):
        return "llada"
    return "dream" if isinstance(base, DreamModel) else type(base).__name__


def _canvas(prompt_ids: torch.Tensor, length: int, mask_id: int, infill: torch.Tensor | None) -> torch.Tensor:
    """The prompt followed by `length` masks, or by `infill` [B, length] (mask_id where tokens are to be generated,
    fixed tokens elsewhere)."""
    if infill is None:
        infill = prompt_ids.new_full((prompt_ids.shape[0], length), mask_id)
    elif infill.shape != (prompt_ids.shape[0], length):
        raise SamplingError(
            f"infill must have shape [batch, generated length] = [{prompt_ids.shape[0]}, {length}] (mask id where "
            f"tokens are to be generated), got {tuple(infill.shape)}"
        )
    return torch.cat([prompt_ids, infill.to(prompt_ids)], dim=1)


class _BlockLogits:
    """Logits [rows, n, V] (at least float32) predicting the tokens of canvas block [start, end); one forward pass
    per call.

    `cache` 'none' runs the whole canvas every time (the exact samplers). With 'prefix' or 'dual', a `refresh` call
    runs the whole canvas and records every layer's keys and values; the calls after it run only the block and
    everything after it ('prefix') or the block alone ('dual') and attend to the recorded keys elsewhere. Dream reads
    token i's logits at position i - 1 (`shift`), so its span starts one position earlier.
    """

    def __init__(self, model: torch.nn.Module, attention_mask: torch.Tensor | None, cache: str, shift: bool) -> None:
        self.model, self.attention_mask, self.mode, self.shift = model, attention_mask, cache, shift
        self.cache = CanvasCache()

    def __call__(self, x: torch.Tensor, start: int, end: int, refresh: bool) -> torch.Tensor:
        if self.mode == "none" or refresh:
            positions = torch.zeros_like(x, dtype=torch.bool)
            positions[:, start:end] = True
            recording = {}
            if self.mode != "none":
                self.cache = CanvasCache()
                recording = {"past_key_values": self.cache}
            logits = logits_at_positions(self.model, x, self.attention_mask, positions, self.shift, **recording)
        else:
            span_start = start - int(self.shift)
            span_end = end if self.mode == "dual" else x.shape[1]
            self.cache.span_start = span_start
            positions = torch.zeros(x.shape[0], span_end - span_start, dtype=torch.bool, device=x.device)
            positions[:, : end - start] = True
            span = x[:, span_start:span_end]
            logits = logits_at_positions(self.model, span, self.attention_mask, positions, past_key_values=self.cache)
        return _at_least_float32(logits).reshape(x.shape[0], end - start, -1)


def _parallel_reveal(
    reveal: torch.Tensor,
    masked: torch.Tensor,
    probability: torch.Tensor,
    threshold: float | None,
    eligible: torch.Tensor | None = None,
) -> torch.Tensor:
    """`reveal` plus every masked position whose chosen token's probability reaches `threshold` (and that is
    `eligible`, if given)."""
    if threshold is None:
        return reveal
    confident = masked & (probability >= threshold)
    return reveal | (confident if eligible is None else confident & eligible)


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
            noise = _rand(logits.shape, self.generator, logits.device, torch.float64)
            x0 = (logits.double().exp() / (-noise.log()) ** self.temperature).argmax(-1)
        else:
            x0 = logits.argmax(-1)
        probability = torch.softmax(logits, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        confidence = probability if self.remasking == "low_confidence" else _rand(x0.shape, self.generator, x0.device)
        for token in self.last:
            # probabilities and noise lie in [0, 1]: -2 ranks these last but ahead of revealed positions
            confidence = torch.where(x0 == token, confidence - 2.0, confidence)
        return x0, confidence, probability


def _stochastic_count(masked: torch.Tensor, steps_left: int, generator: torch.Generator | None) -> torch.Tensor:
    """Per row, a Binomial(masks left, 1 / steps left) count: the linear schedule's expected count, at random;
    the last step reveals everything left."""
    if steps_left == 1:
        return masked.sum(-1)
    return ((_rand(masked.shape, generator, masked.device) < 1 / steps_left) & masked).sum(-1)


@dataclass
class _LladaRun:
    """One LLaDA sampling run: the canvas, how logits are computed and how tokens are chosen."""

    x: torch.Tensor
    prompt_len: int
    offsets: torch.Tensor
    mask_id: int
    logits: _BlockLogits
    choose: _LladaChoice
    cfg_scale: float
    threshold: float | None
    stochastic: bool

    def block(self, start: int, end: int, steps: int) -> int:
        """Denoise block [start, end) in at most `steps` forward passes, the first of which refreshes the cache;
        return the network evaluations."""
        counts = llada_transfer_counts((self.x[:, start:end] == self.mask_id).sum(-1), steps)
        nfe = 0
        for step in range(steps):
            masked = self.x[:, start:end] == self.mask_id
            if not bool(masked.any()):
                continue
            logits = self.guided_logits(start, end, refresh=nfe == 0)
            nfe += 2 if self.cfg_scale > 0 else 1
            count = (
                _stochastic_count(masked, steps - step, self.choose.generator) if self.stochastic else counts[:, step]
            )
            self.reveal(logits, masked, start, end, count)
        return nfe

    def guided_logits(self, start: int, end: int, refresh: bool) -> torch.Tensor:
        if self.cfg_scale <= 0:
            return self.logits(self.x, start, end, refresh)
        unconditional = self.x.clone()
        unconditional[:, : self.prompt_len] = self.mask_id
        cond, uncond = self.logits(torch.cat([self.x, unconditional]), start, end, refresh).chunk(2)
        return uncond + (self.cfg_scale + 1) * (cond - uncond)

    def reveal(self, logits: torch.Tensor, masked: torch.Tensor, start: int, end: int, count: torch.Tensor) -> None:
        x0, confidence, probability = self.choose(logits)
        canvas_confidence = torch.full(self.x.shape, -torch.inf, device=self.x.device)
        canvas_confidence[:, start:end] = confidence.masked_fill(~masked, -torch.inf)
        reveal = _reveal_top(canvas_confidence, count, self.offsets)[:, start:end]
        not_last = confidence >= 0  # tokens ranked last (EOS when suppressed) wait for the schedule
        reveal = _parallel_reveal(reveal, masked, probability, self.threshold, not_last) & masked
        self.x[:, start:end] = torch.where(reveal, x0, self.x[:, start:end])


@torch.no_grad()
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
    generator: torch.Generator | None = None,
) -> SampleOutput:
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
    can finish in fewer steps (with steps = gen_length this is Fast-dLLM's threshold decoding); `grow_canvas`
    (see `_grow`) decodes a canvas that grows that many tokens at a time and stops once every row has ended.
    """
    check_llada_settings(steps, gen_length, block_length, temperature, remasking, cfg_scale)
    check_growth(steps, gen_length, grow_canvas)
    if grow_canvas and eos_id is None and eot_id is None:
        raise SamplingError("grow_canvas needs eos_id or eot_id: it stops once every row holds one")
    check_decoding(cache, parallel_threshold, _cache_family(model))
    offsets = _check_prompt(prompt_ids, attention_mask, mask_id)
    if (suppress_eos_in_logits and eos_id is None) or (
        suppress_eos_in_confidence and eos_id is None and eot_id is None
    ):
        raise SamplingError("suppressing EOS needs eos_id (and eot_id for the confidence option)")
    canvas_mask = _padding_mask(attention_mask, gen_length)
    if cfg_scale > 0 and canvas_mask is not None:
        canvas_mask = torch.cat([canvas_mask, canvas_mask])
    run = _LladaRun(
        x=_canvas(prompt_ids, gen_length, mask_id, infill),
        prompt_len=prompt_ids.shape[1],
        offsets=offsets,
        mask_id=mask_id,
        logits=_BlockLogits(model, canvas_mask, cache, shift=False),
        choose=_LladaChoice(
            temperature,
            remasking,
            banned=(*suppress_tokens, *([eos_id] if suppress_eos_in_logits else [])),
            last=tuple(i for i in (eos_id, eot_id) if i is not None) if suppress_eos_in_confidence else (),
            generator=generator,
        ),
        cfg_scale=cfg_scale,
        threshold=parallel_threshold,
        stochastic=stochastic_transfer,
    )
    if 0 < grow_canvas < gen_length:
        end_ids = tuple(i for i in (eos_id, eot_id) if i is not None)
        nfe = _grow(run, model, canvas_mask, cache, steps // (gen_length // grow_canvas), grow_canvas, end_ids)
    else:
        steps_per_block = steps // (gen_length // block_length)
        starts = range(run.prompt_len, run.prompt_len + gen_length, block_length)
        nfe = sum(run.block(start, start + block_length, steps_per_block) for start in starts)
    generated = run.x[:, run.prompt_len :]
    return SampleOutput(sequences=run.x, nfe=nfe, generated_tokens=_count_generated(generated, (eos_id, eot_id)))


def _grow(
    run: _LladaRun,
    model: torch.nn.Module,
    canvas_mask: torch.Tensor | None,
    cache: str,
    steps: int,
    chunk: int,
    end_ids: tuple[int, ...],
) -> int:
    """Decode a canvas that holds the prompt, the chunks decoded so far and one new chunk of masks (one block,
    `steps` passes), never the masks beyond; stop once every row holds an end token and fill the rest with the
    first of `end_ids`. A model trained on rows padded only to their batch's longest one never saw masks far
    beyond its answers; this keeps them out of its view. Return the network evaluations."""
    canvas = run.x
    nfe = 0
    for end in range(run.prompt_len + chunk, canvas.shape[1] + 1, chunk):
        run.x = canvas[:, :end]  # a view: the run writes into the whole canvas
        mask = None if canvas_mask is None else canvas_mask[:, :end]
        run.logits = _BlockLogits(model, mask, cache, shift=False)
        nfe += run.block(end - chunk, end, steps)
        ended = torch.isin(canvas[:, run.prompt_len : end], torch.tensor(end_ids, device=canvas.device)).any(-1)
        if bool(ended.all()):
            canvas[:, end:] = end_ids[0]
            break
    run.x = canvas
    return nfe


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
        x0 = _multinomial(flat, 1, generator).reshape(probs.shape[:-1])
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
    _check_blocks(steps, max_new_tokens, block_length, "max_new_tokens")
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


@dataclass
class _DreamRun:
    """One Dream sampling run: the canvas, how logits are computed and how tokens are chosen."""

    x: torch.Tensor
    offsets: torch.Tensor
    mask_id: int
    logits: _BlockLogits
    choose: _DreamChoice
    alg_temp: float | None
    eps: float
    threshold: float | None

    def block(self, start: int, end: int, steps: int) -> int:
        """Denoise block [start, end) over times linspace(1, eps, steps + 1) (each block's first pass refreshes the
        cache); return the network evaluations."""
        # float32 on the canvas' device as the official code, so int(masks * (1 - s/t)) rounds the same way
        times = torch.linspace(1, self.eps, steps + 1, device=self.x.device)
        nfe = 0
        for step in range(steps):
            masked = self.x[:, start:end] == self.mask_id
            plan = self.plan(masked, times[step], times[step + 1], step == steps - 1)
            if plan is None:
                continue
            logits = self.logits(self.x, start, end, refresh=nfe == 0)
            nfe += 1
            x0, confidence, probability = self.choose(logits)
            reveal = plan if self.choose.alg == "origin" else self.rank(confidence, masked, plan, start, end)
            reveal = _parallel_reveal(reveal, masked, probability, self.threshold) & masked
            self.x[:, start:end] = torch.where(reveal, x0, self.x[:, start:end])
        return nfe

    def plan(self, masked: torch.Tensor, t: torch.Tensor, s: torch.Tensor, last: bool) -> torch.Tensor | None:
        """`origin`: the positions to reveal (each with probability 1 - s/t); other algorithms: how many per row
        (at least one with a parallel threshold). None when the step has nothing to do."""
        if self.choose.alg == "origin":
            if not bool(masked.any()):
                return None
            return masked if last else masked & (_rand(masked.shape, self.choose.generator, masked.device) < 1 - s / t)
        left = masked.sum(-1)
        counts = left if last else (left.float() * (1 - s / t)).long()
        if self.threshold is not None:
            counts = torch.maximum(counts, (left > 0).long())
        return counts if bool(counts.any()) else None

    def rank(
        self, confidence: torch.Tensor, masked: torch.Tensor, counts: torch.Tensor, start: int, end: int
    ) -> torch.Tensor:
        """The `counts` masked positions of highest confidence per row, or with `alg_temp` a sample of them."""
        canvas_confidence = torch.full(self.x.shape, -torch.inf, device=self.x.device)
        canvas_confidence[:, start:end] = confidence.masked_fill(~masked, -torch.inf)
        if not self.alg_temp:
            return _reveal_top(canvas_confidence, counts, self.offsets)[:, start:end]
        weights = F.softmax(canvas_confidence[:, start:end] / self.alg_temp, dim=-1)
        reveal = torch.zeros_like(masked)
        for row in range(masked.shape[0]):
            if counts[row]:
                reveal[row, _multinomial(weights[row], int(counts[row]), self.choose.generator)] = True
        return reveal


@torch.no_grad()
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
    generator: torch.Generator | None = None,
) -> SampleOutput:
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
    reaches it, and at least one position per step.
    """
    check_dream_settings(steps, max_new_tokens, temperature, top_p, top_k, alg, alg_temp, eps)
    block_length = block_length or max_new_tokens
    check_dream_blocks(steps, max_new_tokens, block_length, alg, parallel_threshold)
    check_decoding(cache, parallel_threshold, _cache_family(model))
    offsets = _check_prompt(prompt_ids, attention_mask, mask_id)
    prompt_len = prompt_ids.shape[1]
    run = _DreamRun(
        x=_canvas(prompt_ids, max_new_tokens, mask_id, infill),
        offsets=offsets,
        mask_id=mask_id,
        logits=_BlockLogits(model, _padding_mask(attention_mask, max_new_tokens), cache, shift=True),
        choose=_DreamChoice(temperature, top_p, top_k, alg, tuple(suppress_tokens), generator),
        alg_temp=alg_temp,
        eps=eps,
        threshold=parallel_threshold,
    )
    steps_per_block = steps // (max_new_tokens // block_length)
    starts = range(prompt_len, prompt_len + max_new_tokens, block_length)
    nfe = sum(run.block(start, start + block_length, steps_per_block) for start in starts)
    generated = run.x[:, prompt_len:]
    return SampleOutput(sequences=run.x, nfe=nfe, generated_tokens=_count_generated(generated, (eos_id, eot_id)))
