"""Block diffusion (BD3LM): the x_t ⊕ x_0 mask and forward pass, the loss settings, the family and the conversion.

The one-pass forward is checked against an independent computation, the one block-by-block sampling does: for every
noisy block k, a forward over [clean blocks < k, noisy block k] alone, block-causal (a block attends to itself and
the blocks before it, written out position by position), gives the same logits."""

from __future__ import annotations

import pytest
import torch

from dlm.block_diffusion import block_attention_mask, block_logits_at_positions, block_times
from dlm.errors import ModelError
from dlm.families import detect_family, get_family
from dlm.losses import LossConfig, diffusion_loss, draw_mask

VOCAB, MASK_ID = 48, 47


def tiny_qwen3(attn: str = "sdpa", seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        is_causal=False,
        tie_word_embeddings=False,
        attn_implementation=attn,
    )
    return Qwen3ForCausalLM(config).eval()


def brute_mask(length: int, block_size: int) -> torch.Tensor:
    """The mask written out position by position from its definition."""
    allowed = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    for q in range(2 * length):
        for k in range(2 * length):
            q_clean, k_clean = q >= length, k >= length
            q_block, k_block = (q % length) // block_size, (k % length) // block_size
            if not q_clean and not k_clean:
                allowed[q, k] = q_block == k_block
            elif not q_clean and k_clean:
                allowed[q, k] = k_block < q_block
            elif q_clean and k_clean:
                allowed[q, k] = k_block <= q_block
    return allowed


def block_causal(length: int, block_size: int, attn: str) -> torch.Tensor:
    """[1, 1, L, L]: query i attends to key j when j's block is not after i's (bool for sdpa, additive for eager)."""
    allowed = torch.tensor([[j // block_size <= i // block_size for j in range(length)] for i in range(length)])
    if attn == "sdpa":
        return allowed[None, None]
    return torch.zeros(1, 1, length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)


@pytest.mark.parametrize(("length", "block_size"), [(8, 2), (8, 4), (7, 3), (5, 8), (6, 1)])
def test_mask_matches_its_definition(length, block_size):
    assert torch.equal(block_attention_mask(length, block_size), brute_mask(length, block_size))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("length", "block_size"), [(8, 4), (7, 3)])
def test_one_pass_equals_a_forward_per_block(attn, length, block_size):
    model = tiny_qwen3(attn)
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, MASK_ID, (2, length), generator=generator)
    noisy = clean.masked_fill(torch.rand(clean.shape, generator=generator) < 0.5, MASK_ID)
    batch_idx, pos_idx = torch.ones_like(clean, dtype=torch.bool).nonzero(as_tuple=True)
    with torch.no_grad():
        logits = block_logits_at_positions(model, noisy, clean, block_size, (batch_idx, pos_idx))
        logits = logits.view(2, length, VOCAB)
        for start in range(0, length, block_size):
            end = min(start + block_size, length)
            context = torch.cat([clean[:, :start], noisy[:, start:end]], dim=1)
            expected = model(input_ids=context, attention_mask=block_causal(end, block_size, attn)).logits[:, start:end]
            torch.testing.assert_close(logits[:, start:end], expected, rtol=1e-5, atol=1e-5)


def test_block_times_are_constant_per_block_and_stratified():
    t = block_times(3, 10, 4, 1e-3, torch.Generator().manual_seed(0))
    assert t.shape == (3, 10)
    per_block = t[:, ::4]
    assert torch.equal(t, per_block.repeat_interleave(4, dim=1)[:, :10])
    strata = torch.floor((per_block.flatten() - 1e-3) / (1 - 1e-3) * 9).long()  # n = 3 rows x 3 blocks
    assert sorted(strata.tolist()) == list(range(9))


def test_loss_with_block_times_weights_each_block_by_its_own_time():
    model = tiny_qwen3()
    ids = torch.randint(0, MASK_ID, (2, 8), generator=torch.Generator().manual_seed(3))
    batch = {"input_ids": ids, "labels": ids.clone()}
    config = LossConfig(mask_token_id=MASK_ID, block_size=4, block_time="block", loss_norm_type="batch")
    t, masked = draw_mask(batch, config, torch.Generator().manual_seed(5))
    assert t.shape == (2, 8)
    with torch.no_grad():
        loss = diffusion_loss(model, batch, masked=masked, t=t, config=config).loss
        logits = model(
            input_ids=torch.cat([ids.masked_fill(masked, MASK_ID), ids], 1),
            attention_mask=brute_mask(8, 4)[None, None],
            position_ids=torch.arange(8).repeat(2)[None],
        ).logits[:, :8]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    expected = (ce * masked / (t + 1e-6)).sum() / 2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_loss_config_rejects_what_block_diffusion_cannot_do():
    with pytest.raises(ValueError, match="block_size"):
        LossConfig(mask_token_id=1, block_size=0)
    with pytest.raises(ValueError, match="shift_logits"):
        LossConfig(mask_token_id=1, block_size=4, shift_logits=True)
    with pytest.raises(ValueError, match="block_time"):
        LossConfig(mask_token_id=1, block_size=4, block_time="token")
    assert LossConfig.for_family("bd3lm", 5).block_size == get_family("bd3lm").block_size
    assert LossConfig.for_family("a2d", 5).block_size is None


def test_detect_family_tells_ar_a2d_and_bd3lm_apart():
    base = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}
    assert detect_family(base).name == "ar"
    assert detect_family({**base, "is_causal": False}).name == "a2d"
    assert detect_family({**base, "is_causal": False, "block_diffusion": True, "block_size": 4}).name == "bd3lm"
    assert detect_family({**base, "block_diffusion": True}).name == "ar"  # still causal: not converted


