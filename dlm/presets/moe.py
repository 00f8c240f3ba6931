"""Presets of the mixture-of-experts families, LLaDA-MoE and LLaDA 2.x: tokenizer, config and a random model at the
tiny size or a size preset's `Dims` (its `experts` and `experts_per_token`; None: the tiny layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlm.families.base import read_template
from dlm.presets.bpe import MAX_POSITIONS, fast_tokenizer
from dlm.presets.shapes import (
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    LAYERS,
    TINY,
    Dims,
    padded,
    save_random_model,
    special_token_ids,
)

LLADA2_SPECIALS = ("<|endoftext|>", "<role>", "</role>", "<|role_end|>")
LLADA2_MASK = "<|mask|>"
LLADA_MOE_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<role>", "</role>", "<|role_end|>")
LLADA_MOE_MASK = "<|mask|>"
TINY_EXPERTS, TINY_EXPERTS_PER_TOKEN = 4, 2
TINY_LLADA2_EXPERTS = 8
TINY_LLADA2 = Dims(HIDDEN, HEADS, LAYERS, INTERMEDIATE, kv_heads=HEADS // 2)


def llada_moe_tokenizer(bpe: Any = None):
    tokenizer = fast_tokenizer(
        LLADA_MOE_SPECIALS,
        read_template("llada_moe.jinja"),
        bpe=bpe,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"mask_token": LLADA_MOE_MASK})
    return tokenizer


def build_llada_moe(dst: Path, dims: Dims = TINY, tokenizer: Any = None) -> None:
    tokenizer = tokenizer or llada_moe_tokenizer()
    config = llada_moe_config(dims, padded(len(tokenizer)), **special_token_ids(tokenizer))
    save_random_model("AutoModel", config, tokenizer, dst)


def llada_moe_config(dims: Dims, vocab: int, **special_ids: int | None) -> Any:
    """Every layer MoE, as LLaDA-MoE-7B-A1B; the experts a token uses add up to `dims.intermediate`."""
    from dlm.models.llada_moe import LLaDAMoEConfig

    experts = dims.experts or TINY_EXPERTS
    per_token = dims.experts_per_token or TINY_EXPERTS_PER_TOKEN
    return LLaDAMoEConfig(
        vocab_size=vocab,
        hidden_size=dims.hidden,
        dense_intermediate_size=dims.intermediate,
        expert_intermediate_size=dims.intermediate // per_token,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads or dims.heads,
        num_experts=experts,
        num_experts_per_tok=per_token,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=50000.0,
        rms_norm_eps=1e-5,
        qk_layernorm=True,
        tie_word_embeddings=False,
        use_cache=False,
        architectures=["LLaDAMoEModelLM"],
        **special_ids,
    )


def llada2_tokenizer(bpe: Any = None):
    return fast_tokenizer(
        (*LLADA2_SPECIALS, LLADA2_MASK),
        read_template("llada2.jinja"),
        bpe=bpe,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        mask_token=LLADA2_MASK,
    )


def build_llada2(dst: Path, dims: Dims = TINY_LLADA2, tokenizer: Any = None) -> None:
    tokenizer = tokenizer or llada2_tokenizer()
    config = llada2_config(dims, padded(len(tokenizer)), **special_token_ids(tokenizer))
    save_random_model("AutoModel", config, tokenizer, dst)


def llada2_config(dims: Dims, vocab: int, **special_ids: int | None) -> Any:
    """LLaDA2.0-mini's layout at `dims`: the first layer dense (`intermediate`), the others routed experts (8 at the
    tiny size, 2 per token, in 4 groups of which 2 are kept) of a quarter of that width plus one shared expert."""
    from transformers import AutoConfig

    import dlm.models  # noqa: F401  (registers the llada2_moe model type)

    return AutoConfig.for_model(
        "llada2_moe",
        hidden_size=dims.hidden,
        intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads or dims.heads,
        head_dim=dims.hidden // dims.heads,
        num_experts=dims.experts or TINY_LLADA2_EXPERTS,
        num_experts_per_tok=dims.experts_per_token or TINY_EXPERTS_PER_TOKEN,
        n_group=4,
        topk_group=2,
        num_shared_experts=1,
        moe_intermediate_size=dims.intermediate // 4,
        first_k_dense_replace=1,
        routed_scaling_factor=2.5,
        partial_rotary_factor=0.5,
        vocab_size=vocab,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=600000.0,
        rms_norm_eps=1e-6,
        use_bias=False,
        use_qkv_bias=False,
        use_qk_norm=True,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        embedding_dropout=0.0,
        output_dropout=0.0,
        use_cache=False,
        architectures=["LLaDA2MoeModelLM"],
        **special_ids,
    )
