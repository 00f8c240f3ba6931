"""The causal LMs' sampler: transformers' `generate`, which caches exactly, so the diffusion samplers' fast-decoding
settings do not apply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from dlm.samplers.common import SampleOutput, SamplingError, StepHook

if TYPE_CHECKING:
    from dlm.families.base import Family
    from dlm.families.special_ids import SpecialIds
    from dlm.generation import SamplerSettings


@dataclass(frozen=True)
class CausalSampler:
    """`generate` with greedy decoding at temperature 0, else sampling with `temperature`, `top_p`, `top_k`."""

    blockwise: ClassVar[bool] = False  # decodes block by block whatever the cache

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}")

    @classmethod
    def from_settings(cls, settings: SamplerSettings, family: Family) -> CausalSampler:
        """The sampler for `settings`; the diffusion settings (steps, blocks, cache, threshold) are ignored, so one
        setting can serve a comparison of diffusion and causal models."""
        return cls(settings.max_new_tokens, settings.temperature, settings.top_p, settings.top_k)

    @classmethod
    def check_decoding_settings(cls, settings: SamplerSettings, family: Family) -> None:
        """Nothing to check: `generate` ignores the fast-decoding settings."""

    @property
    def forward_passes(self) -> int:
        """Network evaluations per answer at most: one per new token."""
        return self.max_new_tokens

    @torch.no_grad()
    def answer(
        self,
        model: Any,
        special: SpecialIds,
        prompt_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        on_step: StepHook | None = None,
    ) -> SampleOutput:
        """Answers to left-padded prompts; sampling draws from torch's global generator (as `generate` does).
        `on_step` sees the finished sequences once (step 0 of block 0): `generate` has no canvas to show."""
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=self.temperature > 0,
            temperature=self.temperature or None,
            top_p=self.top_p,
            top_k=self.top_k,
            pad_token_id=special.pad,
            eos_token_id=[special.eos, special.eot],
        )
        if on_step is not None:
            on_step(out, 0, 0)
        new = out[:, prompt_ids.shape[1] :]
        ended = (new == special.eos) | (new == special.eot)
        after_end = ended.cumsum(dim=1) > 0
        return SampleOutput(sequences=out, nfe=new.shape[1], generated_tokens=(~after_end).sum(dim=1).cpu())
