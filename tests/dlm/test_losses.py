"""Noise schedules, masking, CART weights, sparse logits and the diffusion / AR losses."""

from __future__ import annotations

import gc
import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from dlm.forward import hidden_states, logits_at, logits_at_positions
from dlm.losses import LossConfig, ar_loss, count_items, diffusion_loss, draw_mask
from dlm.masking import cart_weights, mask_tokens, parse_loss_weight_type, random_length
from dlm.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModelLM
from dlm.schedules import get_schedule, sample_times

VOCAB, MASK_ID, PAD_ID = 70, 3, 0
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
LLAMA_LIKE = dict(SMALL, vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD_ID)


def tiny_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    builders = {
        "llada": lambda: LLaDAModelLM(
            LLaDAConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=64, vocab_size=VOCAB, embedding_size=VOCAB)
        ),
        "dream": lambda: DreamModel(DreamConfig(**LLAMA_LIKE, mask_token_id=MASK_ID, eos_token_id=PAD_ID)),
        "modernbert": lambda: ModernBertForMaskedLM(
            ModernBertConfig(**SMALL, vocab_size=VOCAB, pad_token_id=PAD_ID, max_position_embeddings=64)
        ),
        "bert": lambda: BertForMaskedLM(
            BertConfig(
                **SMALL,
                vocab_size=VOCAB,
                pad_token_id=PAD_ID,
                max_position_embeddings=64,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
        ),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(**LLAMA_LIKE, is_causal=False)),
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**LLAMA_LIKE, is_causal=False)),
        "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**LLAMA_LIKE, head_dim=8, is_causal=False)),
    }
    return builders[family]().float().train()


FAMILIES = ["llada", "dream", "modernbert", "bert", "llama", "qwen2", "qwen3"]


