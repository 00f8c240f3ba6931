"""Each family's preset: how a random model of its real class is built (config, special tokens, tokenizer), at the
tiny size or any `Dims`. `FAMILY_PRESETS` holds one `FamilyPreset` per family; a new family adds its entry here (its
builder here, or, for a mixture-of-experts family, in `dlm.presets.moe`; shapes and saving in `dlm.presets.shapes`)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlm.convert import convert_causal_to_diffusion
from dlm.errors import ModelError
from dlm.families.base import read_template
from dlm.families.bd3lm import DEFAULT_BLOCK_SIZE
from dlm.presets.bpe import MAX_POSITIONS, fast_tokenizer
from dlm.presets.moe import (
    LLADA2_MASK,
    LLADA2_SPECIALS,
    LLADA_MOE_MASK,
    LLADA_MOE_SPECIALS,
    build_llada2,
    build_llada_moe,
    llada2_config,
    llada2_tokenizer,
    llada_moe_config,
    llada_moe_tokenizer,
)
from dlm.presets.shapes import (
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    LAYERS,
    TINY,
    TINY_DREAM,
    Dims,
    padded,
    save_random_model,
    special_token_ids,
)

LLADA_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLADA_MASK = "<|mdm_mask|>"
DREAM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>")
DREAM_MASK = "<|mask|>"
SDAR_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|MASK|>")
SDAR_MASK = "<|MASK|>"
BERT_SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
BERT_CHAT_MARKERS = ("[SYS]", "[/SYS]", "[Question]", "[/Question]", "[Answer]", "[/Answer]")


TINY_BLOCK_SIZE = 4  # tiny-bd3lm: short blocks, so that the short answers of tests span several


def llada_tokenizer(with_mask: bool, bpe: Any = None) -> Any:
    """LLaDA's special tokens and chat template over `bpe` (a `tokenizers.Tokenizer`; None: the presets' generated-text
    BPE), with LLaDA's mask token as the last id when `with_mask`."""
    tokenizer = fast_tokenizer(
        LLADA_SPECIALS,
        read_template("llada.jinja"),
        bpe=bpe,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if with_mask:
        tokenizer.add_special_tokens({"mask_token": LLADA_MASK})
    return tokenizer


def build_llada(dst: Path, dims: Dims = TINY, tokenizer: Any = None) -> None:
    tokenizer = tokenizer or llada_tokenizer(with_mask=True)
    config = _llada_config(dims, padded(len(tokenizer)), **special_token_ids(tokenizer))
    save_random_model("AutoModel", config, tokenizer, dst)


def _llada_config(dims: Dims, vocab: int, **special_ids: int | None) -> Any:
    from transformers import AutoConfig

    import dlm.models  # noqa: F401  (registers the llada model type)

    return AutoConfig.for_model(
        "llada",
        d_model=dims.hidden,
        n_heads=dims.heads,
        n_kv_heads=dims.kv_heads or dims.heads,
        n_layers=dims.layers,
        mlp_hidden_size=dims.intermediate,
        mlp_ratio=dims.intermediate // dims.hidden,
        vocab_size=vocab,
        embedding_size=vocab,
        max_sequence_length=MAX_POSITIONS,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        block_type="llama",
        activation_type="silu",
        layer_norm_type="rms",
        rope=True,
        include_bias=False,
        weight_tying=False,
        use_cache=False,
        architectures=["LLaDAModelLM"],
        **special_ids,
    )


def _dream_tokenizer(bpe: Any = None):
    return fast_tokenizer(
        DREAM_SPECIALS,
        read_template("dream.jinja"),
        bpe=bpe,
        bos_token="<|beginoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        mask_token=DREAM_MASK,
    )


def build_dream(dst: Path, dims: Dims = TINY, tokenizer: Any = None) -> None:
    tokenizer = tokenizer or _dream_tokenizer()
    config = _dream_config(dims, padded(len(tokenizer)), **special_token_ids(tokenizer))
    save_random_model("AutoModel", config, tokenizer, dst)


def _dream_config(dims: Dims, vocab: int, **special_ids: int | None) -> Any:
    from transformers import AutoConfig

    import dlm.models  # noqa: F401  (registers the Dream model type)

    return AutoConfig.for_model(
        "Dream",
        hidden_size=dims.hidden,
        intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads or dims.heads,
        vocab_size=vocab,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_cache=False,
        architectures=["DreamModel"],
        **special_ids,
    )


def _sdar_tokenizer(bpe: Any = None):
    return fast_tokenizer(
        SDAR_SPECIALS,
        read_template("sdar.jinja"),
        bpe=bpe,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        mask_token=SDAR_MASK,
    )


def build_sdar(dst: Path, dims: Dims = TINY_DREAM, tokenizer: Any = None) -> None:
    tokenizer = tokenizer or _sdar_tokenizer()
    config = _sdar_config(dims, padded(len(tokenizer)), **special_token_ids(tokenizer))
    save_random_model("AutoModelForCausalLM", config, tokenizer, dst)


def _sdar_config(dims: Dims, vocab: int, **special_ids: int | None) -> Any:
    from transformers import AutoConfig

    import dlm.models  # noqa: F401  (registers the sdar model type)

    return AutoConfig.for_model(
        "sdar",
        hidden_size=dims.hidden,
        intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads or dims.heads,
        head_dim=dims.hidden // dims.heads,
        vocab_size=vocab,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_cache=False,
        block_size=4,
        architectures=["SDARForCausalLM"],
        **special_ids,
    )


def build_bert(dst: Path) -> None:
    from transformers import ModernBertConfig

    # As the BERT chat checkpoints do: [PAD] is the end token; the chat markers are single special tokens.
    tokenizer = fast_tokenizer(
        BERT_SPECIALS + BERT_CHAT_MARKERS,
        read_template("bert.jinja"),
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        bos_token="[PAD]",
        eos_token="[PAD]",
    )
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        architectures=["ModernBertForMaskedLM"],
    )
    save_random_model("AutoModelForMaskedLM", config, tokenizer, dst)


