"""SDAR: the native model against the official modeling file and `generate.py` (golden fixture `sdar-tiny`,
tests/fixtures/golden/sdar-tiny/generate.py), the exact block cache against an uncached forward, the family and the
published sizes."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache

import dlm  # noqa: F401  (registers SDAR with the Auto classes)
from dlm.families import detect_family, get_family
from dlm.families.special_ids import resolve_special_ids
from dlm.forward import logits_at_positions
from dlm.models.sdar import SDARConfig, SDARForCausalLM, SDARMoeConfig, SDARMoeForCausalLM

FIXTURE = Path(__file__).parents[1] / "fixtures" / "golden" / "sdar-tiny"
LOGITS_RTOL = 1e-4


@functools.cache
def golden() -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((FIXTURE / "golden.json").read_text()), load_file(FIXTURE / "golden.safetensors")


@functools.cache
def model(attn_implementation: str = "sdpa") -> SDARForCausalLM:
    return AutoModelForCausalLM.from_pretrained(FIXTURE, attn_implementation=attn_implementation).eval()


def assert_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    tolerance = LOGITS_RTOL * reference.float().std().item()
    assert (ours.float() - reference.float()).abs().max().item() <= tolerance


def block_mask(length: int, block: int) -> torch.Tensor:
    """Bool [1, 1, L, L]: key j visible from query i when j // block <= i // block (written out, not our code)."""
    index = torch.arange(length)
    return ((index.unsqueeze(0) // block) <= (index.unsqueeze(1) // block))[None, None]


def test_loads_by_name_without_remote_code():
    loaded, info = AutoModelForCausalLM.from_pretrained(FIXTURE, output_loading_info=True)
    assert type(loaded) is SDARForCausalLM
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    raw = json.loads((FIXTURE / "config.json").read_text())
    assert raw["auto_map"] and raw["attn_implementation"] == "flex_attention"  # as the published configs
    assert not hasattr(loaded.config, "auto_map") and loaded.config._attn_implementation == "sdpa"
    assert loaded.config.block_size == 4 and loaded.config.mask_token_id == 63


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_forward_matches_reference(attn_implementation):
    _, tensors = golden()
    ours = model(attn_implementation)
    assert ours.config._attn_implementation == attn_implementation
    ids = tensors["block_forward.input_ids"]
    causal, visible = tensors["block_forward.logits_block_causal"], tensors["block_forward.logits_all_visible"]
    float_mask = block_mask(12, 4)[0].float()  # [1, L, L] 0/1 floats, as generate.py passes it
    with torch.no_grad():
        assert_close(ours(ids).logits, causal)  # no mask: block-causal by position
        assert_close(ours(ids, attention_mask=float_mask).logits, causal)
        assert_close(ours(ids, attention_mask=block_mask(12, 4)).logits, causal)
        assert_close(ours(ids, attention_mask=torch.ones(2, 1, 12, 12, dtype=torch.bool)).logits, visible)
    assert (causal - visible).abs().max() > 100 * LOGITS_RTOL * causal.std()  # the masks matter


def test_cached_block_matches_reference_and_store_kv_false_keeps_the_cache():
    _, tensors = golden()
    ids, cache = tensors["block_forward.input_ids"], DynamicCache()
    with torch.no_grad():
        model()(ids[:, :8], past_key_values=cache, use_cache=True)
        logits = model()(ids[:, 8:], past_key_values=cache, use_cache=True, store_kv=False).logits
    assert cache.get_seq_length() == 8
    assert_close(logits, tensors["block_forward.logits_cached_last_block"])


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_cached_blocks_equal_an_uncached_forward(moe):
    """Brute force: prefill, then each block against the cache, equals one forward under the block-causal mask;
    a left-padded row with shifted positions equals the same row unpadded."""
    sdar = model() if not moe else tiny_moe()
    ids = torch.randint(0, 58, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = sdar(ids, attention_mask=block_mask(16, 4)).logits
        cache, pieces = DynamicCache(), []
        for start in range(0, 16, 4):
            pieces.append(sdar(ids[:, start : start + 4], past_key_values=cache, use_cache=True).logits)
        padded = torch.cat([torch.full((2, 3), 58), ids], dim=1)
        keep = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 16, dtype=torch.long)], dim=1)
        positions = (torch.arange(19) - 3).clamp_min(0).expand(2, -1)
        shifted = sdar(padded, attention_mask=keep, position_ids=positions).logits[:, 3:]
    assert_close(torch.cat(pieces, dim=1), full)
    assert_close(shifted, full)


