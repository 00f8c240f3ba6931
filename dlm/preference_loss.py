"""ELBO-DPO for masked diffusion LMs (VRPO, LLaDA 1.5): the DPO/IPO loss on Monte-Carlo ELBOs, with low variance.

A diffusion LM has no exact log-likelihood, so DPO's log-probabilities become count-form ELBOs (`dlm.elbo`): the
score of a pair is s = beta * [(B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l))]. The loss is biased by
up to sqrt(Var(s)), hence the variance reduction: n samples per estimate with their mask counts spread over 1..L
(`draw_elbo_masks`), and the very same masks for the policy and the reference (antithetic sharing), which makes
s exactly 0 when the policy equals the reference.

A batch holds 2B sequences: the B chosen ones (prompt + chosen response), then the B rejected ones, right-padded,
with `response_mask` marking the scored response tokens (the prompt is never masked, padding is excluded) and an
`attention_mask` that hides the padding, so an ELBO does not depend on the batch it was computed in.

Memory: keeping the graphs of all n samples costs n times the activations of one. Since the loss depends on the
policy only through B_theta of each response, and d loss / d B_theta is one number per response, `elbo_dpo_loss`
with a `backward` callback (the trainer's `per_sample_backward`) estimates every B_theta without gradients first,
then back-propagates one sample at a time with those fixed coefficients: the same gradient, at the memory of one
sample, for one extra forward pass without gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlm.elbo import draw_elbo_masks, elbo_terms, example_generators

LOSS_TYPES = ("sigmoid", "ipo")
Batch = Mapping[str, Any]
# Runs one unit of the gradient pass: `unit()` builds a loss (forward), the callee back-propagates it; `last` is
# true for the final unit of a micro-batch (data-parallel wrappers synchronise gradients there only).
BackwardUnit = Callable[[Callable[[], torch.Tensor], bool], None]


@dataclass(frozen=True)
class ElboDPOSettings:
    """How preference scores are estimated: the model's mask id and logit shift, beta and the loss (the number of
    Monte-Carlo samples is in the masks drawn by `draw_pair_masks`). No
    defaults or checks of its own: the trainer builds it from a checked `DPOConfig`
    (`dlm.trainers.dpo_trainer.elbo_settings`), which holds the defaults and validates the settings."""

    mask_id: int
    shift: bool
    beta: float
    block_size: int | None  # block diffusion's block ELBO (`dlm.elbo`); None for full-sequence diffusion
    loss_type: str


@dataclass
class PreferenceOutput:
    """One micro-batch. `loss` is the summed pair losses divided by the normaliser (with a graph unless the
    gradient was already back-propagated sample by sample). The rest is detached float64: ELBOs per sequence
    (chosen rows first), scores, losses and rewards beta * (B_theta - B_ref) per pair."""

    loss: torch.Tensor
    policy_logps: torch.Tensor
    reference_logps: torch.Tensor
    scores: torch.Tensor
    pair_losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def pair_scores(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """s [B] from the ELBOs [2B] of the chosen (first half) and rejected (second half) sequences."""
    margin = policy_logps - reference_logps
    half = margin.shape[0] // 2
    return beta * (margin[:half] - margin[half:])


def pair_losses(scores: torch.Tensor, beta: float, loss_type: str) -> torch.Tensor:
    """Per-pair loss of s: `sigmoid` -log sigma(s) (DPO); `ipo` (s / beta - 1 / (2 beta))^2 (IPO, whose target is
    a log-ratio margin of 1 / (2 beta))."""
    if loss_type == "sigmoid":
        return -F.logsigmoid(scores)
    if loss_type == "ipo":
        return (scores / beta - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of: {', '.join(LOSS_TYPES)}")


def pair_mask_generators(example_ids: list[str], seed: int, draw: str) -> list[torch.Generator]:
    """One generator per sequence of a preference batch (chosen rows, then rejected rows), seeded from
    (seed, example id, which response, `draw`): the same example always gets the same masks for the same draw."""
    keys = [f"{i}:{which}:{draw}" for which in ("chosen", "rejected") for i in example_ids]
    return example_generators(keys, seed)


def draw_pair_masks(batch: Batch, n: int, seed: int, draw: str, block_size: int | None = None) -> torch.Tensor:
    """Masks [n, 2B, T] for the batch's response tokens from its per-example generators (`pair_mask_generators`);
    with `block_size`, each block's tokens masked apart (the block ELBO)."""
    generators = pair_mask_generators(list(batch["example_ids"]), seed, draw)
    return draw_elbo_masks(batch["response_mask"], n, generators, block_size=block_size)


