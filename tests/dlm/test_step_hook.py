"""The samplers' `on_step` hook: it sees every intermediate canvas in order (masks only ever filled, block by
block), its last canvas is the output, and sampling with it gives the same tokens as without it."""

from __future__ import annotations

import pytest
import torch

import dlm  # noqa: F401  (registers LLaDA and Dream with the Auto classes)
from dlm.families import FAMILIES
from dlm.families.special_ids import SpecialIds
from dlm.generation import SamplerSettings, generate
from dlm.samplers.dream import DreamSampler
from dlm.samplers.llada import LladaSampler

MASK = {"llada": 3, "dream": 4}  # the golden checkpoints' mask ids
PAD_ID = 2


def _record() -> tuple[list[tuple[torch.Tensor, int, int]], object]:
    seen: list[tuple[torch.Tensor, int, int]] = []
    return seen, lambda canvas, step, block: seen.append((canvas.clone(), step, block))


def _check_in_order(seen: list[tuple[torch.Tensor, int, int]], final: torch.Tensor, mask_id: int, prompt: int) -> None:
    canvases = [canvas for canvas, _, _ in seen]
    for before, after in zip(canvases, canvases[1:], strict=False):
        filled = before != mask_id
        assert torch.equal(after[filled], before[filled]), "a revealed token changed"
        assert (after == mask_id).sum() < (before == mask_id).sum(), "a step revealed nothing"
    assert (canvases[0][:, prompt:] == mask_id).any()
    assert torch.equal(canvases[-1], final)
    blocks = [block for _, _, block in seen]
    assert blocks == sorted(blocks)


@pytest.mark.parametrize(("cache", "threshold"), [("none", None), ("dual", 0.9)])
def test_llada_hook_sees_canvases_in_order(llada, cache: str, threshold: float | None) -> None:
    prompt = torch.randint(5, 60, (2, 6), generator=torch.Generator().manual_seed(0))
    sampler = LladaSampler(steps=8, gen_length=16, block_length=8, cache=cache, parallel_threshold=threshold)
    plain = sampler.sample(llada, prompt, mask_id=MASK["llada"])
    seen, hook = _record()
    hooked = sampler.sample(llada, prompt, mask_id=MASK["llada"], on_step=hook)
    assert torch.equal(hooked.sequences, plain.sequences) and hooked.nfe == plain.nfe
    _check_in_order(seen, plain.sequences, MASK["llada"], prompt.shape[1])
    assert {block for _, _, block in seen} == {0, 1}
    if threshold is None:  # the exact schedule: 4 steps per block, 2 tokens each
        assert [(step, block) for _, step, block in seen] == [(s, b) for b in (0, 1) for s in range(4)]


def test_dream_hook_sees_canvases_in_order(dream) -> None:
    prompt = torch.randint(5, 60, (1, 5), generator=torch.Generator().manual_seed(1))
    sampler = DreamSampler(steps=8, max_new_tokens=8, alg="entropy")
    plain = sampler.sample(dream, prompt, mask_id=MASK["dream"])
    seen, hook = _record()
    hooked = sampler.sample(dream, prompt, mask_id=MASK["dream"], on_step=hook)
    assert torch.equal(hooked.sequences, plain.sequences)
    _check_in_order(seen, plain.sequences, MASK["dream"], prompt.shape[1])
    assert {block for _, _, block in seen} == {0}


def test_generation_passes_the_hook(llada) -> None:
    special = SpecialIds(mask=MASK["llada"], eos=1, eot=1, pad=PAD_ID, bos=None)
    prompt = torch.randint(5, 60, (1, 4), generator=torch.Generator().manual_seed(2))
    settings = SamplerSettings(steps=4, max_new_tokens=8, block_length=4)
    seen, hook = _record()
    out = generate(llada, FAMILIES["llada"], special, prompt, torch.ones_like(prompt), settings, on_step=hook)
    assert len(seen) == 4 and torch.equal(seen[-1][0], out.sequences)
