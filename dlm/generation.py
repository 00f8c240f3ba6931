"""Answer chat prompts with the family's own sampler: LLaDA-style for LLaDA, BERT and converted models,
Dream-style for Dream, `generate` for causal LMs. Shared by the trainers' sample logging and the evaluator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dlm.families import Family, SpecialIds
from dlm.samplers import SampleOutput, check_decoding, check_dream_blocks, check_growth, generate_dream, generate_llada


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
    cache: str = "none"  # diffusion samplers: "prefix"/"dual" approximate key/value caches (LLaDA and Dream)
    parallel_threshold: float | None = None  # diffusion samplers: also reveal every position this confident
    grow_canvas: int = 0  # LLaDA-style samplers: grow the canvas this many tokens at a time, stop at the end token


def check_decoding_settings(family_name: str, settings: SamplerSettings) -> None:
    """`SamplingError` for cache/threshold settings the family's sampler rejects. Causal LMs ignore them (their
    `generate` caches exactly), so one setting can serve a comparison of diffusion and causal models."""
    if family_name == "ar":
        return
    check_decoding(settings.cache, settings.parallel_threshold, family_name)
    if family_name != "dream":
        check_growth(settings.steps, settings.max_new_tokens, settings.grow_canvas)
    if family_name == "dream":
        block_length = settings.block_length if settings.cache != "none" else settings.max_new_tokens
        check_dream_blocks(
            settings.steps, settings.max_new_tokens, block_length, settings.alg, settings.parallel_threshold
        )


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
) -> SampleOutput:
    """Generate continuations of left-padded prompts with the family's sampler."""
    device = next(model.parameters()).device
    prompt_ids, attention_mask = prompt_ids.to(device), attention_mask.to(device)
    if family.name == "ar":
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=attention_mask,
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.temperature > 0,
            temperature=settings.temperature or None,
            top_p=settings.top_p,
            top_k=settings.top_k,
            pad_token_id=special.pad,
            eos_token_id=[special.eos, special.eot],
        )
        new = out[:, prompt_ids.shape[1] :]
        ended = (new == special.eos) | (new == special.eot)
        after_end = ended.cumsum(dim=1) > 0
        return SampleOutput(sequences=out, nfe=new.shape[1], generated_tokens=(~after_end).sum(dim=1).cpu())
    mask_for_model = attention_mask if bool((attention_mask == 0).any()) else None
    if family.name == "dream":
        return generate_dream(
            model,
            prompt_ids,
            steps=settings.steps,
            max_new_tokens=settings.max_new_tokens,
            mask_id=special.mask,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            alg=settings.alg,
            alg_temp=settings.alg_temp,
            block_length=settings.block_length if settings.cache != "none" else None,
            cache=settings.cache,
            parallel_threshold=settings.parallel_threshold,
            attention_mask=mask_for_model,
            eos_id=special.eos,
            eot_id=special.eot,
            generator=generator,
        )
    return generate_llada(
        model,
        prompt_ids,
        steps=settings.steps,
        gen_length=settings.max_new_tokens,
        block_length=settings.block_length,
        mask_id=special.mask,
        temperature=settings.temperature,
        remasking=settings.remasking,
        cfg_scale=settings.cfg_scale,
        attention_mask=mask_for_model,
        eos_id=special.eos,
        eot_id=special.eot,
        suppress_eos_in_confidence=settings.suppress_eos_confidence,
        cache=settings.cache,
        parallel_threshold=settings.parallel_threshold,
        grow_canvas=settings.grow_canvas,
        generator=generator,
    )


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
