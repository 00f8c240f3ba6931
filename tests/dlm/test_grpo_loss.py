"""Group advantages and the GRPO loss against brute force: plain Python loops over groups and tokens, written from
the formulas (TRL's GRPO loss; Dr. GRPO and BNPO normalisations), values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from dlm.grpo_loss import GRPO_LOSS_TYPES, group_advantages, grpo_loss


def brute_advantages(rewards: list[float], group_size: int, scale: bool, leave_one_out: bool) -> list[float]:
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1)) if len(group) > 1 else 0.0
        for i, reward in enumerate(group):
            others = group[:i] + group[i + 1 :]
            advantage = reward - (sum(others) / len(others) if leave_one_out else mean)
            out.append(advantage / (std + 1e-4) if scale else advantage)
    return out


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_equal_a_loop(scale: bool, leave_one_out: bool) -> None:
    rewards = [1.0, 0.0, 0.5, 0.25, 2.0, 2.0, 2.0, 2.0, -1.0, 3.0, 0.0, 0.0]
    ours = group_advantages(torch.tensor(rewards, dtype=torch.float64), 4, scale, leave_one_out=leave_one_out)
    expected = brute_advantages(rewards, 4, scale, leave_one_out)
    assert ours.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert ours[4:8].abs().max() == 0  # a group with one reward learns nothing


def test_group_advantages_reject_bad_groups() -> None:
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.zeros(6), 1)
    assert group_advantages(torch.tensor([1.0, 2.0]), 1, scale_rewards=False).tolist() == [0.0, 0.0]


def brute_loss(logps, old, ref, advantages, mask, eps_low, eps_high, beta, loss_type):
    """The loss, token by token, in Python floats (of detached inputs)."""
    rows, columns = len(logps), len(logps[0])
    per_row, total, count = [], 0.0, 0
    for i in range(rows):
        row_sum, row_count = 0.0, 0
        for j in range(columns):
            if not mask[i][j]:
                continue
            ratio = math.exp(logps[i][j] - old[i][j])
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            loss = -min(ratio * advantages[i], clipped * advantages[i])
            if beta:
                d = ref[i][j] - logps[i][j]
                loss += beta * (math.exp(d) - d - 1)
            row_sum, row_count = row_sum + loss, row_count + 1
        per_row.append(row_sum / max(row_count, 1))
        total, count = total + row_sum, count + row_count
    if loss_type == "grpo":
        return sum(per_row) / rows
    if loss_type == "bnpo":
        return total / max(count, 1)
    return total / (rows * columns)


def inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logps = -torch.rand(4, 6, generator=generator, dtype=torch.float64) * 3
    old = logps + torch.randn(4, 6, generator=generator, dtype=torch.float64) * 0.3  # ratios on both sides of the clip
    ref = logps + torch.randn(4, 6, generator=generator, dtype=torch.float64) * 0.2
    old[0, 1] = logps[0, 1] - math.log(1.25)  # between the two clip bounds 1.2 and 1.28: only epsilon_high keeps it
    old[1, 2] = logps[1, 2] - math.log(0.79)  # below 1 - epsilon_low with a negative advantage
    advantages = torch.tensor([1.2, -0.7, 0.4, -1.5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    return logps, old, ref, advantages, mask


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradient_equal_a_token_loop(loss_type: str, beta: float) -> None:
    logps, old, ref, advantages, mask = inputs()
    logps.requires_grad_(True)
    args = (old, ref if beta else None, advantages, mask)
    out = grpo_loss(logps, *args, epsilon_low=0.2, epsilon_high=0.28, beta=beta, loss_type=loss_type)
    lists = [t.tolist() for t in (logps.detach(), old, ref, advantages, mask)]
    assert float(out.loss.detach()) == pytest.approx(brute_loss(*lists, 0.2, 0.28, beta, loss_type), rel=1e-12)
    out.loss.backward()
    step = 1e-6  # central differences of the brute-force loss, token by token
    for i, j in [(0, 0), (0, 4), (1, 3), (2, 1), (3, 4)]:
        plus, minus = [row[:] for row in lists[0]], [row[:] for row in lists[0]]
        plus[i][j] += step
        minus[i][j] -= step
        numeric = (
            brute_loss(plus, *lists[1:], 0.2, 0.28, beta, loss_type)
            - brute_loss(minus, *lists[1:], 0.2, 0.28, beta, loss_type)
        ) / (2 * step)
        assert float(logps.grad[i, j]) == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_metrics_equal_their_definitions() -> None:
    logps, old, ref, advantages, mask = inputs(1)
    out = grpo_loss(logps, old, ref, advantages, mask, epsilon_low=0.2, epsilon_high=0.28, beta=0.04)
    ratio = torch.exp(logps - old).tolist()
    logps, ref, advantages, mask = logps.tolist(), ref.tolist(), advantages.tolist(), mask.tolist()
    low = [(ratio[i][j] < 0.8 and advantages[i] < 0) for i in range(4) for j in range(6) if mask[i][j]]
    high = [(ratio[i][j] > 1.28 and advantages[i] > 0) for i in range(4) for j in range(6) if mask[i][j]]
    kl = [
        math.exp(ref[i][j] - logps[i][j]) - (ref[i][j] - logps[i][j]) - 1
        for i in range(4)
        for j in range(6)
        if mask[i][j]
    ]
    assert float(out.low_clip) == pytest.approx(sum(low) / len(low))
    assert float(out.high_clip) == pytest.approx(sum(high) / len(high))
    assert float(out.clip_ratio) == pytest.approx((sum(low) + sum(high)) / len(low))
    assert 0 < sum(low) and 0 < sum(high)  # the inputs exercise both sides
    assert float(out.kl) == pytest.approx(sum(kl) / len(kl), rel=1e-12)


def test_one_update_per_batch_is_the_policy_gradient() -> None:
    """old_logps None: the ratio is 1, so the loss is -A per token and its gradient -A / count (bnpo)."""
    logps, _, _, advantages, mask = inputs()
    logps.requires_grad_(True)
    out = grpo_loss(logps, None, None, advantages, mask, beta=0.0, loss_type="bnpo")
    expected = -(advantages[:, None] * mask).sum() / mask.sum()
    assert float(out.loss.detach()) == pytest.approx(float(expected))
    out.loss.backward()
    torch.testing.assert_close(logps.grad, -(advantages[:, None] * mask) / mask.sum())
    assert out.kl is None and float(out.clip_ratio) == 0


def test_unscored_tokens_cannot_leak_non_finite_values() -> None:
    logps, old, ref, advantages, mask = inputs()
    old = old.masked_fill(~mask, float("-inf"))  # exp(logp - old) = inf outside the mask
    ref = ref.masked_fill(~mask, 1e4)
    logps.requires_grad_(True)
    out = grpo_loss(logps, old, ref, advantages, mask)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logps.grad).all() and torch.isfinite(out.kl)


def test_dr_grpo_divides_by_the_given_length() -> None:
    logps, old, ref, advantages, mask = inputs()
    six = grpo_loss(logps, old, ref, advantages, mask, loss_type="dr_grpo")
    twelve = grpo_loss(logps, old, ref, advantages, mask, loss_type="dr_grpo", max_completion_length=12)
    assert float(twelve.loss) == pytest.approx(float(six.loss) / 2)


def test_bad_settings_are_named() -> None:
    logps, old, ref, advantages, mask = inputs()
    with pytest.raises(ValueError, match="unknown GRPO loss_type 'ppo'"):
        grpo_loss(logps, old, ref, advantages, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, old, None, advantages, mask, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logps, old, ref, advantages[:3], mask)
