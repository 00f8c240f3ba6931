"""Noise schedules of masked diffusion: alpha(t) is the probability that a token is still clean at time t.

A token is masked at time t with probability p(t) = 1 - alpha(t). The continuous-time ELBO weighs the
cross-entropy of a masked token by w(t) = -alpha'(t) / (1 - alpha(t)); like the reference trainers, 1e-6 is added to
the denominator (for the linear schedule w(t) = 1 / (t + 1e-6)), so that the golden losses are reproduced exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

WEIGHT_EPSILON = 1e-6


@dataclass(frozen=True)
class NoiseSchedule:
    """A schedule alpha(t) on t in [0, 1] with alpha(0) = 1 (clean) and alpha(1) = 0 (all masked)."""

    name: str

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mask_probability(self, t: torch.Tensor) -> torch.Tensor:
        """p(t) = 1 - alpha(t), the probability that a maskable token is masked at time t."""
        return 1.0 - self.alpha(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) = -alpha'(t) / (1 - alpha(t) + 1e-6), the ELBO weight of a masked token's cross-entropy."""
        return -self.alpha_derivative(t) / (1.0 - self.alpha(t) + WEIGHT_EPSILON)


class LinearSchedule(NoiseSchedule):
    """alpha(t) = 1 - t: p(t) = t and w(t) = 1/t (MDLM, LLaDA, Dream)."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t

    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.ones_like(t)


class CosineSchedule(NoiseSchedule):
    """alpha(t) = 1 - cos(pi/2 (1 - t))."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.cos(math.pi / 2 * (1.0 - t))

    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        return -(math.pi / 2) * torch.sin(math.pi / 2 * (1.0 - t))


SCHEDULES: dict[str, NoiseSchedule] = {s.name: s for s in (LinearSchedule("linear"), CosineSchedule("cosine"))}


def get_schedule(name: str | NoiseSchedule) -> NoiseSchedule:
    """The schedule called `name` (case-insensitive); a `NoiseSchedule` is returned as it is."""
    if isinstance(name, NoiseSchedule):
        return name
    schedule = SCHEDULES.get(str(name).strip().lower())
    if schedule is None:
        raise ValueError(f"unknown noise_schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return schedule


def sample_times(
    batch_size: int,
    eps: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-sequence diffusion times t = eps + (1 - eps) u with u ~ U[0, 1), float32 of shape [batch_size].

    `eps` keeps t away from 0, where the 1/t weight explodes. The draw uses `generator` (on its own device) and is
    then moved to `device`.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"time_epsilon must be in [0, 1), got {eps}")
    draw_device = generator.device if generator is not None else device
    u = torch.rand(batch_size, generator=generator, device=draw_device)
    return (eps + (1.0 - eps) * u).to(device if device is not None else u.device)