def response_elbos(
    model: nn.Module,
    batch: Batch,
    masks: torch.Tensor,
    settings: ElboDPOSettings,
    *,
    sample_slice: slice = slice(None),
) -> torch.Tensor:
    """ELBO estimates [2B] (float64): the mean over the selected samples of `masks` [n, 2B, T].

    One forward pass per sample (all 2B sequences of one sample together), for every caller alike, so that the
    policy and the reference run through identical computations and equal weights give bit-equal ELBOs.
    """
    selected = masks[sample_slice]
    terms = elbo_terms(
        model,
        batch["input_ids"],
        batch["response_mask"],
        selected,
        mask_id=settings.mask_id,
        shift=settings.shift,
        attention_mask=batch.get("attention_mask"),
        block_size=settings.block_size,
        batch_size=batch["input_ids"].shape[0],
    )
    return terms.mean(dim=0)


def elbo_dpo_loss(
    policy: nn.Module,
    batch: Batch,
    masks: torch.Tensor,
    reference_logps: torch.Tensor,
    settings: ElboDPOSettings,
    *,
    normaliser: float | torch.Tensor,
    backward: BackwardUnit | None = None,
) -> PreferenceOutput:
    """The ELBO-DPO loss of one micro-batch: sum of pair losses / `normaliser`.

    `masks` [n, 2B, T] are the policy's masks (`reference_logps` [2B] should come from the same masks for
    antithetic sharing). Without `backward` the policy keeps the graphs of all n samples and the returned loss
    carries them. With `backward`, the policy's ELBOs are first estimated without gradients, then each sample j
    is back-propagated on its own as `backward(unit, last)`, where `unit()` computes sum_r c_r * term_j(r) / n with
    c_r = d loss / d B_theta(r) (fixed): the gradient equals the all-graphs one; the returned loss is detached.
    """
    n = masks.shape[0]
    reference_logps = reference_logps.detach().double()
    if backward is None:
        policy_logps = response_elbos(policy, batch, masks, settings)
        scores = pair_scores(policy_logps, reference_logps, settings.beta)
        losses = pair_losses(scores, settings.beta, settings.loss_type)
        loss = losses.sum() / normaliser
        return _output(loss, policy_logps, reference_logps, scores, losses, settings.beta)

    with torch.no_grad():
        estimate = response_elbos(policy, batch, masks, settings)
    leaf = estimate.detach().requires_grad_(True)
    scores = pair_scores(leaf, reference_logps, settings.beta)
    losses = pair_losses(scores, settings.beta, settings.loss_type)
    loss = losses.sum() / normaliser
    (coefficients,) = torch.autograd.grad(loss, leaf)
    for j in range(n):

        def unit(j: int = j) -> torch.Tensor:
            terms = response_elbos(policy, batch, masks, settings, sample_slice=slice(j, j + 1))
            return (terms * coefficients).sum() / n

        backward(unit, j == n - 1)
    return _output(loss.detach(), estimate, reference_logps, scores, losses, settings.beta)


def _output(loss, policy_logps, reference_logps, scores, losses, beta: float) -> PreferenceOutput:
    rewards = beta * (policy_logps.detach() - reference_logps)
    half = len(scores)
    return PreferenceOutput(
        loss=loss,
        policy_logps=policy_logps.detach(),
        reference_logps=reference_logps,
        scores=scores.detach(),
        pair_losses=losses.detach(),
        chosen_rewards=rewards[:half],
        rejected_rewards=rewards[half:],
    )