def build_ar(dst: Path, dims: Dims = TINY, tokenizer: Any = None) -> None:
    tokenizer = tokenizer or llada_tokenizer(with_mask=False)
    special_ids = special_token_ids(tokenizer)
    del special_ids["mask_token_id"]  # a causal model has none
    config = _ar_config(dims, len(tokenizer), **special_ids)
    save_random_model("AutoModelForCausalLM", config, tokenizer, dst)


def _ar_config(dims: Dims, vocab: int, **special_ids: int | None) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=dims.hidden,
        intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads or dims.heads,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
        **special_ids,
    )


def build_a2d(dst: Path, dims: Dims = TINY, tokenizer: Any = None) -> None:
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        build_ar(Path(tmp), dims, tokenizer)
        convert_causal_to_diffusion(tmp, dst, mask_token=LLADA_MASK)


def build_bd3lm(dst: Path, dims: Dims = TINY, tokenizer: Any = None, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        build_ar(Path(tmp), dims, tokenizer)
        convert_causal_to_diffusion(tmp, dst, mask_token=LLADA_MASK, kind="bd3lm", block_size=block_size)


@dataclass(frozen=True)
class FamilyPreset:
    """How dlm builds a random model of one family.

    `specials` and `tokenizer` (over a BPE, default the presets' own) give its tokens and chat template; `build`
    saves a random model of some `Dims` with a tokenizer, `config` makes its config (dims, vocabulary, special
    ids); `sized`: it has size presets for pre-training. `mask_token` is its own mask token, the last id of a
    vocabulary padded to a multiple of 64 as its checkpoints (None: a causal vocabulary, converted models add the
    mask); `template_file` the chat template an adapted tokenizer without one gets.
    """

    specials: tuple[str, ...]
    tokenizer: Callable[[Any], Any]
    build: Callable[[Path, Dims, Any], None]
    config: Callable[..., Any]
    auto_class: str
    sized: bool
    mask_token: str | None
    template_file: str


_CAUSAL = {
    "specials": LLADA_SPECIALS,
    "tokenizer": lambda bpe: llada_tokenizer(with_mask=False, bpe=bpe),
    "config": _ar_config,
    "auto_class": "AutoModelForCausalLM",
    "sized": True,
    "mask_token": None,
    "template_file": "llada.jinja",
}
FAMILY_PRESETS: dict[str, FamilyPreset] = {
    "llada": FamilyPreset(
        specials=(*LLADA_SPECIALS, LLADA_MASK),
        tokenizer=lambda bpe: llada_tokenizer(with_mask=True, bpe=bpe),
        build=build_llada,
        config=_llada_config,
        auto_class="AutoModel",
        sized=True,
        mask_token=LLADA_MASK,
        template_file="llada.jinja",
    ),
    "llada_moe": FamilyPreset(
        specials=(*LLADA_MOE_SPECIALS, LLADA_MOE_MASK),
        tokenizer=llada_moe_tokenizer,
        build=build_llada_moe,
        config=llada_moe_config,
        auto_class="AutoModel",
        sized=True,
        mask_token=LLADA_MOE_MASK,
        template_file="llada_moe.jinja",
    ),
    "dream": FamilyPreset(
        specials=DREAM_SPECIALS,
        tokenizer=_dream_tokenizer,
        build=build_dream,
        config=_dream_config,
        auto_class="AutoModel",
        sized=True,
        mask_token=DREAM_MASK,
        template_file="dream.jinja",
    ),
    # SDAR trains with the block-diffusion objective, which the trainers do not run yet: no size presets
    "sdar": FamilyPreset(
        specials=SDAR_SPECIALS,
        tokenizer=_sdar_tokenizer,
        build=build_sdar,
        config=_sdar_config,
        auto_class="AutoModelForCausalLM",
        sized=True,
        mask_token=SDAR_MASK,
        template_file="sdar.jinja",
    ),
    # MoE: no size presets (their Dims do not say how many experts)
    "llada2": FamilyPreset(
        specials=(*LLADA2_SPECIALS, LLADA2_MASK),
        tokenizer=llada2_tokenizer,
        build=build_llada2,
        config=llada2_config,
        auto_class="AutoModel",
        sized=True,
        mask_token=LLADA2_MASK,
        template_file="llada2.jinja",
    ),
    # BERT presets come from their own tokenizer (`build_bert`); other tokenizers are the causal ones
    "bert": FamilyPreset(**{**_CAUSAL, "build": lambda dst, dims, tokenizer: build_bert(dst), "sized": False,
                            "template_file": "bert.jinja"}),
    "a2d": FamilyPreset(**_CAUSAL, build=build_a2d),
    "bd3lm": FamilyPreset(**_CAUSAL, build=build_bd3lm),
    "ar": FamilyPreset(**_CAUSAL, build=build_ar),
}  # fmt: skip


def family_tokenizer(family: str, bpe: Any = None) -> Any:
    """The family's tokenizer (special tokens, chat template, mask token) over `bpe`, default the presets' BPE.
    a2d gets the causal one: the conversion adds the mask token."""
    return FAMILY_PRESETS[family].tokenizer(bpe)


def family_specials(family: str) -> tuple[str, ...]:
    return FAMILY_PRESETS[family].specials


def adapt_tokenizer(family: str, tokenizer: Any) -> Any:
    """An existing tokenizer made usable for `family`: an end token and a pad token (the end token) are required,
    a family with its own mask token gets it when absent, and the family's chat template when the tokenizer has
    none."""
    if tokenizer.eos_token is None:
        raise ModelError(f"the tokenizer {tokenizer.name_or_path!r} has no end-of-text token; {family} needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    preset = FAMILY_PRESETS[family]
    if preset.mask_token is not None and tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": preset.mask_token})
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = read_template(preset.template_file)
    return tokenizer


def meta_model(family: str, dims: Dims, vocab_size: int) -> Any:
    """The family's model of `dims` with `vocab_size` tokens on the meta device (nothing allocated)."""
    import torch
    import transformers

    preset = FAMILY_PRESETS[family]
    ids = {"eos_token_id": 0, "pad_token_id": 0, "bos_token_id": 0}  # any id inside the vocabulary counts the same
    if preset.mask_token is not None:
        config = preset.config(dims, padded(vocab_size), mask_token_id=0, **ids)
    else:
        config = preset.config(dims, vocab_size, **ids)
    with torch.device("meta"):
        return getattr(transformers, preset.auto_class).from_config(config)
