"""Per-token log-probability estimates of GRPO completions under a masked diffusion LM.

A diffusion LM has no exact per-token likelihood, so GRPO's ratio exp(logp - old_logp) and its KL penalty run on an
estimate. `completion_logps(..., estimator=...)` offers three, each a float32 [N, C] matrix (0 outside the
completion mask):

- `one_step` (d1's diffu-GRPO): the completion fully masked, each prompt token masked with probability
  `p_mask_prompt`, one forward pass; the estimate of token i is log p(x_i | that noisy sequence).
- `coupled` (DiffuCoder's coupled-GRPO): a mask ratio t ~ U(0.2, 0.8) and complementary masks of the completion
  (a token is in the first when its uniform draw is below t, in the second when above); the prompt stays clean.
  Three passes (completion fully masked; first mask; second mask), and token i's estimate is
  (log p_full(x_i) + w * log p_pass(x_i)) / 2, where `pass` is the one of the two complementary passes that masks
  it and w = 1/t for the first, 1/(1 - t) for the second, as DiffuCoder weighs them.
- `elbo`: per-token terms of this project's count-form ELBO (`dlm.elbo`): `mc_samples` masks of the completion
  (sample j masks l_j of its C tokens, l_j spread over 1..C), the prompt clean; token i gets the mean over samples
  of (C / l_j) * [i masked in j] * log p(x_i | x_t). Summed over a completion these are exactly the Monte-Carlo
  ELBO of the completion given the prompt (a lower bound of log p); per token they are an approximation with no
  exact counterpart: unbiased for the average, over mask counts, of log p(x_i | a random l-masked sequence), and
  0 for tokens that no sample masks. Every completion column is maskable (tokens after the end token too, as in
  generation, which starts from a fully masked canvas); only tokens within the completion mask are reported.

Masks come from `seed` alone (CPU generators, so the same on every device) and the rows' places in their batch
(`row_offset` for a micro-batch): the same seed and the same rows give the same masks, so current, old and
reference policies are scored on the same masks. One-step and coupled draws match the references' `set_seed(seed)` draws on CPU (a [N, P + C] uniform matrix, and for
coupled Python's `random.uniform(0.2, 0.8)`).

Families: `family.shift_logits` selects Dream-style prediction (position i - 1 predicts token i); block-diffusion
families run once over `x_t ⊕ x_0` under the block mask (`dlm.block_diffusion`), blocks counted from the first
position as in training, so a masked token is conditioned on its own noisy block and the clean blocks before it.
A family with `uses_attention_mask` gets the prompts' padding mask; the others attend padding, as in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from dlm.block_diffusion import block_logits_at_positions, model_block_size
from dlm.elbo import _count_weights, draw_elbo_masks
from dlm.families.base import Family
from dlm.forward import logits_at_positions

LOGP_ESTIMATORS = ("one_step", "coupled", "elbo")
COUPLED_MASK_RATIO_RANGE = (0.2, 0.8)  # DiffuCoder draws its mask ratio uniformly from here


@dataclass(frozen=True)
class Rollouts:
    """A batch of sampled completions: `prompt_ids` [N, P] left-padded (`prompt_mask` bool, False on padding) and
    `completion_ids` [N, C] (`completion_mask` bool: the tokens up to and including the first end token)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.prompt_ids.dim() != 2 or self.prompt_mask.shape != self.prompt_ids.shape:
            raise ValueError(
                f"Rollouts: prompt_ids and prompt_mask must both be [N, P], got {tuple(self.prompt_ids.shape)} and "
                f"{tuple(self.prompt_mask.shape)}"
            )
        if self.completion_ids.dim() != 2 or self.completion_mask.shape != self.completion_ids.shape:
            raise ValueError(
                f"Rollouts: completion_ids and completion_mask must both be [N, C], got "
                f"{tuple(self.completion_ids.shape)} and {tuple(self.completion_mask.shape)}"
            )
        if self.prompt_ids.shape[0] != self.completion_ids.shape[0]:
            raise ValueError(
                f"Rollouts: {self.prompt_ids.shape[0]} prompts for {self.completion_ids.shape[0]} completions"
            )

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt and completion side by side: [N, P + C]."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)


@dataclass(frozen=True)
class CoupledMasks:
    """The coupled estimator's draw: mask ratio `t`, the first mask [N, C] (draw < t) and the second (draw > t)."""

    t: float
    first: torch.Tensor
    second: torch.Tensor


def one_step_prompt_mask(rollouts: Rollouts, seed: int, p_mask_prompt: float, row_offset: int = 0) -> torch.Tensor:
    """bool [N, P]: the prompt positions the one-step estimator masks (each with probability `p_mask_prompt`; left
    padding too, as d1 does). d1's draw: a uniform [N, P + C] matrix from `seed`, read on the prompt columns."""
    if not 0.0 <= p_mask_prompt <= 1.0:
        raise ValueError(f"p_mask_prompt must be in [0, 1], got {p_mask_prompt}")
    draws = _uniform_draws(rollouts, seed, row_offset)
    return (draws[:, : rollouts.prompt_ids.shape[1]] < p_mask_prompt).to(rollouts.prompt_ids.device)