def test_eager_mask_is_additive_and_sdpa_mask_is_bool():
    from dlm.block_diffusion import model_attention_mask

    allowed = block_attention_mask(4, 2)
    assert model_attention_mask(tiny_qwen3("sdpa"), allowed).dtype == torch.bool
    eager = model_attention_mask(tiny_qwen3("eager"), allowed)
    assert eager.dtype == torch.float32 and bool((eager[0, 0] == 0).eq(allowed).all())
    with pytest.raises(ModelError, match="sdpa or eager"):
        model = tiny_qwen3("sdpa")
        model.config._attn_implementation = "flash_attention_2"
        model_attention_mask(model, allowed)


@pytest.mark.parametrize("norm", ["token", "sequence", "batch"])
def test_micro_batches_add_up_to_the_whole_batch(norm):
    from dlm.losses import count_items

    model = tiny_qwen3()
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(0, MASK_ID, (4, 8), generator=generator)
    labels = ids.clone()
    labels[:, :3] = -100
    labels[1, :5] = -100
    batch = {"input_ids": ids, "labels": labels}
    config = LossConfig(mask_token_id=MASK_ID, block_size=4, loss_norm_type=norm)
    t, masked = draw_mask(batch, config, generator)
    with torch.no_grad():
        whole = diffusion_loss(model, batch, masked=masked, t=t, config=config).loss
        halves = [{k: v[i : i + 2] for k, v in batch.items()} for i in (0, 2)]
        total = sum(count_items(half, norm) for half in halves)
        parts = sum(
            diffusion_loss(
                model, half, masked=masked[i : i + 2], t=t[i : i + 2], config=config, num_items_in_batch=total
            ).loss
            for half, i in zip(halves, (0, 2), strict=True)
        )
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)


def test_padding_hidden_by_an_attention_mask_changes_nothing_at_real_tokens():
    model = tiny_qwen3()
    generator = torch.Generator().manual_seed(6)
    clean = torch.randint(0, MASK_ID, (1, 6), generator=generator)
    noisy = clean.clone()
    noisy[0, [1, 4]] = MASK_ID
    padded_clean = torch.cat([clean, torch.full((1, 6), 3)], 1)  # two whole blocks of padding after a short one
    padded_noisy = torch.cat([noisy, torch.full((1, 6), MASK_ID)], 1)
    attention = torch.cat([torch.ones(1, 6), torch.zeros(1, 6)], 1).long()
    positions = (torch.zeros(6, dtype=torch.long), torch.arange(6))
    with torch.no_grad():
        alone = block_logits_at_positions(model, noisy, clean, 4, positions)
        padded = block_logits_at_positions(model, padded_noisy, padded_clean, 4, positions, attention)
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sdar_trains_with_the_one_pass_forward_under_either_attention(attn):
    """SDAR reads float masks as 0/1 (its own convention), so it takes the bool mask; the reference computation is
    SDAR's own default mask (block-causal by position) over [clean blocks < k, noisy block k]."""
    from dlm.models.sdar import SDARConfig, SDARForCausalLM

    torch.manual_seed(0)
    config = SDARConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, block_size=4, mask_token_id=MASK_ID,
        tie_word_embeddings=False, attn_implementation=attn,
    )  # fmt: skip
    model = SDARForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(2)
    clean = torch.randint(0, MASK_ID, (2, 8), generator=generator)
    noisy = clean.masked_fill(torch.rand(clean.shape, generator=generator) < 0.5, MASK_ID)
    batch_idx, pos_idx = torch.ones_like(clean, dtype=torch.bool).nonzero(as_tuple=True)
    with torch.no_grad():
        logits = block_logits_at_positions(model, noisy, clean, 4, (batch_idx, pos_idx)).view(2, 8, VOCAB)
        for start in (0, 4):
            context = torch.cat([clean[:, :start], noisy[:, start : start + 4]], dim=1)
            expected = model(input_ids=context).logits[:, start:]
            torch.testing.assert_close(logits[:, start : start + 4], expected, rtol=1e-5, atol=1e-5)
