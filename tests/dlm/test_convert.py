"""Causal LM -> masked diffusion (A2D) conversion: config, mask token, embeddings, bidirectional attention, reload."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from dlm.convert import convert_causal_to_diffusion
from dlm.errors import ModelError
from dlm.loading import load_model_and_tokenizer
from dlm.presets.tiny import ensure_preset

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
MASK = "<|mdm_mask|>"


@pytest.fixture(scope="module")
def sources(preset_workspace, tmp_path_factory):
    """Causal checkpoints without a mask token: the Llama preset, a Qwen2 with spare embedding rows, a Qwen3."""
    llama = ensure_preset("tiny-ar", preset_workspace)
    tokenizer = AutoTokenizer.from_pretrained(llama)
    dims = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    folders = {"llama": llama}
    for name, config, model_class in (
        ("qwen2", Qwen2Config(vocab_size=len(tokenizer) + 64, **dims), Qwen2ForCausalLM),
        ("qwen3", Qwen3Config(vocab_size=len(tokenizer), head_dim=16, **dims), Qwen3ForCausalLM),
    ):
        folder = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        model_class(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    return {
        name: convert_causal_to_diffusion(src, tmp_path_factory.mktemp(f"{name}-a2d") / "model", mask_token=MASK)
        for name, src in sources.items()
    }


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_conversion_adds_mask_and_keeps_weights(sources, converted, name):
    src, dst = sources[name], converted[name]
    old_tokenizer = AutoTokenizer.from_pretrained(src)
    assert MASK not in old_tokenizer.get_vocab()
    config = json.loads((dst / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(dst)
    mask_id = len(old_tokenizer)
    assert config["is_causal"] is False
    assert config["mask_token_id"] == mask_id == tokenizer.mask_token_id == tokenizer.convert_tokens_to_ids(MASK)
    assert len(tokenizer) == mask_id + 1

    before, after = load_file(src / "model.safetensors"), load_file(dst / "model.safetensors")
    old_rows = before["model.embed_tokens.weight"].shape[0]
    # a checkpoint with spare rows keeps its size; one without grows by exactly the mask row
    expected_rows = old_rows if name == "qwen2" else old_rows + 1
    assert config["vocab_size"] == expected_rows
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert after[key].shape[0] == expected_rows
        assert torch.equal(after[key][:old_rows], before[key][:old_rows])
    for key in before.keys() - {"model.embed_tokens.weight", "lm_head.weight"}:
        assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_converted_model_reloads_as_a2d(converted, name):
    loaded = load_model_and_tokenizer(converted[name])
    assert loaded.family.name == "a2d"
    assert loaded.special_ids.mask == loaded.tokenizer.mask_token_id == loaded.model.config.mask_token_id
    assert loaded.special_ids.pad == loaded.special_ids.eos
    assert loaded.model.config.is_causal is False


def position0_logits(model, ids, attention_mask=None):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), attention_mask=attention_mask).logits[0, 0]


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_converted_attention_is_bidirectional_and_padding_still_masked(sources, converted, name, attn):
    ids = [5, 6, 7, 8, 9, 10]
    changed = ids[:-1] + [11]  # only the last token differs
    causal = load_model_and_tokenizer(sources[name], attn_implementation=attn).model.eval()
    diffusion = load_model_and_tokenizer(converted[name], attn_implementation=attn).model.eval()
    # the source is causal: a later token cannot change earlier logits
    assert torch.allclose(position0_logits(causal, ids), position0_logits(causal, changed))
    # converted: it does
    assert (position0_logits(diffusion, ids) - position0_logits(diffusion, changed)).abs().max() > 1e-4
    # a padded (attention mask 0) position is still invisible
    padded = torch.tensor([[1, 1, 1, 1, 1, 0]])
    assert torch.allclose(position0_logits(diffusion, ids, padded), position0_logits(diffusion, changed, padded))


def test_converting_again_keeps_the_mask_id(converted, tmp_path):
    again = convert_causal_to_diffusion(converted["llama"], tmp_path / "again", mask_token=MASK)
    first, second = (json.loads((p / "config.json").read_text()) for p in (converted["llama"], again))
    assert second["mask_token_id"] == first["mask_token_id"] and second["vocab_size"] == first["vocab_size"]


def test_conversion_errors(sources, tmp_path):
    with pytest.raises(ModelError, match=r"cannot convert .*ModernBertForMaskedLM.*supports LlamaForCausalLM, Qwen2"):
        convert_causal_to_diffusion(GOLDEN / "modernbert-tiny", tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ModelError, match="the folder is not empty"):
        convert_causal_to_diffusion(sources["llama"], tmp_path / "busy")
    with pytest.raises(ModelError, match="model path ./missing/model does not exist"):
        convert_causal_to_diffusion("./missing/model", tmp_path / "out")
