"""Batched samplers of masked-diffusion LMs: LLaDA's semi-autoregressive low-confidence remasking and Dream's
whole-canvas denoising, with the semantics of the official `generate.py` and `diffusion_generate`.

Both take a batch of left-padded prompts (`attention_mask` 0 on the padding), append masks, and denoise them with
one batched forward pass per step that computes the output head only where tokens can be revealed (the current
block for LLaDA, the generated region for Dream). At temperature 0 every row gets the tokens that a one-prompt
run of the official algorithm gives it: RoPE attention depends only on relative positions and padded keys are
hidden, so left padding changes nothing but rounding.

Randomness (Gumbel noise, random remasking, token sampling) comes from the optional `generator` only, so runs are
reproducible; it does not replay the official code's global random stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm.errors import DlmError
from dlm.forward import logits_at_positions

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


def check_llada_settings(
    steps: int, gen_length: int, block_length: int, temperature: float, remasking: str, cfg_scale: float
) -> None:
    if gen_length < 1:
        raise SamplingError(f"gen_length must be at least 1, got {gen_length}")
    if block_length < 1 or gen_length % block_length:
        raise SamplingError(
            f"block_length={block_length} must divide gen_length={gen_length}; block lengths that work: "
            f"{', '.join(map(str, _divisors(gen_length)))}"
        )
    blocks = gen_length // block_length
    if steps < 1 or steps % blocks:
        lower = max(blocks, steps // blocks * blocks)
        raise SamplingError(
            f"steps={steps} must be a positive multiple of the number of blocks, gen_length/block_length = "
            f"{gen_length}/{block_length} = {blocks}: use steps={lower} or steps={lower + blocks} (any multiple of "
            f"{blocks}), or change block_length"
        )
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
    """
    check_llada_settings(steps, gen_length, block_length, temperature, remasking, cfg_scale)
    offsets = _check_prompt(prompt_ids, attention_mask, mask_id)
    if (suppress_eos_in_logits and eos_id is None) or (
        suppress_eos_in_confidence and eos_id is None and eot_id is None
    ):
        raise SamplingError("suppressing EOS needs eos_id (and eot_id for the confidence option)")
    batch, prompt_len = prompt_ids.shape
    device = prompt_ids.device
    x = torch.cat([prompt_ids, prompt_ids.new_full((batch, gen_length), mask_id)], dim=1)
    canvas_mask = _padding_mask(attention_mask, gen_length)
    if cfg_scale > 0:
        unconditional = x.clone()
        unconditional[:, :prompt_len] = mask_id
        pair_mask = None if canvas_mask is None else torch.cat([canvas_mask, canvas_mask])
    suppressed = [i for i in (eos_id, eot_id) if i is not None] if suppress_eos_in_confidence else []

    blocks = gen_length // block_length
    steps_per_block = steps // blocks
    nfe = 0
    for block in range(blocks):
        start = prompt_len + block * block_length
        end = start + block_length
        positions = torch.zeros_like(x, dtype=torch.bool)
        positions[:, start:end] = True
        counts = llada_transfer_counts((x[:, start:end] == mask_id).sum(-1), steps_per_block)
        for step in range(steps_per_block):
            if not bool(counts[:, step].any()):
                continue
            if cfg_scale > 0:
                unconditional[:, prompt_len:] = x[:, prompt_len:]
                pair = logits_at_positions(
                    model, torch.cat([x, unconditional]), pair_mask, torch.cat([positions, positions]), False
                )
                cond, uncond = _at_least_float32(pair).reshape(2 * batch, block_length, -1).chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
                nfe += 2
            else:
                logits = _at_least_float32(logits_at_positions(model, x, canvas_mask, positions, False))
                logits = logits.reshape(batch, block_length, -1)
                nfe += 1
            if suppress_eos_in_logits:
                logits[..., eos_id] = -torch.inf

            if temperature > 0:
                noise = _rand(logits.shape, generator, device, torch.float64)
                x0 = (logits.double().exp() / (-noise.log()) ** temperature).argmax(-1)
            else:
                x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                confidence = torch.softmax(logits, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            else:
                confidence = _rand(x0.shape, generator, device)
            for token in suppressed:
                # probabilities and noise lie in [0, 1]: -2 ranks these last but ahead of revealed positions
                confidence = torch.where(x0 == token, confidence - 2.0, confidence)

            current = x[:, start:end]
            masked = current == mask_id
            canvas_confidence = torch.full(x.shape, -torch.inf, device=device)
            canvas_confidence[:, start:end] = confidence.masked_fill(~masked, -torch.inf)
            reveal = _reveal_top(canvas_confidence, counts[:, step], offsets)[:, start:end] & masked
            x[:, start:end] = torch.where(reveal, x0, current)

    return SampleOutput(sequences=x, nfe=nfe, generated_tokens=_count_generated(x[:, prompt_len:], (eos_id, eot_id)))


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
    """
    check_dream_settings(steps, max_new_tokens, temperature, top_p, top_k, alg, alg_temp, eps)
    offsets = _check_prompt(prompt_ids, attention_mask, mask_id)
    batch, prompt_len = prompt_ids.shape
    device = prompt_ids.device
    x = torch.cat([prompt_ids, prompt_ids.new_full((batch, max_new_tokens), mask_id)], dim=1)
    canvas_mask = _padding_mask(attention_mask, max_new_tokens)
    positions = torch.zeros_like(x, dtype=torch.bool)
    positions[:, prompt_len:] = True
    # float32 on the canvas' device as the official code, so int(masks * (1 - s/t)) rounds the same way
    times = torch.linspace(1, eps, steps + 1, device=device)

    nfe = 0
    for step in range(steps):
        generated = x[:, prompt_len:]
        masked = generated == mask_id
        t, s = times[step], times[step + 1]
        last = step == steps - 1
        if alg == "origin":
            if not bool(masked.any()):
                continue
            reveal = masked if last else masked & (_rand(masked.shape, generator, device) < 1 - s / t)
        else:
            left = masked.sum(-1)
            counts = left if last else (left.float() * (1 - s / t)).long()
            if not bool(counts.any()):
                continue
        logits = _at_least_float32(logits_at_positions(model, x, canvas_mask, positions, True))
        logits = logits.reshape(batch, max_new_tokens, -1)
        nfe += 1
        probs, x0, confidence = _dream_choose(logits, temperature, top_p, top_k, generator)
        if alg != "origin":
            if alg == "topk_margin":
                best_two = probs.topk(2, dim=-1).values
                confidence = best_two[..., 0] - best_two[..., 1]
            elif alg == "entropy":
                confidence = (probs * (probs + ENTROPY_EPS).log()).sum(-1)
            canvas_confidence = torch.full(x.shape, -torch.inf, device=device)
            canvas_confidence[:, prompt_len:] = confidence.masked_fill(~masked, -torch.inf)
            if not alg_temp:
                reveal = _reveal_top(canvas_confidence, counts, offsets)[:, prompt_len:]
            else:
                weights = F.softmax(canvas_confidence[:, prompt_len:] / alg_temp, dim=-1)
                reveal = torch.zeros_like(masked)
                for row in range(batch):
                    if counts[row]:
                        reveal[row, _multinomial(weights[row], int(counts[row]), generator)] = True
            reveal &= masked
        x[:, prompt_len:] = torch.where(reveal, x0, generated)

    return SampleOutput(sequences=x, nfe=nfe, generated_tokens=_count_generated(x[:, prompt_len:], (eos_id, eot_id)))