def test_logits_at_positions_selects_rows_of_the_full_logits():
    _, tensors = golden()
    ids = tensors["block_forward.input_ids"]
    chosen = ids == 63
    with torch.no_grad():
        sparse = logits_at_positions(model(), ids, None, chosen)
    assert_close(sparse, tensors["block_forward.logits_block_causal"][chosen])


def test_family_detection_and_special_ids():
    config = AutoConfig.from_pretrained(FIXTURE)
    family = detect_family(config)
    assert family is get_family("sdar") and family.block_size == 4 and family.sampler == "sdar"
    assert detect_family({"architectures": ["SDARMoeForCausalLM"], "model_type": "sdar_moe"}) is family
    assert detect_family({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}).name == "ar"
    assert detect_family({"architectures": ["Qwen3ForCausalLM"], "is_causal": False}).name == "a2d"
    ids = resolve_special_ids(family, config, AutoTokenizer.from_pretrained(FIXTURE))
    assert (ids.mask, ids.eos, ids.eot, ids.pad) == (63, 58, 60, 58)
    assert get_family("ar").block_size is None


# ---- the published sizes, counted on the meta device ------------------------------------------------------------
QWEN3_DIMS = {  # hidden, intermediate, layers, heads, kv heads, tied embeddings (the published config.json files)
    "SDAR-1.7B-Chat": (2048, 6144, 28, 16, 8, True),
    "SDAR-4B-Chat": (2560, 9728, 36, 32, 8, False),
    "SDAR-8B-Chat": (4096, 12288, 36, 32, 8, False),
}
VOCAB, HEAD_DIM = 151936, 128


def dense_count(hidden: int, inter: int, layers: int, heads: int, kv: int, tied: bool) -> int:
    attention = hidden * HEAD_DIM * (2 * heads + 2 * kv) + 2 * HEAD_DIM
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    return VOCAB * hidden * (1 if tied else 2) + layers * per_layer + hidden


@pytest.mark.parametrize(("name", "nominal"), [("SDAR-1.7B-Chat", 1.7e9), ("SDAR-4B-Chat", 4e9), ("SDAR-8B-Chat", 8e9)])
def test_published_dense_sizes(name, nominal):
    hidden, inter, layers, heads, kv, tied = QWEN3_DIMS[name]
    config = SDARConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=HEAD_DIM, tie_word_embeddings=tied,
        block_size=4, mask_token_id=151669, rope_theta=1000000,
    )  # fmt: skip
    with torch.device("meta"):
        count = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    assert count == dense_count(hidden, inter, layers, heads, kv, tied)
    assert 0.95 * nominal < count < 1.15 * nominal


def test_published_moe_size():
    """SDAR-30B-A3B: Qwen3-30B-A3B's shape (48 layers, 128 experts of width 768, 8 active)."""
    config = SDARMoeConfig(
        vocab_size=VOCAB, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=HEAD_DIM, num_experts=128, num_experts_per_tok=8,
        tie_word_embeddings=False, block_size=4, mask_token_id=151669,
    )  # fmt: skip
    with torch.device("meta"):
        count = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    attention = 2048 * HEAD_DIM * (2 * 32 + 2 * 4) + 2 * HEAD_DIM
    experts = 128 * 3 * 2048 * 768 + 128 * 2048  # expert projections and the router
    assert count == 2 * VOCAB * 2048 + 48 * (attention + experts + 2 * 2048) + 2048
    assert 30e9 < count < 31e9


@functools.cache
def tiny_moe() -> SDARMoeForCausalLM:
    config = SDARMoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
        block_size=4, mask_token_id=63, initializer_range=0.3, architectures=["SDARMoeForCausalLM"],
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_moe_saves_per_expert_weights_and_reloads(tmp_path):
    tiny_moe().save_pretrained(tmp_path)
    names = set(load_file(tmp_path / "model.safetensors"))
    assert {"model.layers.0.mlp.gate.weight", "model.layers.1.mlp.experts.3.down_proj.weight"} <= names
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is SDARMoeForCausalLM and not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(ids).logits, tiny_moe()(ids).logits)
