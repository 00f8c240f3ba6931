"""The GRPO log-probability estimators against brute force: for the masks they draw, one plain full-logits forward per
noisy sequence (LLaDA unshifted, Dream shifted with its padding mask; block diffusion one small block-causal forward
per block, as block-by-block sampling sees it), and their random draws by statistics."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from dlm.elbo import elbo_terms
from dlm.families import get_family
from dlm.logprob_estimators import (
    LOGP_ESTIMATORS,
    Rollouts,
    completion_logps,
    coupled_masks,
    elbo_completion_masks,
    elbo_logps,
    one_step_prompt_mask,
)
from tests.dlm.test_bd3lm import MASK_ID as QWEN_MASK_ID
from tests.dlm.test_bd3lm import block_causal, tiny_qwen3
from tests.dlm.test_grpo_golden import tiny_model

FAMILIES = {  # family -> the golden fixture checkpoint whose model it runs, head scaled to moderate log-probs
    "llada": {"fixture": "llada-tiny", "head": "model.transformer.ff_out.weight", "head_scale": 0.05},
    "dream": {"fixture": "dream-tiny", "head": "lm_head.weight", "head_scale": 0.05},
}


@functools.cache
def model_of(family: str) -> torch.nn.Module:
    return tiny_model(FAMILIES[family])


def make_rollouts(model: torch.nn.Module, pads=(0, 2, 0), ends=(2, None, 4), prompt=5, completion=6) -> Rollouts:
    """Rows left-padded by `pads`, completions ending (EOS to the end) at `ends` or running on (None)."""
    config = model.config
    generator = torch.Generator().manual_seed(5)
    low = 5  # above every fixture's special ids
    prompt_ids = torch.randint(low, config.vocab_size, (len(pads), prompt), generator=generator)
    completion_ids = torch.randint(low, config.vocab_size, (len(pads), completion), generator=generator)
    prompt_mask = torch.ones_like(prompt_ids, dtype=torch.bool)
    completion_mask = torch.ones_like(completion_ids, dtype=torch.bool)
    for row, (pad, end) in enumerate(zip(pads, ends, strict=True)):
        prompt_ids[row, :pad], prompt_mask[row, :pad] = config.pad_token_id, False
        if end is not None:
            completion_ids[row, end:] = config.eos_token_id
            completion_mask[row, end + 1 :] = False
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask)


def brute_logps(model: torch.nn.Module, rollouts: Rollouts, noisy: torch.Tensor, family: str) -> torch.Tensor:
    """float64 [N, C]: one full forward per row; Dream reads position i - 1 for token i and gets the padding mask."""
    prompt_length = rollouts.prompt_ids.shape[1]
    shift = get_family(family).shift_logits
    rows = []
    for row in range(noisy.shape[0]):
        attention = None
        if get_family(family).uses_attention_mask:
            attention = torch.cat([rollouts.prompt_mask[row], torch.ones_like(rollouts.completion_mask[row])]).long()
            attention = attention[None]
        with torch.no_grad():
            logits = model(input_ids=noisy[row : row + 1], attention_mask=attention).logits[0].double()
        log_probs = torch.log_softmax(logits, dim=-1)
        values = []
        for i, token in enumerate(rollouts.completion_ids[row].tolist()):
            position = prompt_length + i - (1 if shift else 0)
            values.append(log_probs[position, token])
        rows.append(torch.stack(values))
    return torch.stack(rows)


def assert_matches(ours: torch.Tensor, brute: torch.Tensor, mask: torch.Tensor) -> None:
    torch.testing.assert_close(ours[mask].double(), brute[mask], rtol=1e-5, atol=1e-5 * float(brute.abs().max()))
    assert torch.all(ours[~mask] == 0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_step_equals_a_plain_forward(family: str) -> None:
    model = model_of(family)
    rollouts = make_rollouts(model)
    mask_id = model.config.mask_token_id
    masked = one_step_prompt_mask(rollouts, seed=3, p_mask_prompt=0.5)
    noisy = torch.cat(
        [rollouts.prompt_ids.masked_fill(masked, mask_id), torch.full_like(rollouts.completion_ids, mask_id)], 1
    )
    ours = completion_logps(
        model, rollouts, estimator="one_step", family=get_family(family), mask_id=mask_id, seed=3, p_mask_prompt=0.5
    )
    assert ours.dtype == torch.float32 and ours.requires_grad
    assert_matches(ours.detach(), brute_logps(model, rollouts, noisy, family), rollouts.completion_mask)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_coupled_equals_three_plain_forwards(family: str) -> None:
    model = model_of(family)
    rollouts = make_rollouts(model)
    mask_id = model.config.mask_token_id
    masks = coupled_masks(rollouts, seed=8)
    passes = []
    for masked in (torch.ones_like(masks.first), masks.first, masks.second):
        noisy = torch.cat([rollouts.prompt_ids, rollouts.completion_ids.masked_fill(masked, mask_id)], 1)
        passes.append(brute_logps(model, rollouts, noisy, family))
    full, first, second = passes
    brute = (full + torch.where(masks.first, first / masks.t, second / (1 - masks.t))) / 2
    ours = completion_logps(model, rollouts, estimator="coupled", family=get_family(family), mask_id=mask_id, seed=8)
    assert_matches(ours.detach(), brute, rollouts.completion_mask)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_elbo_terms_equal_plain_forwards(family: str) -> None:
    model = model_of(family)
    rollouts = make_rollouts(model)
    mask_id = model.config.mask_token_id
    masks = elbo_completion_masks(rollouts, seed=4, mc_samples=3)
    columns = rollouts.completion_ids.shape[1]
    brute = torch.zeros(rollouts.completion_ids.shape, dtype=torch.float64)
    for sample in masks:
        noisy = torch.cat([rollouts.prompt_ids, rollouts.completion_ids.masked_fill(sample, mask_id)], 1)
        weight = columns / sample.sum(dim=1, keepdim=True).double()
        brute += torch.where(sample, brute_logps(model, rollouts, noisy, family) * weight, 0.0) / len(masks)
    ours = completion_logps(
        model, rollouts, estimator="elbo", family=get_family(family), mask_id=mask_id, seed=4, mc_samples=3
    )
    assert_matches(ours.detach(), brute, rollouts.completion_mask)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_elbo_terms_sum_to_the_projects_elbo(family: str) -> None:
    """Summed over an unpadded, never-ended completion, the per-token terms are `dlm.elbo`'s count-form ELBO terms."""
    model = model_of(family)
    rollouts = make_rollouts(model, pads=(0, 0), ends=(None, None))
    masks = elbo_completion_masks(rollouts, seed=1, mc_samples=4)
    mask_id = model.config.mask_token_id
    with torch.no_grad():
        ours = elbo_logps(model, rollouts, masks, family=get_family(family), mask_id=mask_id)
        prompt_length = rollouts.prompt_ids.shape[1]
        response = torch.zeros(rollouts.input_ids.shape, dtype=torch.bool)
        response[:, prompt_length:] = True
        full_masks = torch.nn.functional.pad(masks, (prompt_length, 0))
        terms = elbo_terms(
            model, rollouts.input_ids, response, full_masks, mask_id=mask_id, shift=get_family(family).shift_logits
        )
    torch.testing.assert_close(ours.double().sum(dim=1), terms.mean(dim=0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("estimator", LOGP_ESTIMATORS)
def test_micro_batches_with_their_row_offset_see_the_whole_batchs_masks(estimator: str) -> None:
    model = model_of("dream")
    rollouts = make_rollouts(model, pads=(0, 2, 0, 1), ends=(2, None, 4, 5))
    common = {"estimator": estimator, "family": get_family("dream"), "mask_id": model.config.mask_token_id}
    with torch.no_grad():
        whole = completion_logps(model, rollouts, seed=21, mc_samples=2, **common)
        for first in (0, 1, 3):
            part = Rollouts(*(t[first : first + 2] for t in vars(rollouts).values()))
            ours = completion_logps(model, part, seed=21, mc_samples=2, row_offset=first, **common)
            torch.testing.assert_close(ours, whole[first : first + 2], rtol=1e-5, atol=1e-5)
        shifted = completion_logps(
            model, Rollouts(*(t[1:3] for t in vars(rollouts).values())), seed=21, mc_samples=2, **common
        )
    assert not torch.allclose(shifted, whole[1:3])  # without the offset, rows take the batch's first draws


def test_one_step_prompt_masks_follow_their_rate_and_seed() -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (64, 80), generator=generator)
    rollouts = Rollouts(
        ids[:, :50], torch.ones(64, 50, dtype=torch.bool), ids[:, 50:], torch.ones(64, 30, dtype=torch.bool)
    )
    for p in (0.1, 0.3, 0.7):
        rate = float(one_step_prompt_mask(rollouts, 11, p).float().mean())
        assert abs(rate - p) < 4 * (p * (1 - p) / (64 * 50)) ** 0.5
    assert torch.equal(one_step_prompt_mask(rollouts, 11, 0.3), one_step_prompt_mask(rollouts, 11, 0.3))
    assert not torch.equal(one_step_prompt_mask(rollouts, 11, 0.3), one_step_prompt_mask(rollouts, 12, 0.3))
    assert not one_step_prompt_mask(rollouts, 11, 0.0).any() and one_step_prompt_mask(rollouts, 11, 1.0).all()


def test_coupled_masks_are_complementary_at_rate_t() -> None:
    ids = torch.randint(5, 60, (32, 70), generator=torch.Generator().manual_seed(0))
    rollouts = Rollouts(
        ids[:, :10], torch.ones(32, 10, dtype=torch.bool), ids[:, 10:], torch.ones(32, 60, dtype=torch.bool)
    )
    ratios = []
    for seed in range(40):
        masks = coupled_masks(rollouts, seed)
        assert 0.2 <= masks.t <= 0.8
        assert not (masks.first & masks.second).any() and (masks.first | masks.second).all()
        assert (
            abs(float(masks.first.float().mean()) - masks.t)
            < 4 * (masks.t * (1 - masks.t) / masks.first.numel()) ** 0.5
        )
        ratios.append(masks.t)
    assert max(ratios) - min(ratios) > 0.3  # t is drawn anew per seed, over (0.2, 0.8)
    again = coupled_masks(rollouts, 7)
    assert again.t == coupled_masks(rollouts, 7).t and torch.equal(again.first, coupled_masks(rollouts, 7).first)


def test_elbo_masks_spread_their_counts() -> None:
    ids = torch.randint(5, 60, (3, 14), generator=torch.Generator().manual_seed(0))
    rollouts = Rollouts(ids[:, :4], torch.ones(3, 4, dtype=torch.bool), ids[:, 4:], torch.ones(3, 10, dtype=torch.bool))
    masks = elbo_completion_masks(rollouts, seed=2, mc_samples=5)
    counts = masks.sum(dim=-1)  # [5, 3]
    assert masks.shape == (5, 3, 10) and (counts >= 1).all()
    assert all(len(set(counts[:, row].tolist())) == 5 for row in range(3))  # five different counts over 1..10
    assert torch.equal(masks, elbo_completion_masks(rollouts, seed=2, mc_samples=5))


def qwen_block_model(block_size: int = 4) -> torch.nn.Module:
    model = tiny_qwen3()
    model.config.block_size = block_size
    return model


def brute_block_logps(model, rollouts: Rollouts, noisy: torch.Tensor, block_size: int) -> torch.Tensor:
    """float64 [N, C]: per block, one forward over [clean blocks before it, its noisy tokens], block-causal."""
    prompt_length = rollouts.prompt_ids.shape[1]
    clean = rollouts.input_ids
    length = clean.shape[1]
    out = torch.zeros(rollouts.completion_ids.shape, dtype=torch.float64)
    for row, start in itertools.product(range(clean.shape[0]), range(0, length, block_size)):
        end = min(start + block_size, length)
        if end <= prompt_length:
            continue
        context = torch.cat([clean[row, :start], noisy[row, start:end]])
        with torch.no_grad():
            logits = model(input_ids=context[None], attention_mask=block_causal(end, block_size, "sdpa")).logits[0]
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        for position in range(max(start, prompt_length), end):
            out[row, position - prompt_length] = log_probs[position, clean[row, position]]
    return out


def block_rollouts() -> Rollouts:
    ids = torch.randint(3, QWEN_MASK_ID, (2, 15), generator=torch.Generator().manual_seed(2))
    return Rollouts(ids[:, :6], torch.ones(2, 6, dtype=torch.bool), ids[:, 6:], torch.ones(2, 9, dtype=torch.bool))


def test_block_diffusion_one_step_sees_the_clean_blocks_before() -> None:
    """Blocks of 4 from the first position: the prompt's last 2 tokens share a block with the completion's first 2."""
    model, rollouts = qwen_block_model(), block_rollouts()
    family = get_family("bd3lm")
    masked = one_step_prompt_mask(rollouts, 5, 0.5)
    noisy = torch.cat(
        [rollouts.prompt_ids.masked_fill(masked, QWEN_MASK_ID), torch.full_like(rollouts.completion_ids, QWEN_MASK_ID)],
        1,
    )
    with torch.no_grad():
        ours = completion_logps(
            model, rollouts, estimator="one_step", family=family, mask_id=QWEN_MASK_ID, seed=5, p_mask_prompt=0.5
        )
    brute = brute_block_logps(model, rollouts, noisy, 4)
    assert_matches(ours, brute, rollouts.completion_mask)


def test_block_diffusion_elbo_weighs_each_block_by_its_own_count() -> None:
    model, rollouts = qwen_block_model(), block_rollouts()
    family = get_family("bd3lm")
    masks = elbo_completion_masks(rollouts, 6, 2, block_size=4)
    prompt_length = rollouts.prompt_ids.shape[1]
    brute = torch.zeros(rollouts.completion_ids.shape, dtype=torch.float64)
    for sample in masks:
        noisy = torch.cat([rollouts.prompt_ids, rollouts.completion_ids.masked_fill(sample, QWEN_MASK_ID)], 1)
        logps = brute_block_logps(model, rollouts, noisy, 4)
        block = (torch.arange(sample.shape[1]) + prompt_length) // 4
        for row, b in itertools.product(range(2), block.unique().tolist()):
            where = block == b
            assert sample[row, where].any(), "every completion block has a masked token"
            weight = where.sum() / sample[row, where].sum()
            brute[row, where] += torch.where(sample[row, where], logps[row, where] * weight, 0.0) / len(masks)
    with torch.no_grad():
        ours = elbo_logps(model, rollouts, masks, family=family, mask_id=QWEN_MASK_ID)
    assert_matches(ours, brute, rollouts.completion_mask)


def test_bad_settings_are_named() -> None:
    model = model_of("llada")
    rollouts = make_rollouts(model)
    family = get_family("llada")
    common = {"family": family, "mask_id": model.config.mask_token_id, "seed": 0}
    with pytest.raises(ValueError, match="unknown logp estimator 'two_step'.*one_step, coupled, elbo"):
        completion_logps(model, rollouts, estimator="two_step", **common)
    with pytest.raises(ValueError, match="p_mask_prompt"):
        completion_logps(model, rollouts, estimator="one_step", p_mask_prompt=1.5, **common)
    with pytest.raises(ValueError, match="mc_samples"):
        completion_logps(model, rollouts, estimator="elbo", mc_samples=0, **common)
    with pytest.raises(ValueError, match="Rollouts"):
        Rollouts(rollouts.prompt_ids, rollouts.prompt_mask[:, 1:], rollouts.completion_ids, rollouts.completion_mask)
    assert LOGP_ESTIMATORS == ("one_step", "coupled", "elbo")
