"""GRPO's objective on per-token log-probability estimates (TRL's `GRPOTrainer` loss, as d1 and DiffuCoder use it).

Per token: ratio r = exp(logp - old_logp), the clipped surrogate -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)
with the sequence's advantage A, plus beta times the k3 estimate of KL(policy || reference),
exp(ref - logp) - (ref - logp) - 1. The per-token losses are averaged over the completion mask by `loss_type`:

- `grpo`: the mean of each sequence's masked mean (the GRPO paper, TRL's original);
- `bnpo`: the masked mean over every token of the batch (what d1's and DiffuCoder's trainers compute);
- `dr_grpo`: the masked sum divided by N times the maximal completion length (Dr. GRPO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
ADVANTAGE_STD_EPS = 1e-4  # TRL's: (reward - mean) / (std + 1e-4)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: bool = True, *, leave_one_out: bool = False
) -> torch.Tensor:
    """[N] rewards of N/group_size consecutive groups -> advantages (reward - group mean) / (group std + 1e-4) (TRL;
    std is the unbiased one). Without `scale_rewards` (d1's choice), reward - group mean. `leave_one_out` (what
    DiffuCoder's trainer hard-codes) takes the mean of the group's other rewards as the baseline instead, which
    multiplies the centred reward by group_size / (group_size - 1)."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"group_size must be a positive divisor of the {rewards.numel()} rewards, got {group_size}")
    if (scale_rewards or leave_one_out) and group_size < 2:
        raise ValueError("scale_rewards and leave_one_out compare a reward with the rest of its group: group_size >= 2")
    grouped = rewards.view(-1, group_size)
    if leave_one_out:
        advantages = grouped - (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    else:
        advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + ADVANTAGE_STD_EPS)
    return advantages.reshape(-1)


@dataclass(frozen=True)
class GRPOLossOutput:
    """The loss (with gradient) and TRL's metrics, detached: `kl` (masked mean of the per-token KL; None when
    beta = 0), `clip_ratio` (tokens whose clipped term is the active one: `low_clip` + `high_clip`), `low_clip`
    (ratio below 1 - eps_low with a negative advantage), `high_clip` (above 1 + eps_high with a positive one)."""

    loss: torch.Tensor
    kl: torch.Tensor | None
    clip_ratio: torch.Tensor
    low_clip: torch.Tensor
    high_clip: torch.Tensor


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.04,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
) -> GRPOLossOutput:
    """GRPO loss (module docstring) from [N, C] per-token estimates of the current policy (`logps`, with gradient),
    the policy that sampled (`old_logps`; None means `logps` detached: one update per rollout batch) and the
    reference (`ref_logps`; needed when beta != 0), [N] `advantages` and the bool [N, C] `completion_mask`.
    `max_completion_length` (default C) is Dr. GRPO's constant divisor."""
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; choose one of: {', '.join(GRPO_LOSS_TYPES)}")
    if logps.dim() != 2 or completion_mask.shape != logps.shape or advantages.shape != logps.shape[:1]:
        raise ValueError(
            f"grpo_loss: logps and completion_mask must be [N, C] and advantages [N], got {tuple(logps.shape)}, "
            f"{tuple(completion_mask.shape)} and {tuple(advantages.shape)}"
        )
    if beta != 0.0 and ref_logps is None:
        raise ValueError(f"grpo_loss: beta = {beta} needs the reference policy's ref_logps (or set beta to 0)")
    old_logps = logps.detach() if old_logps is None else old_logps
    mask = completion_mask.bool()
    # differences are taken inside the mask only: an unscored token's estimate (even -inf) must not reach exp, whose
    # non-finite value would turn the masked-out zero gradient into NaN
    ratio = torch.exp(torch.where(mask, logps - old_logps, 0.0))
    advantage = advantages.to(logps.dtype).unsqueeze(1)
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token_loss = -torch.min(ratio * advantage, clipped * advantage)
    kl = None
    if beta != 0.0:
        ref_minus_policy = torch.where(mask, ref_logps - logps, 0.0)
        per_token_kl = torch.exp(ref_minus_policy) - ref_minus_policy - 1.0
        per_token_loss = per_token_loss + beta * per_token_kl
        kl = _masked_mean(per_token_kl.detach(), mask)
    loss = _reduce(per_token_loss, mask, loss_type, max_completion_length)
    with torch.no_grad():
        low = (ratio < 1.0 - epsilon_low) & (advantage < 0)
        high = (ratio > 1.0 + epsilon_high) & (advantage > 0)
        return GRPOLossOutput(
            loss=loss,
            kl=kl,
            clip_ratio=_masked_mean((low | high).to(logps.dtype), mask),
            low_clip=_masked_mean(low.to(logps.dtype), mask),
            high_clip=_masked_mean(high.to(logps.dtype), mask),
        )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


def _reduce(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_length: int | None) -> torch.Tensor:
    masked = torch.where(mask, per_token_loss, 0.0)
    if loss_type == "grpo":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1)
    length = per_token_loss.shape[1] if max_length is None else max_length
    return masked.sum() / (per_token_loss.shape[0] * length)
