"""Answer chat prompts with the family's own sampler (`Family.sampler`: LLaDA-style for LLaDA, BERT and converted
models, Dream-style for Dream, `generate` for causal LMs), built once from `SamplerSettings` and checked then.
Shared by the trainers' sample logging, the evaluator and lm-eval."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from dlm.block_diffusion import model_block_size
from dlm.families.base import Family
from dlm.families.special_ids import SpecialIds
from dlm.samplers.bd3lm import BD3LMSampler
from dlm.samplers.causal import CausalSampler
from dlm.samplers.common import SampleOutput, StepHook
from dlm.samplers.dream import DreamSampler
from dlm.samplers.elastic import REFRESH_SIMILARITY
from dlm.samplers.llada import LladaSampler, growing
from dlm.samplers.llada2 import LLaDA2Sampler
from dlm.samplers.sdar import SDARSampler

AUTO_CACHE = "auto"  # the family's fastest decoding measured to keep answers (`resolve_auto`)
# Fast-dLLM's 0.9 lost 3 answers of 16 at 1,024 tokens on the counting bench, 0.99 none (bench/sample.py, README)
FAST_THRESHOLD = 0.99


@dataclass(frozen=True)
class SamplerSettings:
    """Sampler settings; every reported generation score carries them."""

    steps: int = 32
    max_new_tokens: int = 32
    block_length: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    alg: str = "entropy"
    alg_temp: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    suppress_eos_confidence: bool = False
    cache: str = "none"  # diffusion samplers: "prefix"/"dual" approximate key/value caches (LLaDA and Dream), "auto"
    parallel_threshold: float | None = None  # diffusion samplers: also reveal every position this confident
    grow_canvas: int = 0  # LLaDA-style samplers: grow the canvas this many tokens at a time, stop at the end token
    # diffusion samplers: a row stops once its answer has ended; answers are unchanged, only the canvas after them
    stop_at_end: bool = True
    suffix_window: int | None = None  # LLaDA-style samplers: positions after the block kept in view (DPad)
    refresh_similarity: float = REFRESH_SIMILARITY  # cache "elastic": refresh where attention drifts below this

    @classmethod
    def from_form(
        cls,
        *,
        alg_temp: float,
        top_p: float,
        top_k: int,
        parallel_threshold: float,
        suffix_window: int = -1,
        **fields: Any,
    ) -> SamplerSettings:
        """Settings from a form's values, whose "off" values (alg_temp 0, top_p 1, top_k 0, threshold 0, suffix
        window -1) are the samplers' None."""
        return cls(
            alg_temp=alg_temp or None,
            top_p=top_p if top_p < 1 else None,
            top_k=top_k or None,
            parallel_threshold=parallel_threshold or None,
            suffix_window=suffix_window if suffix_window >= 0 else None,
            **fields,
        )


Sampler = LladaSampler | DreamSampler | CausalSampler | BD3LMSampler | SDARSampler | LLaDA2Sampler
# `Family.sampler` names one of these
SAMPLERS: dict[str, type[Sampler]] = {
    "llada": LladaSampler,
    "llada2": LLaDA2Sampler,
    "dream": DreamSampler,
    "causal": CausalSampler,
    "bd3lm": BD3LMSampler,
    "sdar": SDARSampler,
}


def resolve_auto(family: Family, settings: SamplerSettings) -> SamplerSettings:
    """`cache="auto"` as the family decodes it, with the `FAST_THRESHOLD` unless a threshold is set: the elastic
    cache where the family's models serve it (LLaDA) and the whole answer window is decoded (no growing canvas, no
    suffix window), else the dual cache where they serve that (Dream; LLaDA with a growing canvas or a window), else
    no cache. Other settings are returned as they are."""
    if settings.cache != AUTO_CACHE:
        return settings
    if "dual" not in family.cache_modes:
        return dataclasses.replace(settings, cache="none")
    whole_window = settings.suffix_window is None and not growing(settings.grow_canvas, settings.max_new_tokens)
    cache = "elastic" if "elastic" in family.cache_modes and whole_window else "dual"
    threshold = settings.parallel_threshold or FAST_THRESHOLD
    return dataclasses.replace(settings, cache=cache, parallel_threshold=threshold)


