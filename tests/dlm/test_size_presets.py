"""Size presets for pre-training: the usual ladder of shapes, parameter counts checked by arithmetic, tokenizers
trained on the user's text or taken from an existing one, and clear errors for unknown names."""

import pytest
import torch

from dlm.errors import ModelError
from dlm.loading import load_model_and_tokenizer
from dlm.presets.bpe import tokenizer_fingerprint
from dlm.presets.sizes import (
    SIZES,
    count_parameters,
    ensure_sized_preset,
    parse_sized_name,
    size_table,
    train_family_tokenizer,
)

# The table: d_model / heads / layers / ff.
LADDER = {
    "small": (384, 6, 6, 1536),
    "medium": (512, 8, 8, 2048),
    "large": (768, 12, 12, 3072),
    "xl": (1024, 16, 24, 4096),
}


def expected_parameters(family: str, size: str, vocab: int) -> int:
    """Closed form of a LLaMA-style block stack with untied input and output embeddings: per layer 4 d² attention
    (full heads), 3·d·ff SwiGLU and two RMSNorm vectors; a final norm; LLaDA, Dream, SDAR and the MoE families pad
    the vocabulary to 64 rows, Dream (Qwen2) adds q/k/v biases and SDAR (Qwen3) a q and a k norm of one head's width.
    The MoE families (8 experts, 2 per token) replace the SwiGLU by a router (8·d) and 8 SwiGLU experts: LLaDA-MoE's
    of width ff/2 in every layer, LLaDA 2.x's of width ff/4 plus a shared one of that width, its first layer dense;
    both add q and k norms."""
    d, heads, layers, ff = LADDER[size]
    rows = -(-vocab // 64) * 64 if family in ("llada", "dream", "sdar", "llada_moe", "llada2") else vocab
    extra = {"dream": 3 * d, "sdar": 2 * (d // heads), "llada_moe": 2 * (d // heads), "llada2": 2 * (d // heads)}
    attention_and_norms = 4 * d * d + 2 * d + extra.get(family, 0)
    if family == "llada_moe":
        mlps = layers * (8 * d + 8 * 3 * d * (ff // 2))
    elif family == "llada2":
        mlps = 3 * d * ff + (layers - 1) * (8 * d + 9 * 3 * d * (ff // 4))
    else:
        mlps = layers * 3 * d * ff
    return 2 * rows * d + layers * attention_and_norms + mlps + d


def test_the_ladder_is_the_usual_one():
    assert {name: (s.hidden, s.heads, s.layers, s.intermediate) for name, s in SIZES.items()} == LADDER


@pytest.mark.parametrize("family", ["llada", "dream", "ar", "a2d", "bd3lm", "sdar", "llada_moe", "llada2"])
@pytest.mark.parametrize("vocab", [8000, 50257])
def test_parameter_counts_match_the_arithmetic(family, vocab):
    for size in LADDER:
        assert count_parameters(family, size, vocab) == expected_parameters(family, size, vocab)


def test_the_table_names_every_size_and_family():
    rows = size_table(8000)
    assert len(rows) == 32  # 4 sizes x 8 families (llada, llada_moe, dream, sdar, llada2, a2d, bd3lm, ar)
    small_llada = next(r for r in rows if r["preset"] == "small-llada")
    assert small_llada["parameters"] == expected_parameters("llada", "small", 8000)
    assert 15e6 < small_llada["parameters"] < 30e6  # the ~25M of the usual ladder at an 8k vocabulary


def test_unknown_family_lists_the_ones_with_sizes():
    with pytest.raises(
        ModelError, match=r"'bert' has no size presets.*llada, llada_moe, dream, sdar, llada2, a2d, bd3lm, ar"
    ):
        parse_sized_name("small-bert")
    assert parse_sized_name("tiny-llada") is None and parse_sized_name("huge-llada") is None
    assert parse_sized_name("medium-ar") == ("medium", "ar")


TEXT = [
    f"Once upon a time, {name} found {n} shiny stones by the river." for n in range(200) for name in ("Lily", "Tom")
]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_tokenizer_trained_on_the_corpus_has_the_family_tokens(family):
    tokenizer = train_family_tokenizer(family, TEXT, vocab_size=400)
    assert len(tokenizer) <= 400
    assert tokenizer.mask_token is not None and tokenizer.eos_token is not None
    # words of the corpus become single tokens
    assert len(tokenizer(" stones", add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_small_llada_builds_with_a_trained_tokenizer_and_trains(tmp_path):
    tokenizer = train_family_tokenizer("llada", TEXT, vocab_size=400)
    lines = []
    folder = ensure_sized_preset("small-llada", tmp_path, tokenizer=tokenizer, log=lines.append)
    assert folder.name == f"small-llada-{tokenizer_fingerprint(tokenizer)[:8]}"
    expected = expected_parameters("llada", "small", len(tokenizer))
    assert lines == [f"built small-llada at {folder}: {expected / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}"]
    loaded = load_model_and_tokenizer(str(folder))
    assert sum(p.numel() for p in loaded.model.parameters()) == expected
    assert loaded.tokenizer.mask_token_id == tokenizer.mask_token_id
    ids = torch.tensor([loaded.tokenizer("Lily found stones")["input_ids"]])
    loaded.model(input_ids=ids).logits.sum().backward()
    # built once per tokenizer
    assert ensure_sized_preset("small-llada", tmp_path, tokenizer=tokenizer, log=lines.append) == folder
    assert len(lines) == 1