def coupled_masks(rollouts: Rollouts, seed: int, row_offset: int = 0) -> CoupledMasks:
    """DiffuCoder's draw from `seed`: t = Python's random.uniform(0.2, 0.8) (one per seed), then a uniform
    [N, P + C] matrix u; the first mask is u < t on the completion columns, the second u > t."""
    t = random.Random(seed).uniform(*COUPLED_MASK_RATIO_RANGE)
    draws = _uniform_draws(rollouts, seed, row_offset)[:, rollouts.prompt_ids.shape[1] :].to(
        rollouts.completion_ids.device
    )
    return CoupledMasks(t, draws < t, draws > t)


def elbo_completion_masks(
    rollouts: Rollouts, seed: int, mc_samples: int, block_size: int | None = None, row_offset: int = 0
) -> torch.Tensor:
    """bool [mc_samples, N, C]: `dlm.elbo.draw_elbo_masks` over all completion columns, from one CPU generator;
    with `block_size`, l_b tokens of each block (blocks counted from the prompt's first column)."""
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be at least 1, got {mc_samples}")
    rows, prompt_length = rollouts.prompt_ids.shape
    maskable = torch.zeros(_check_offset(row_offset) + rows, rollouts.input_ids.shape[1], dtype=torch.bool)
    maskable[:, prompt_length:] = True
    generator = torch.Generator().manual_seed(seed)
    masks = draw_elbo_masks(maskable, mc_samples, generator, block_size=block_size)
    return masks[:, row_offset:, prompt_length:].to(rollouts.completion_ids.device)


def _uniform_draws(rollouts: Rollouts, seed: int, row_offset: int) -> torch.Tensor:
    """float32 [N, P + C] on the CPU: rows row_offset.. of the uniform matrix that `seed` starts."""
    rows, length = rollouts.prompt_ids.shape[0], rollouts.input_ids.shape[1]
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(_check_offset(row_offset) + rows, length, generator=generator)[row_offset:]


def _check_offset(row_offset: int) -> int:
    if row_offset < 0:
        raise ValueError(f"row_offset must be at least 0, got {row_offset}")
    return row_offset


def completion_logps(
    model: nn.Module,
    rollouts: Rollouts,
    *,
    estimator: str,
    family: Family,
    mask_id: int,
    seed: int,
    p_mask_prompt: float = 0.3,
    mc_samples: int = 1,
    row_offset: int = 0,
) -> torch.Tensor:
    """Per-token log-probability estimates [N, C] (float32, 0 where completion_mask is False) of the completions
    under `model`. The same `seed` gives the same masks (the trainer calls it with one seed per inner iteration for
    the current, old and reference policies, as d1 does). `p_mask_prompt` is the one-step estimator's prompt
    masking rate, `mc_samples` the ELBO estimator's number of masks; the module docstring defines the estimators.
    Masks depend on the seed and the rows' place in their batch: rows k..k+n-1 of a batch, scored as a micro-batch,
    get the masks the whole batch gives them with `row_offset=k` (a batch scored whole and in micro-batches sees
    the same masks; all rows must share P and C). Gradients flow when enabled."""
    if estimator == "one_step":
        prompt_masked = one_step_prompt_mask(rollouts, seed, p_mask_prompt, row_offset)
        logps = one_step_logps(model, rollouts, prompt_masked, family=family, mask_id=mask_id)
    elif estimator == "coupled":
        masks = coupled_masks(rollouts, seed, row_offset)
        logps = coupled_logps(model, rollouts, masks, family=family, mask_id=mask_id)
    elif estimator == "elbo":
        masks = elbo_completion_masks(rollouts, seed, mc_samples, model_block_size(family, model), row_offset)
        logps = elbo_logps(model, rollouts, masks, family=family, mask_id=mask_id)
    else:
        raise ValueError(f"unknown logp estimator {estimator!r}; choose one of: {', '.join(LOGP_ESTIMATORS)}")
    return logps.masked_fill(~rollouts.completion_mask.bool(), 0.0)


def one_step_logps(
    model: nn.Module, rollouts: Rollouts, prompt_masked: torch.Tensor, *, family: Family, mask_id: int
) -> torch.Tensor:
    """float32 [N, C]: log p(completion token) with the completion fully masked and the prompt's `prompt_masked`
    [N, P] positions masked (given masks: `completion_logps` draws them from a seed)."""
    prompt = rollouts.prompt_ids.masked_fill(prompt_masked.bool(), mask_id)
    noisy = torch.cat([prompt, torch.full_like(rollouts.completion_ids, mask_id)], dim=1)
    return _completion_token_logps(model, rollouts, noisy, family)