@cache
def build_sampler(family: Family, settings: SamplerSettings) -> Sampler:
    """The family's sampler with `settings` (`cache="auto"` resolved), checked once (equal settings give the same,
    cached sampler): `SamplingError` names a setting that cannot work and what would."""
    return SAMPLERS[family.sampler].from_settings(resolve_auto(family, settings), family)


def decoding_settings(family: Family, model: Any, settings: SamplerSettings) -> SamplerSettings:
    """`settings` as `model` decodes them (`cache="auto"` resolved): a block-diffusion model decodes in the blocks it
    was trained with (its config's `block_size`, else the family's), whatever `block_length` says; its attention is
    block-causal, so other blocks are a layout it never saw (a BD3LM trained in blocks of 4 and sampled in blocks of
    6: 42% of the demo's answers right, against 95%). Other models decode as given."""
    settings = resolve_auto(family, settings)
    block_size = model_block_size(family, model)
    if block_size is None or block_size == settings.block_length:
        return settings
    return dataclasses.replace(settings, block_length=block_size)


def check_decoding_settings(family: Family, settings: SamplerSettings) -> None:
    """`SamplingError` for cache/threshold settings the family's sampler rejects, before the generated length is
    known. Causal LMs ignore them (their `generate` caches exactly), so one setting can serve a comparison of
    diffusion and causal models."""
    SAMPLERS[family.sampler].check_decoding_settings(resolve_auto(family, settings), family)


def in_blocks(family: Family, settings: SamplerSettings) -> bool:
    """Whether the family's sampler decodes block by block (`block_length`), so the generated length must be a
    multiple of it: LLaDA-style samplers always, Dream with a cache."""
    return SAMPLERS[family.sampler].blockwise or resolve_auto(family, settings).cache != "none"


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Sequence[Mapping[str, str]]], pad_id: int, *, apply_chat_template: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids [B, P] and their attention mask (1 = real token)."""
    rows = []
    for messages in prompts:
        if apply_chat_template:
            ids = tokenizer.apply_chat_template(
                list(messages), tokenize=True, add_generation_prompt=True, return_dict=False
            )
        else:
            ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
        rows.append(list(ids))
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.tensor(row)
        mask[i, length - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model: Any,
    family: Family,
    special: SpecialIds,
    prompt_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: SamplerSettings,
    generator: torch.Generator | None = None,
    on_step: StepHook | None = None,
) -> SampleOutput:
    """Generate continuations of left-padded prompts with the family's sampler; `on_step(canvas, step, block)`
    sees each intermediate canvas (`dlm.samplers.common.StepHook`)."""
    device = next(model.parameters()).device
    sampler = build_sampler(family, decoding_settings(family, model, settings))
    return sampler.answer(model, special, prompt_ids.to(device), attention_mask.to(device), generator, on_step)


def decode_answers(tokenizer: Any, special: SpecialIds, sequences: torch.Tensor, prompt_length: int) -> list[str]:
    """The generated part of each sequence, cut at the first EOS/end-of-turn token."""
    answers = []
    for row in sequences[:, prompt_length:].tolist():
        cut = next((i for i, tok in enumerate(row) if tok in (special.eos, special.eot)), len(row))
        answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return answers


def answer(
    model: Any,
    tokenizer: Any,
    family: Family,
    special: SpecialIds,
    prompts: Sequence[Sequence[Mapping[str, str]]],
    settings: SamplerSettings,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Answers (text) to chat prompts."""
    ids, mask = encode_prompts(tokenizer, prompts, special.pad)
    out = generate(model, family, special, ids, mask, settings, generator)
    return decode_answers(tokenizer, special, out.sequences.cpu(), ids.shape[1])
