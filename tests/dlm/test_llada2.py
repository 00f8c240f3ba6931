"""LLaDA 2.x (`llada2_moe`): the native model and block sampler against dllm's reference (the llada2-tiny golden
fixture), the exact block cache against a brute-force forward, the expert dispatch against a per-token loop, the
real sizes against the published ones, and the family through `dlm.generation`."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.cache_utils import DynamicCache

import dlm  # noqa: F401  (registers llada2_moe with the Auto classes)
from dlm.families import detect_family, get_family
from dlm.forward import logits_at_positions
from dlm.generation import SamplerSettings, build_sampler, check_decoding_settings, encode_prompts, generate
from dlm.loading import load_model_and_tokenizer
from dlm.models.llada2 import LLaDA2MoeModelLM, LLaDA2MoeSparseMoeBlock
from dlm.presets.tiny import ensure_preset
from dlm.samplers.common import SamplingError
from dlm.samplers.llada2 import LLaDA2Sampler, even_schedule

FIXTURE = Path(__file__).parents[1] / "fixtures" / "golden" / "llada2-tiny"
LOGITS_RTOL = 1e-4  # max |ours - reference| relative to the reference logits' standard deviation


@functools.cache
def golden() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return json.loads((FIXTURE / "golden.json").read_text()), load_file(FIXTURE / "golden.safetensors")


@functools.cache
def fixture_model(attn_implementation: str = "sdpa") -> LLaDA2MoeModelLM:
    return AutoModelForMaskedLM.from_pretrained(FIXTURE, attn_implementation=attn_implementation).eval()


def assert_logits_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    diff = (ours.float() - reference.float()).abs().max().item()
    assert diff <= LOGITS_RTOL * reference.float().std().item(), f"max |diff| {diff:.3e}"


def block_causal(length: int, block: int) -> torch.Tensor:
    blocks = torch.arange(length) // block
    return (blocks[None, :] <= blocks[:, None])[None, None]


# ---- loading and forward -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM])
def test_published_layout_loads_by_name_with_every_weight(auto_class) -> None:
    model, info = auto_class.from_pretrained(FIXTURE, output_loading_info=True)
    assert type(model) is LLaDA2MoeModelLM
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert "auto_map" not in model.config.to_dict()
    assert detect_family(model.config) is get_family("llada2")


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("mask", ["no_mask", "block_causal"])
def test_forward_matches_the_reference(attn_implementation: str, mask: str) -> None:
    spec, tensors = golden()
    section = spec["forward_masks"]
    attention_mask = tensors[section["block_causal_mask"]] if mask == "block_causal" else None
    with torch.no_grad():
        logits = fixture_model(attn_implementation)(tensors[section["input_ids"]], attention_mask=attention_mask).logits
    assert_logits_close(logits, tensors[section[f"logits_{mask}"]])


def test_logits_at_positions_selects_rows_of_the_full_forward() -> None:
    spec, tensors = golden()
    ids = tensors[spec["forward_masks"]["input_ids"]]
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, 3] = positions[1, 17] = True
    with torch.no_grad():
        sparse = logits_at_positions(fixture_model(), ids, None, positions)
    assert_logits_close(sparse, tensors[spec["forward_masks"]["logits_no_mask"]][positions])


def test_cached_block_equals_the_uncached_block_causal_forward() -> None:
    """Brute force: blocks 0-2 fed one at a time through a DynamicCache give the logits of one full forward under
    the block-causal mask (the sampler's exact cache)."""
    spec, tensors = golden()
    ids, block = tensors[spec["forward_masks"]["input_ids"]][:, :12], 4
    model = fixture_model()
    with torch.no_grad():
        full = model(ids, attention_mask=block_causal(12, block).expand(2, 1, 12, 12)).logits
        cache = DynamicCache()
        pieces = [model(ids[:, s : s + block], past_key_values=cache, use_cache=True).logits for s in range(0, 12, 4)]
    assert cache.get_seq_length() == 12
    assert_logits_close(torch.cat(pieces, dim=1), full)


def test_noisy_and_clean_stream_in_one_pass_equals_per_block_forwards() -> None:
    """The block-diffusion training input x_t ⊕ x_0 with its 4-D mask and repeated positions: noisy block b's
    logits equal a plain block-causal forward over the clean blocks before b followed by noisy block b."""
    spec, tensors = golden()
    clean, block, length = tensors[spec["forward_masks"]["input_ids"]][:, :12], 4, 12
    noisy = clean.masked_fill(torch.arange(length) % 3 == 1, spec["mask_token_id"])
    blocks = torch.arange(length) // block
    same_block = blocks[:, None] == blocks[None, :]
    earlier = blocks[None, :] < blocks[:, None]
    mask = torch.cat(
        [
            torch.cat([same_block, earlier], dim=1),  # noisy queries: their own noisy block, earlier clean blocks
            torch.cat([torch.zeros_like(same_block), earlier | same_block], dim=1),  # clean: block-causal
        ]
    )[None, None].expand(2, 1, -1, -1)
    positions = torch.arange(length).repeat(2)[None]
    model = fixture_model()
    with torch.no_grad():
        together = model(torch.cat([noisy, clean], dim=1), attention_mask=mask, position_ids=positions).logits
        for b in range(length // block):
            start = b * block
            ids = torch.cat([clean[:, :start], noisy[:, start : start + block]], dim=1)
            alone = model(ids, attention_mask=block_causal(start + block, block).expand(2, 1, -1, -1)).logits
            assert_logits_close(together[:, start : start + block], alone[:, start:])


def test_experts_dispatch_equals_a_per_token_loop() -> None:
    moe = fixture_model().model.layers[1].mlp
    assert isinstance(moe, LLaDA2MoeSparseMoeBlock)
    hidden = torch.randn(2, 5, moe.gate.weight.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = moe(hidden)
        experts, weights, _ = moe.gate(hidden.view(-1, hidden.shape[-1]))
        expected = torch.stack(
            [
                sum(w * moe.experts[e](token) for e, w in zip(row_experts.tolist(), row_weights, strict=True))
                for token, row_experts, row_weights in zip(
                    hidden.view(-1, hidden.shape[-1]), experts, weights, strict=True
                )
            ]
        ).view_as(hidden) + moe.shared_experts(hidden)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_training_gives_every_expert_a_gradient() -> None:
    """Experts no token chose still take part in training (zero gradients), so DDP needs no unused-parameter
    search; in eval mode they are skipped and the output is the same."""
    model = AutoModelForMaskedLM.from_pretrained(FIXTURE)
    ids = golden()[1]["forward_masks.input_ids"][:1, :3]
    model.eval()
    with torch.no_grad():
        evaluated = model(ids).logits
    model.train()
    logits = model(ids).logits
    logits.float().pow(2).mean().backward()
    torch.testing.assert_close(logits, evaluated)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    expert_grads = [expert.up_proj.weight.grad for expert in model.model.layers[1].mlp.experts]
    assert any(bool((g == 0).all()) for g in expert_grads), "3 tokens x 2 experts should leave an expert unused"


def test_router_keeps_whole_groups_and_weighs_by_unbiased_scores() -> None:
    gate = fixture_model().model.layers[1].mlp.gate
    config = gate.config
    tokens = torch.randn(7, config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        experts, weights, logits = gate(tokens)
    per_group = config.num_experts // config.n_group
    assert all(len(set((row // per_group).tolist())) <= config.topk_group for row in experts)
    scores = logits.sigmoid().gather(1, experts)
    torch.testing.assert_close(weights, scores / scores.sum(-1, keepdim=True) * config.routed_scaling_factor)


# ---- sampler -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", golden()[0]["block_sample"]["cases"], ids=lambda c: f"case{c['case']}")
def test_sampler_matches_the_reference_token_ids(case: dict[str, Any]) -> None:
    spec, tensors = golden()
    prompt = tensors[case["prompt"]]
    sampler = LLaDA2Sampler(
        steps=case["steps_per_block"],
        gen_length=case["max_new_tokens"],
        block_size=case["block_size"],
        threshold=case["threshold"],
        temperature=case["temperature"],
    )
    out = sampler.sample(fixture_model(), prompt, mask_id=spec["mask_token_id"])
    reference = tensors[case["output"]]
    assert out.sequences.tolist() == reference[:, : prompt.shape[1] + case["max_new_tokens"]].tolist()


def test_sampling_with_temperature_top_k_top_p_draws_as_the_reference() -> None:
    """Same distribution, same draws: torch's global generator seeded as the reference was."""
    spec, tensors = golden()
    case = spec["sampled"]
    prompt = tensors[case["prompt"]]
    sampler = LLaDA2Sampler(
        steps=case["steps_per_block"],
        gen_length=case["max_new_tokens"],
        block_size=case["block_size"],
        threshold=case["threshold"],
        temperature=case["temperature"],
        top_k=case["top_k"],
        top_p=case["top_p"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case["torch_seed"])
        out = sampler.sample(fixture_model(), prompt, mask_id=spec["mask_token_id"])
    reference = tensors[case["output"]]
    assert out.sequences.tolist() == reference[:, : prompt.shape[1] + case["max_new_tokens"]].tolist()


def editing_sampler(case: dict[str, Any], editing_threshold: float | None = None) -> LLaDA2Sampler:
    return LLaDA2Sampler(
        steps=1,  # unused by the editing rule
        gen_length=case["max_new_tokens"],
        block_size=case["block_size"],
        threshold=case["threshold"],
        editing_threshold=editing_threshold or case["editing_threshold"],
        max_post_steps=case["max_post_steps"],
        tokens_per_step=case["num_to_transfer"],
    )


@pytest.mark.parametrize("case", golden()[0]["editing_sample"]["cases"], ids=lambda c: f"case{c['case']}")
def test_llada21_editing_matches_the_reference_token_ids(case: dict[str, Any]) -> None:
    """LLaDA 2.1's rule; the reference decodes one prompt at a time, ours both rows at once."""
    spec, tensors = golden()
    prompt = tensors[case["prompt"]]
    out = editing_sampler(case).sample(fixture_model(), prompt, mask_id=spec["mask_token_id"])
    reference = tensors[case["output"]]
    assert out.sequences.tolist() == reference[:, : prompt.shape[1] + case["max_new_tokens"]].tolist()


def test_the_editing_cases_do_edit() -> None:
    """Without edits (a threshold no probability exceeds) some case answers differently: the fixture tests editing."""
    spec, tensors = golden()
    differs = []
    for case in spec["editing_sample"]["cases"]:
        prompt = tensors[case["prompt"]]
        out = editing_sampler(case, editing_threshold=1.0).sample(
            fixture_model(), prompt, mask_id=spec["mask_token_id"]
        )
        differs.append(out.sequences.tolist() != tensors[case["output"]][:, : out.sequences.shape[1]].tolist())
    assert any(differs)


def test_padded_rows_decode_as_they_would_alone() -> None:
    spec, tensors = golden()
    prompt = tensors["block_sample.prompt8"]
    padded = prompt.clone()
    padded[1, :3] = spec["eos_token_id"]
    mask = torch.ones_like(padded)
    mask[1, :3] = 0
    sampler = LLaDA2Sampler(steps=4, gen_length=8, block_size=4, threshold=0.8)
    together = sampler.sample(fixture_model(), padded, mask_id=spec["mask_token_id"], attention_mask=mask)
    alone = sampler.sample(fixture_model(), padded[1:], mask_id=spec["mask_token_id"], attention_mask=mask[1:])
    assert together.sequences[1:].tolist() == alone.sequences.tolist()
    assert not bool((together.sequences == spec["mask_token_id"]).any())


def test_even_schedule_spreads_the_block_over_the_steps() -> None:
    assert even_schedule(10, 4) == [3, 3, 2, 2]
    assert even_schedule(4, 6) == [1, 1, 1, 1, 0, 0]


def test_settings_map_to_the_sampler_and_bad_ones_are_refused() -> None:
    family = get_family("llada2")
    settings = SamplerSettings(steps=8, max_new_tokens=20, block_length=8)
    sampler = build_sampler(family, settings)
    assert (sampler.steps, sampler.gen_length, sampler.block_size, sampler.threshold) == (8, 20, 8, 0.95)
    assert build_sampler(family, SamplerSettings(parallel_threshold=0.7)).threshold == 0.7
    with pytest.raises(SamplingError, match="cache='prefix'"):
        check_decoding_settings(family, SamplerSettings(cache="prefix"))
    with pytest.raises(SamplingError, match="block_size"):
        LLaDA2Sampler(steps=4, gen_length=8, block_size=0)


# ---- real sizes ----------------------------------------------------------------------------------------------------
# inclusionAI/LLaDA2.0-mini's config.json; flash: 32 layers of width 4096, 32 heads (4 key/value), 256 experts of
# width 1024 (8 per token) and one shared, the other values as mini's; the dense layer's width is Ling-flash-2.0's.
MINI = {
    "vocab_size": 157184, "hidden_size": 2048, "intermediate_size": 5120, "num_hidden_layers": 20,
    "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 256,
    "num_experts_per_tok": 8, "num_shared_experts": 1, "moe_intermediate_size": 512, "first_k_dense_replace": 1,
    "n_group": 8, "topk_group": 4, "use_bias": False, "use_qkv_bias": False, "pad_token_id": 156892,
}  # fmt: skip
FLASH = {
    **MINI, "hidden_size": 4096, "intermediate_size": 9216, "num_hidden_layers": 32, "num_attention_heads": 32,
    "moe_intermediate_size": 1024,
}  # fmt: skip


def _meta_counts(values: dict[str, Any], layers: int) -> tuple[int, int]:
    """(total, routed-expert) parameters of the real model class with `layers` layers, on the meta device."""
    config = AutoConfig.for_model("llada2_moe", **{**values, "num_hidden_layers": layers})
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    named = list(model.named_parameters())
    return sum(p.numel() for _, p in named), sum(p.numel() for n, p in named if ".mlp.experts." in n)


def real_size(values: dict[str, Any]) -> tuple[float, float]:
    """(total, active) parameters in billions: counted on meta models with one and two MoE layers and extended to
    the real depth layer by layer (every MoE layer is alike); active = all but the unchosen routed experts."""
    dense = values["first_k_dense_replace"]
    total_1, experts_1 = _meta_counts(values, dense + 1)
    total_2, experts_2 = _meta_counts(values, dense + 2)
    moe_layers = values["num_hidden_layers"] - dense
    total = total_1 + (moe_layers - 1) * (total_2 - total_1)
    experts = experts_1 + (moe_layers - 1) * (experts_2 - experts_1)
    active = total - experts + experts * values["num_experts_per_tok"] // values["num_experts"]
    return total / 1e9, active / 1e9


@pytest.mark.parametrize(
    ("values", "published_total", "published_active"),
    [(MINI, 16.0, 1.4), (FLASH, 100.0, 6.1)],
    ids=["LLaDA2.0-mini", "LLaDA2.0-flash"],
)
def test_real_sizes_match_the_published_ones(values, published_total, published_active) -> None:
    total, active = real_size(values)
    assert total == pytest.approx(published_total, rel=0.05)
    assert active == pytest.approx(published_active, rel=0.05)


@pytest.mark.slow
def test_whole_mini_on_the_meta_device_has_the_extended_count() -> None:
    total, _ = _meta_counts(MINI, MINI["num_hidden_layers"])
    assert total / 1e9 == pytest.approx(real_size(MINI)[0], rel=1e-12)


# ---- through dlm.generation ----------------------------------------------------------------------------------------
def test_tiny_preset_loads_and_answers(preset_workspace) -> None:
    ensure_preset("tiny-llada2", preset_workspace)
    loaded = load_model_and_tokenizer("tiny-llada2", workspace=preset_workspace)
    assert loaded.family.name == "llada2" and loaded.family.block_size == 32
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]
    ids, mask = encode_prompts(loaded.tokenizer, prompts, loaded.special_ids.pad)
    settings = SamplerSettings(steps=4, max_new_tokens=10, block_length=4)
    out = generate(loaded.model, loaded.family, loaded.special_ids, ids, mask, settings)
    assert out.sequences.shape == (2, ids.shape[1] + 10)
    assert not bool((out.sequences == loaded.special_ids.mask).any())
    assert out.sequences[:, : ids.shape[1]].tolist() == ids.tolist()