def coupled_logps(
    model: nn.Module, rollouts: Rollouts, masks: CoupledMasks, *, family: Family, mask_id: int
) -> torch.Tensor:
    """float32 [N, C]: the coupled estimate (module docstring) for the given `masks`, from one forward pass over
    the three noisy versions of every row."""
    completion = rollouts.completion_ids
    versions = [
        torch.full_like(completion, mask_id),
        completion.masked_fill(masks.first, mask_id),
        completion.masked_fill(masks.second, mask_id),
    ]
    noisy = torch.cat([torch.cat([rollouts.prompt_ids, version], dim=1) for version in versions])
    tripled = Rollouts(*(torch.cat([tensor] * 3) for tensor in _fields(rollouts)))
    full, first, second = _completion_token_logps(model, tripled, noisy, family).chunk(3)
    weights = torch.tensor([1.0 / masks.t, 1.0 / (1.0 - masks.t)], dtype=torch.float32, device=full.device)
    coupled = torch.where(masks.first, first * weights[0], second * weights[1])
    return (full + coupled) / 2


def elbo_logps(
    model: nn.Module, rollouts: Rollouts, masks: torch.Tensor, *, family: Family, mask_id: int
) -> torch.Tensor:
    """float32 [N, C]: per-token ELBO terms (module docstring) for the given completion `masks` [n, N, C]: the mean
    over samples of (C / l) * [masked] * log p(x_i | x_t), with C / l per block for block-diffusion families."""
    if masks.dim() != 3 or masks.shape[1:] != rollouts.completion_ids.shape:
        raise ValueError(
            f"masks must be [n, N, C] = [n, {', '.join(map(str, rollouts.completion_ids.shape))}], got "
            f"{tuple(masks.shape)}"
        )
    masks = masks.bool()
    if bool((~masks.any(dim=-1)).any()):
        raise ValueError("every ELBO mask sample must mask at least one completion token")
    samples = masks.shape[0]
    prompt_length = rollouts.prompt_ids.shape[1]
    repeated = Rollouts(*(torch.cat([tensor] * samples) for tensor in _fields(rollouts)))
    flat = masks.reshape(-1, masks.shape[-1])
    noisy = torch.cat([repeated.prompt_ids, repeated.completion_ids.masked_fill(flat, mask_id)], dim=1)
    token_logps = _completion_token_logps(model, repeated, noisy, family)
    block_size = model_block_size(family, model)
    if block_size is None:
        weights = _count_weights(torch.ones_like(flat), flat, None)
    else:  # blocks count from the sequence's first position, so the completion's blocks are offset by the prompt
        padded = torch.nn.functional.pad(flat, (prompt_length, 0))
        weights = _count_weights(torch.nn.functional.pad(torch.ones_like(flat), (prompt_length, 0)), padded, block_size)
        weights = weights[:, prompt_length:]
    terms = torch.where(flat, token_logps.double() * weights, 0.0)
    return terms.reshape(masks.shape).mean(dim=0).to(torch.float32)


def _fields(rollouts: Rollouts) -> tuple[torch.Tensor, ...]:
    return rollouts.prompt_ids, rollouts.prompt_mask, rollouts.completion_ids, rollouts.completion_mask


def _completion_token_logps(model: nn.Module, rollouts: Rollouts, noisy: torch.Tensor, family: Family) -> torch.Tensor:
    """float32 [N, C]: log-softmax at every completion column of `noisy` [N, P + C], gathered at the true tokens."""
    clean = rollouts.input_ids
    rows, columns = rollouts.completion_ids.shape
    prompt_length = rollouts.prompt_ids.shape[1]
    positions = torch.zeros(clean.shape, dtype=torch.bool, device=clean.device)
    positions[:, prompt_length:] = True
    attention_mask = _attention_mask(rollouts, family)
    block_size = model_block_size(family, model)
    if block_size is None:
        logits = logits_at_positions(model, noisy, attention_mask, positions, family.shift_logits)
    else:
        selected = positions.nonzero(as_tuple=True)
        logits = block_logits_at_positions(model, noisy, clean, block_size, selected, attention_mask)
    log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    token_logps = log_probs.gather(-1, rollouts.completion_ids.reshape(-1, 1)).reshape(rows, columns)
    return token_logps.to(torch.float32)


def _attention_mask(rollouts: Rollouts, family: Family) -> torch.Tensor | None:
    """The prompts' padding mask beside an all-ones completion, for families that take one and only when some
    prompt is padded (no mask and an all-ones mask are the same model call)."""
    prompt_mask = rollouts.prompt_mask.bool()
    if not family.uses_attention_mask or bool(prompt_mask.all()):
        return None
    return torch.cat([prompt_mask, torch.ones_like(rollouts.completion_mask, dtype=torch.bool)], dim=1).long()