def make_batch(batch: int = 3, length: int = 12, seed: int = 0, attention_mask: bool = False) -> dict:
    """Chat-like rows: a prompt (label -100) then a response; row 0 has no prompt so that position 0 is maskable.
    With `attention_mask`, rows 1.. are right-padded with maskable pads, as Dream's SFT collator does."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (batch, length), generator=g)
    labels = ids.clone()
    mask = torch.ones_like(ids)
    for b in range(1, batch):
        labels[b, : 2 + b] = -100
        if attention_mask:
            pad_from = length - 2 - b
            ids[b, pad_from:] = labels[b, pad_from:] = PAD_ID
            mask[b, pad_from:] = 0
    out = {"input_ids": ids, "labels": labels}
    if attention_mask:
        out["attention_mask"] = mask
    return out


def fixed_mask(batch: dict, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    maskable = batch["labels"] != -100
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(maskable.shape[0], generator=g) * 0.6 + 0.3
    masked = (torch.rand(maskable.shape, generator=g) < t[:, None]) & maskable
    masked[0, 0] = True  # exercises the shifted position 0, which keeps its own logits
    return t, masked


def brute_force_cart(masked: torch.Tensor, p: float) -> torch.Tensor:
    weights = torch.zeros(masked.shape, dtype=torch.float64)
    for b in range(masked.shape[0]):
        for i in range(masked.shape[1]):
            if masked[b, i]:
                for j in range(masked.shape[1]):
                    if not masked[b, j]:
                        weights[b, i] += 0.5 * p * (1 - p) ** (abs(i - j) - 1)
    return weights


def full_logits_loss(model, batch: dict, masked: torch.Tensor, t: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """The straightforward formulation of the reference trainers: full logits, CE everywhere, then mask and weigh."""
    ids = batch["input_ids"]
    kwargs = {"attention_mask": batch["attention_mask"]} if "attention_mask" in batch else {}
    logits = model(input_ids=ids.masked_fill(masked, config.mask_token_id), **kwargs).logits.float()
    if config.shift_logits:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    ce = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    kind = parse_loss_weight_type(config.loss_weight_type)
    if kind.kind == "cart":
        weights = brute_force_cart(masked, kind.geo_p).float()
    elif kind.kind == "uniform":
        weights = torch.ones_like(ce)
    else:
        weights = (1.0 / (t + 1e-6))[:, None].expand_as(ce)
    token_loss = ce * weights * masked
    maskable = batch["labels"] != -100
    b = ids.shape[0]
    if config.loss_norm_type == "token":
        return token_loss.sum() / maskable.sum().clamp_min(1)
    if config.loss_norm_type == "sequence":
        return (token_loss / (maskable.sum(-1, keepdim=True).clamp_min(1) * b)).sum()
    return token_loss.sum() / b


def loss_and_grads(model, compute) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


# ---------------------------------------------------------------- schedules


def test_linear_schedule_values() -> None:
    t = torch.tensor([0.001, 0.25, 0.5, 1.0], dtype=torch.float64)
    linear = get_schedule("linear")
    torch.testing.assert_close(linear.alpha(t), 1 - t)
    torch.testing.assert_close(linear.mask_probability(t), t)
    torch.testing.assert_close(linear.weight(t), 1 / (t + 1e-6))


def test_cosine_schedule_derivative_and_weight() -> None:
    cosine = get_schedule("COSINE")
    t = torch.linspace(0.01, 0.99, 9, dtype=torch.float64, requires_grad=True)
    alpha = cosine.alpha(t)
    (autograd_derivative,) = torch.autograd.grad(alpha.sum(), t)
    t = t.detach()
    torch.testing.assert_close(cosine.alpha(t), 1 - torch.cos(math.pi / 2 * (1 - t)))
    torch.testing.assert_close(cosine.alpha_derivative(t), autograd_derivative)
    torch.testing.assert_close(cosine.weight(t), -autograd_derivative / (1 - cosine.alpha(t) + 1e-6))
    assert cosine.alpha(torch.tensor(0.0)) == pytest.approx(1.0) and cosine.alpha(torch.tensor(1.0)) == 0


def test_unknown_schedule_lists_choices() -> None:
    with pytest.raises(ValueError, match="noise_schedule 'loglinear'.*linear, cosine"):
        get_schedule("loglinear")


def test_sample_times_range_and_determinism() -> None:
    t = sample_times(20000, 0.1, torch.Generator().manual_seed(0))
    assert t.min() >= 0.1 and t.max() < 1.0
    assert t.mean().item() == pytest.approx(0.55, abs=0.01)
    torch.testing.assert_close(t, sample_times(20000, 0.1, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="time_epsilon"):
        sample_times(2, 1.0)


# ---------------------------------------------------------------- masking


def test_mask_tokens_statistics() -> None:
    ids = torch.randint(5, 60, (4, 20000))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :5000] = False
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    noisy, masked = mask_tokens(ids, maskable, t, MASK_ID, torch.Generator().manual_seed(0))
    assert not masked[:, :5000].any()
    rates = masked[:, 5000:].float().mean(dim=1)
    torch.testing.assert_close(rates, t, atol=0.015, rtol=0)
    assert (noisy == MASK_ID).equal(masked) and noisy[~masked].equal(ids[~masked])
    _, cosine_masked = mask_tokens(ids, maskable, t, MASK_ID, torch.Generator().manual_seed(0), schedule="cosine")
    expected = 1 - (1 - torch.cos(math.pi / 2 * (1 - t)))
    torch.testing.assert_close(cosine_masked[:, 5000:].float().mean(dim=1), expected, atol=0.015, rtol=0)


def test_mask_tokens_rejects_bad_shapes() -> None:
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="t must have shape \\[2\\]"):
        mask_tokens(ids, ids.bool(), torch.zeros(3), MASK_ID)


def test_random_length() -> None:
    assert random_length(100, 0.0) == 100
    g = torch.Generator().manual_seed(0)
    draws = [random_length(10, 1.0, g) for _ in range(2000)]
    assert set(draws) == set(range(1, 11))
    draws = [random_length(10, 0.25, g) for _ in range(4000)]
    assert sum(d != 10 for d in draws) / len(draws) == pytest.approx(0.25 * 0.9, abs=0.03)
    with pytest.raises(ValueError, match="random_length_ratio"):
        random_length(10, 1.5)


@pytest.mark.parametrize("geo_p", [0.3, 0.05, 0.9, 1.0])
def test_cart_weights_match_brute_force(geo_p: float) -> None:
    g = torch.Generator().manual_seed(0)
    masked = torch.rand(5, 37, generator=g) < torch.tensor([0.1, 0.5, 0.9, 1.0, 0.0])[:, None]
    expected = brute_force_cart(masked, geo_p).float()
    torch.testing.assert_close(cart_weights(masked, geo_p), expected, rtol=1e-5, atol=1e-7)
    assert (cart_weights(masked, geo_p)[3] == 0).all()  # nothing unmasked: no context


def test_parse_loss_weight_type() -> None:
    assert parse_loss_weight_type("scheduler").kind == "scheduler"
    assert parse_loss_weight_type(" Uniform ").kind == "uniform"
    assert parse_loss_weight_type("cart[geo_p:0.3]").geo_p == 0.3
    assert parse_loss_weight_type("cart").geo_p == 0.3
    assert str(parse_loss_weight_type("cart[geo_p:0.25]")) == "cart[geo_p:0.25]"
    for bad in ("cart[geo_p:0]", "cart[geo_p:1.5]", "cart[geo_p:1e]"):
        with pytest.raises(ValueError, match="geo_p must be a number in"):
            parse_loss_weight_type(bad)
    for bad in ("elbo", "cart[geo_p:x]", "cart[p:0.3]"):
        with pytest.raises(ValueError, match="unknown loss_weight_type .*scheduler, uniform, cart"):
            parse_loss_weight_type(bad)


def test_loss_config_validation_and_family_defaults() -> None:
    with pytest.raises(ValueError, match="loss_norm_type 'mean'.*token, sequence, batch"):
        LossConfig(mask_token_id=MASK_ID, loss_norm_type="mean")
    with pytest.raises(ValueError, match="loss_weight_type"):
        LossConfig(mask_token_id=MASK_ID, loss_weight_type="1/t")
    dream = LossConfig.for_family("dream", 151666)
    assert dream.shift_logits and dream.loss_weight_type == "cart[geo_p:0.3]"
    llada = LossConfig.for_family("llada", 126336, loss_norm_type="sequence")
    assert not llada.shift_logits and llada.loss_weight_type == "scheduler" and llada.loss_norm_type == "sequence"
    with pytest.raises(ValueError, match="not a diffusion family"):
        LossConfig.for_family("ar", 0)


# ---------------------------------------------------------------- sparse logits == full logits

SETTINGS = [
    ("scheduler", "token", None),  # None: the family's own shift
    ("cart[geo_p:0.3]", "sequence", True),
    ("uniform", "batch", False),
]


@pytest.mark.parametrize("attention_mask", [False, True], ids=["no_mask", "attention_mask"])
@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_logits_loss_and_gradients_equal_full_logits(family: str, attention_mask: bool) -> None:
    model = tiny_model(family)
    batch = make_batch(attention_mask=attention_mask)
    t, masked = fixed_mask(batch)
    head_outputs = []
    for weight, norm, shift in SETTINGS:
        shift = family == "dream" if shift is None else shift
        config = LossConfig(MASK_ID, shift_logits=shift, loss_weight_type=weight, loss_norm_type=norm)
        hook = model.get_output_embeddings().register_forward_hook(lambda _m, _a, out: head_outputs.append(out.shape))
        ours, our_grads = loss_and_grads(
            model, lambda c=config: diffusion_loss(model, batch, masked=masked, t=t, config=c).loss
        )
        hook.remove()
        assert head_outputs.pop() == (masked.sum(), VOCAB)  # the vocabulary projection saw the masked rows only
        reference, reference_grads = loss_and_grads(
            model, lambda c=config: full_logits_loss(model, batch, masked, t, c)
        )
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6, msg=f"{weight} {norm} shift={shift}")
        assert len(our_grads) == len(reference_grads)
        for ours_g, ref_g in zip(our_grads, reference_grads, strict=True):
            torch.testing.assert_close(ours_g, ref_g, rtol=1e-4, atol=1e-6)


def test_hidden_states_then_logits_at_equal_full_logits() -> None:
    model = tiny_model("modernbert").eval()
    batch = make_batch(attention_mask=True)
    with torch.no_grad():
        full = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
        hidden = hidden_states(model, batch["input_ids"], batch["attention_mask"])
        positions = batch["labels"] != -100
        torch.testing.assert_close(logits_at(model, hidden, positions), full[positions])
        sparse = logits_at_positions(model, batch["input_ids"], batch["attention_mask"], positions)
        torch.testing.assert_close(sparse, full[positions])
    assert hidden.shape == (*batch["input_ids"].shape, 32)


def test_shift_keeps_position_zero_and_uses_previous_position() -> None:
    model = tiny_model("dream").eval()
    ids = make_batch()["input_ids"]
    batch_idx, pos_idx = torch.tensor([0, 0, 2]), torch.tensor([0, 1, 7])
    with torch.no_grad():
        full = model(input_ids=ids).logits
        shifted = logits_at_positions(model, ids, None, (batch_idx, pos_idx), shift=True)
    torch.testing.assert_close(shifted, full[batch_idx, torch.tensor([0, 0, 6])])


def test_peft_and_gradient_checkpointing_wrappers() -> None:
    model = tiny_model("llada")
    model.activation_checkpointing_enable()
    targets = ["q_proj", "v_proj", "model.transformer.ff_out"]
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    batch = make_batch()
    t, masked = fixed_mask(batch)
    config = LossConfig(MASK_ID)
    ours, our_grads = loss_and_grads(
        peft_model, lambda: diffusion_loss(peft_model, batch, masked=masked, t=t, config=config).loss
    )
    reference, reference_grads = loss_and_grads(
        peft_model, lambda: full_logits_loss(peft_model, batch, masked, t, config)
    )
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert len(our_grads) == len(reference_grads) > 0  # only the LoRA weights (head included) have gradients
    for ours_g, ref_g in zip(our_grads, reference_grads, strict=True):
        torch.testing.assert_close(ours_g, ref_g, rtol=1e-4, atol=1e-6)


def test_ddp_wrapped_model_goes_through_the_wrapper_forward(tmp_path) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = tiny_model("llada")
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        calls = []
        ddp.register_forward_pre_hook(lambda *_: calls.append(1))
        batch = make_batch()
        t, masked = fixed_mask(batch)
        out = diffusion_loss(ddp, batch, masked=masked, t=t, config=LossConfig(MASK_ID))
        out.loss.backward()
        assert calls == [1]
        reference = full_logits_loss(model, batch, masked, t, LossConfig(MASK_ID))
        torch.testing.assert_close(out.loss.detach(), reference.detach(), rtol=1e-5, atol=1e-6)
        # the reducer holds the process group: free it while the group is alive (a gloo group freed last by a
        # reducer's destructor once hung joining its threads)
        del ddp, out
        gc.collect()
    finally:
        torch.distributed.destroy_process_group()


def test_unsupported_model_is_named() -> None:
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=VOCAB))
    with pytest.raises(TypeError, match="not supported for GPT2LMHeadModel; supported architectures: LLaDAModelLM"):
        logits_at_positions(model, torch.ones(1, 4, dtype=torch.long), None, torch.ones(1, 4, dtype=torch.bool))


# ---------------------------------------------------------------- the loss itself


def test_loss_output_counts() -> None:
    model = tiny_model("llada").eval()
    batch = make_batch()
    t, masked = fixed_mask(batch)
    config = LossConfig(MASK_ID, loss_weight_type="uniform")
    with torch.no_grad():
        out = diffusion_loss(model, batch, masked=masked, t=t, config=config)
        logits = model(input_ids=batch["input_ids"].masked_fill(masked, MASK_ID)).logits
    maskable = batch["labels"] != -100
    assert out.num_maskable == maskable.sum() and out.num_masked == masked.sum() and not out.empty
    assert out.num_correct == (logits.argmax(-1) == batch["input_ids"])[masked].sum()
    # where: the masked positions, and those predicted right (brute force over every position)
    assert torch.equal(out.masked, masked)
    assert torch.equal(out.correct, masked & (logits.argmax(-1) == batch["input_ids"]))
    assert 0 < int(out.correct.sum()) < int(masked.sum()) or int(out.correct.sum()) == int(out.num_correct)
    ce = F.cross_entropy(logits[masked], batch["input_ids"][masked], reduction="sum")
    torch.testing.assert_close(out.nll_sum, ce)
    torch.testing.assert_close(out.loss, ce / maskable.sum())
    assert count_items(batch, "token") == maskable.sum() and count_items(batch, "sequence") == 3


@pytest.mark.parametrize("no_maskable", [True, False], ids=["no_maskable_token", "nothing_masked"])
def test_no_trainable_token_gives_zero_loss_not_nan(no_maskable: bool) -> None:
    model = tiny_model("dream")
    batch = make_batch(attention_mask=True)
    if no_maskable:
        batch["labels"] = torch.full_like(batch["labels"], -100)
    masked = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for norm in ("token", "sequence", "batch"):
        config = LossConfig(MASK_ID, shift_logits=True, loss_weight_type="cart", loss_norm_type=norm)
        out = diffusion_loss(model, batch, masked=masked, t=torch.full((3,), 0.5), config=config)
        out.loss.backward()
        assert out.empty and out.loss.item() == 0.0 and out.nll_sum.item() == 0.0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_loss_rejects_inconsistent_inputs() -> None:
    model = tiny_model("llada")
    batch = make_batch()
    t, masked = fixed_mask(batch)
    config = LossConfig(MASK_ID)
    outside = masked.clone()
    outside[1, 0] = True  # a prompt token
    with pytest.raises(ValueError, match="not maskable"):
        diffusion_loss(model, batch, masked=outside, t=t, config=config)
    wrong_labels = dict(batch, labels=batch["labels"].masked_fill(masked, 7))
    with pytest.raises(ValueError, match="labels differ from input_ids"):
        diffusion_loss(model, wrong_labels, masked=masked, t=t, config=config)
    with pytest.raises(ValueError, match="one time per sequence"):
        diffusion_loss(model, batch, masked=masked, t=t[:2], config=config)


def test_draw_mask_respects_maskable_and_generator() -> None:
    batch = make_batch(batch=4, length=400, attention_mask=True)
    config = LossConfig(MASK_ID, time_epsilon=0.2)
    t, masked = draw_mask(batch, config, torch.Generator().manual_seed(3))
    t2, masked2 = draw_mask(batch, config, torch.Generator().manual_seed(3))
    assert t.equal(t2) and masked.equal(masked2)
    assert (t >= 0.2).all() and not (masked & (batch["labels"] == -100)).any()
    rates = masked.sum(1) / (batch["labels"] != -100).sum(1)
    torch.testing.assert_close(rates.float(), t, atol=0.1, rtol=0)


@pytest.mark.parametrize("norm", ["token", "sequence", "batch"])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_gradient_accumulation_equals_one_big_batch(family: str, norm: str) -> None:
    model = tiny_model(family)
    batch = make_batch(batch=4, length=16, seed=5, attention_mask=family == "dream")
    batch["labels"][3, :12] = -100  # unequal maskable counts between the two micro-batches
    config = LossConfig.for_family(family, MASK_ID, loss_norm_type=norm)
    t, masked = draw_mask(batch, config, torch.Generator().manual_seed(0))
    halves = [{k: v[s] for k, v in batch.items()} for s in (slice(0, 2), slice(2, 4))]
    cuts = [(t[s], masked[s]) for s in (slice(0, 2), slice(2, 4))]

    _, big = loss_and_grads(model, lambda: diffusion_loss(model, batch, masked=masked, t=t, config=config).loss)

    def accumulate(global_denominator: bool) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        total = sum(count_items(half, norm) for half in halves)
        for half, (t_half, masked_half) in zip(halves, cuts, strict=True):
            n = total if global_denominator else None
            out = diffusion_loss(model, half, masked=masked_half, t=t_half, config=config, num_items_in_batch=n)
            (out.loss if global_denominator else out.loss / len(halves)).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for big_g, acc_g in zip(big, accumulate(True), strict=True):
        assert (big_g - acc_g).abs().max() < 1e-6
    if norm == "token":  # averaging per-micro-batch means is the trap the global denominator avoids
        assert any((big_g - naive_g).abs().max() > 1e-4 for big_g, naive_g in zip(big, accumulate(False), strict=True))


# ---------------------------------------------------------------- AR baseline


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_ar_loss_equals_transformers_causal_lm_loss(family: str) -> None:
    torch.manual_seed(0)
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[
        family
    ]
    model = model_class(config_class(**LLAMA_LIKE)).train()
    batch = make_batch(attention_mask=True)
    batch["labels"][batch["attention_mask"] == 0] = -100
    ours, our_grads = loss_and_grads(model, lambda: ar_loss(model, batch).loss)
    reference, reference_grads = loss_and_grads(model, lambda: model(**batch).loss)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    for ours_g, ref_g in zip(our_grads, reference_grads, strict=True):
        torch.testing.assert_close(ours_g, ref_g, rtol=1e-4, atol=1e-6)
    out = ar_loss(model, batch, loss_norm_type="batch")
    assert out.num_masked == count_items(batch, "token", next_token=True)
    torch.testing.assert_close(out.loss.detach(), out.nll_sum / 3)
