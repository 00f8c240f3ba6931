"""Forward (noising) process of masked diffusion and the per-token loss weights that depend on the mask.

- `mask_tokens`: mask each maskable token independently with probability p(t) of its sequence.
- `random_length`: LLaDA pre-training's occasional training on a random shorter length.
- `cart_weights`: Dream's context-adaptive token weights; `parse_loss_weight_type` reads the weight option string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm.schedules import NoiseSchedule, get_schedule

DEFAULT_CART_GEO_P = 0.3
LOSS_WEIGHT_TYPES = ("scheduler", "uniform", "cart[geo_p:P]")
_CART = re.compile(r"cart(?:\[geo_p:(?P<p>[0-9.eE+-]+)\])?")


@dataclass(frozen=True)
class LossWeightType:
    """A parsed `loss_weight_type`: `scheduler` (w(t) of the noise schedule), `uniform` (1) or `cart` (with geo_p)."""

    kind: str
    geo_p: float | None = None

    def __str__(self) -> str:
        return f"cart[geo_p:{self.geo_p}]" if self.kind == "cart" else self.kind


def parse_loss_weight_type(value: str | LossWeightType) -> LossWeightType:
    """Parse `scheduler`, `uniform`, `cart` or `cart[geo_p:P]` (0 < P <= 1; `cart` alone means P = 0.3)."""
    if isinstance(value, LossWeightType):
        return value
    text = str(value).strip().lower()
    if text in ("scheduler", "uniform"):
        return LossWeightType(text)
    match = _CART.fullmatch(text)
    if match is None:
        raise ValueError(f"unknown loss_weight_type {value!r}; choose one of: {', '.join(LOSS_WEIGHT_TYPES)}")
    try:
        geo_p = float(match["p"]) if match["p"] is not None else DEFAULT_CART_GEO_P
    except ValueError:
        geo_p = float("nan")
    if not 0.0 < geo_p <= 1.0:
        raise ValueError(f"loss_weight_type {value!r}: geo_p must be a number in (0, 1], e.g. cart[geo_p:0.3]")
    return LossWeightType("cart", geo_p)


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    t: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    schedule: str | NoiseSchedule = "linear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each maskable token of row b independently with probability p(t[b]) of `schedule`.

    `input_ids` and `maskable` (bool) are [B, L], `t` is [B]. Returns `(noisy_ids, masked)`: the ids with masked
    positions replaced by `mask_id`, and the bool [B, L] matrix of masked positions (always within `maskable`).
    """
    if input_ids.dim() != 2 or maskable.shape != input_ids.shape:
        raise ValueError(
            f"mask_tokens: input_ids and maskable must both be [batch, length], got {tuple(input_ids.shape)} "
            f"and {tuple(maskable.shape)}"
        )
    if t.shape != (input_ids.shape[0],):
        raise ValueError(f"mask_tokens: t must have shape [{input_ids.shape[0]}], got {tuple(t.shape)}")
    p = get_schedule(schedule).mask_probability(t.float()).to(input_ids.device)
    draw_device = generator.device if generator is not None else input_ids.device
    u = torch.rand(input_ids.shape, generator=generator, device=draw_device).to(input_ids.device)
    masked = (u < p[:, None]) & maskable.bool()
    return torch.where(masked, torch.full_like(input_ids, mask_id), input_ids), masked


def random_length(length: int, ratio: float, generator: torch.Generator | None = None) -> int:
    """LLaDA pre-training's length trick: with probability `ratio` a length drawn uniformly from 1..length, else
    `length`. Truncating the batch to it (`ids[:, :n]`) teaches the model sequences shorter than the context."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"random_length_ratio must be in [0, 1], got {ratio}")
    if length < 1 or ratio == 0.0:
        return length
    draw = torch.rand(2, generator=generator, device=generator.device if generator is not None else None)
    if draw[0].item() >= ratio:
        return length
    return min(int(draw[1].item() * length) + 1, length)


def cart_weights(masked: torch.Tensor, geo_p: float = DEFAULT_CART_GEO_P) -> torch.Tensor:
    """Dream's CART weights [B, L]: for a masked i, sum over unmasked j of 0.5 p (1-p)^(|i-j|-1); 0 where unmasked.

    Every position that is not masked (prompt, padding, clean response tokens) counts as context. Computed as a 1-D
    convolution of the unmasked indicator with the geometric kernel: O(B L^2) work but only O(B L) memory.
    """
    if masked.dim() != 2:
        raise ValueError(f"cart_weights: masked must be [batch, length], got shape {tuple(masked.shape)}")
    length = masked.shape[1]
    dist = torch.arange(-(length - 1), length, device=masked.device, dtype=torch.float64).abs()
    kernel = 0.5 * geo_p * (1.0 - geo_p) ** (dist - 1).clamp_min(0)
    kernel[length - 1] = 0.0  # a position is not its own context
    context = (~masked.bool()).to(torch.float32)[:, None, :]
    weights = F.conv1d(context, kernel.to(torch.float32)[None, None, :], padding=length - 1)[:, 0, :]
    return weights * masked.to(torch.float32)
