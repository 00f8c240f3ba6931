"""Family registry: detection, special ids and chat templates against the golden fixture checkpoints."""

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from dlm.errors import ModelError
from dlm.families import FAMILIES, detect_family, get_family
from dlm.families.special_ids import resolve_special_ids
from dlm.presets.tiny import ensure_preset

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
FIXTURE_FAMILY = {"llada-tiny": "llada", "dream-tiny": "dream", "modernbert-tiny": "bert"}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello world"},
    {"role": "assistant", "content": "paris"},
]
# DESIGN §3 formats, for MESSAGES and for MESSAGES[:-1] with the generation prompt.
EXPECTED_CHAT = {
    "llada": (
        "{bos}<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhello world<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nparis<|eot_id|>",
        "{bos}<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhello world<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "llada_moe": (
        "<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>hello world<|role_end|>"
        "<role>ASSISTANT</role>paris<|role_end|>",
        "<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>hello world<|role_end|><role>ASSISTANT</role>",
    ),
    "dream": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n"
        "<|im_start|>assistant\nparis<|im_end|>\n",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n",
    ),
    "bert": (
        "[SYS]\nBe brief.\n[/SYS]\n\n[Question]\nhello world\n[/Question]\n\n[Answer]\nparis\n[/Answer]\n\n",
        "[SYS]\nBe brief.\n[/SYS]\n\n[Question]\nhello world\n[/Question]\n\n[Answer]\n",
    ),
}


def render(tokenizer, family_name):
    full = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    prompt = tokenizer.apply_chat_template(MESSAGES[:-1], tokenize=False, add_generation_prompt=True)
    expected = tuple(e.format(bos=tokenizer.bos_token) for e in EXPECTED_CHAT[family_name])
    return (full, prompt), expected


@pytest.mark.parametrize("folder", sorted(FIXTURE_FAMILY))
def test_detect_fixture_configs(folder):
    raw = json.loads((GOLDEN / folder / "config.json").read_text())
    assert detect_family(raw).name == FIXTURE_FAMILY[folder]
    assert detect_family(AutoConfig.from_pretrained(GOLDEN / folder)).name == FIXTURE_FAMILY[folder]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"architectures": ["BertForMaskedLM"], "model_type": "bert"}, "bert"),
        ({"model_type": "modernbert"}, "bert"),
        ({"model_type": "llada"}, "llada"),
        ({"architectures": ["DreamModel"]}, "dream"),
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "ar"),
        ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "is_causal": True}, "ar"),
        ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}, "ar"),
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "is_causal": False}, "a2d"),
        ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "is_causal": False}, "a2d"),
        ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "is_causal": False}, "a2d"),
    ],
)
def test_detect_synthetic_configs(config, expected):
    assert detect_family(config).name == expected


def test_unknown_architecture_lists_every_family_and_architecture():
    with pytest.raises(ModelError) as err:
        detect_family({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "_name_or_path": "some/x"})
    message = str(err.value)
    assert "MistralForCausalLM" in message and "'mistral'" in message and "some/x" in message
    for family in FAMILIES.values():
        assert f"{family.name}:" in message
        for architecture in family.architectures:
            assert architecture in message
    assert "family=" in message


def test_get_family():
    assert get_family("LLaDA") is FAMILIES["llada"]
    assert get_family(FAMILIES["dream"]) is FAMILIES["dream"]
    with pytest.raises(
        ModelError,
        match="unknown model family 'gpt'; choose one of: llada, llada_moe, llada2, dream, bert, a2d, bd3lm, ar, sdar",
    ):
        get_family("gpt")


def test_family_policies_follow_design():
    llada, dream, bert, a2d, ar = (FAMILIES[n] for n in ("llada", "dream", "bert", "a2d", "ar"))
    assert [f.shift_logits for f in (llada, dream, bert, a2d)] == [False, True, False, False]
    assert [f.default_loss_weight for f in (llada, dream, bert, a2d)] == ["scheduler", "cart[geo_p:0.3]"] + [
        "scheduler"
    ] * 2
    for f in (llada, a2d):
        assert f.pad_with_eos and not f.uses_attention_mask and f.train_on_padding
    assert dream.pad_with_eos and dream.uses_attention_mask and dream.train_on_padding
    assert not bert.pad_with_eos and not bert.uses_attention_mask and bert.train_on_padding
    assert not ar.is_diffusion and ar.uses_attention_mask and not ar.train_on_padding
    assert all(f.is_diffusion for f in (llada, dream, bert, a2d))
    assert [f.mask_token_source for f in (llada, dream, bert, a2d, ar)] == [
        "config",
        "config",
        "tokenizer",
        "added",
        None,
    ]


@pytest.mark.parametrize("folder", sorted(FIXTURE_FAMILY))
def test_family_templates_are_the_fixtures(folder):
    family = FAMILIES[FIXTURE_FAMILY[folder]]
    assert family.chat_template == (GOLDEN / folder / "chat_template.jinja").read_text()


@pytest.mark.parametrize("folder", sorted(FIXTURE_FAMILY))
def test_fixture_chat_templates_render_design_formats(folder):
    tokenizer = AutoTokenizer.from_pretrained(GOLDEN / folder)
    rendered, expected = render(tokenizer, FIXTURE_FAMILY[folder])
    assert rendered == expected


@pytest.mark.parametrize(
    ("preset", "family"),
    [
        ("tiny-llada", "llada"),
        ("tiny-llada-moe", "llada_moe"),
        ("tiny-dream", "dream"),
        ("tiny-bert", "bert"),
        ("tiny-a2d", "llada"),
        ("tiny-ar", "llada"),
    ],
)
def test_preset_chat_templates_render_design_formats(preset_workspace, preset, family):
    tokenizer = AutoTokenizer.from_pretrained(ensure_preset(preset, preset_workspace))
    rendered, expected = render(tokenizer, family)
    assert rendered == expected


def test_dream_template_injects_default_system_message():
    tokenizer = AutoTokenizer.from_pretrained(GOLDEN / "dream-tiny")
    text = tokenizer.apply_chat_template(MESSAGES[1:2], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("llada-tiny", {"mask": 3, "eos": 2, "eot": 6, "pad": 2, "bos": 1}),
        ("dream-tiny", {"mask": 4, "eos": 0, "eot": 2, "pad": 0, "bos": 3}),
        ("modernbert-tiny", {"mask": 4, "eos": 3, "eot": 3, "pad": 3, "bos": 3}),
    ],
)
def test_special_ids_of_fixtures(folder, expected):
    config = AutoConfig.from_pretrained(GOLDEN / folder)
    tokenizer = AutoTokenizer.from_pretrained(GOLDEN / folder)
    ids = resolve_special_ids(FIXTURE_FAMILY[folder], config, tokenizer)
    assert vars(ids) == expected
    # the same ids by the checkpoint's own words
    assert ids.mask == tokenizer.mask_token_id
    if folder != "modernbert-tiny":
        assert ids.mask == config.mask_token_id
        assert ids.eos == config.eos_token_id == tokenizer.eos_token_id
    assert ids.pad == tokenizer.pad_token_id
    eot_token = {"llada-tiny": "<|eot_id|>", "dream-tiny": "<|im_end|>", "modernbert-tiny": "[PAD]"}[folder]
    assert tokenizer.convert_ids_to_tokens(ids.eot) == eot_token


def test_config_mask_id_wins_for_config_families():
    config = AutoConfig.from_pretrained(GOLDEN / "llada-tiny")
    tokenizer = AutoTokenizer.from_pretrained(GOLDEN / "llada-tiny")
    config.mask_token_id = 5
    assert resolve_special_ids("llada", config, tokenizer).mask == 5
    assert resolve_special_ids("bert", config, tokenizer).mask == 3  # tokenizer-first family


def test_missing_mask_token_error():
    tokenizer = AutoTokenizer.from_pretrained(GOLDEN / "modernbert-tiny")
    tokenizer.mask_token = None
    config = {"_name_or_path": "my/llama", "vocab_size": 66, "pad_token_id": 3, "eos_token_id": 3}
    # [MASK] is still in the vocabulary: the bert family finds it by name, a converted model has no such fallback
    assert resolve_special_ids("bert", config, tokenizer).mask == 4
    with pytest.raises(ModelError, match=r"checkpoint my/llama has no mask token; the a2d family needs one: convert"):
        resolve_special_ids("a2d", config, tokenizer)
    with pytest.raises(ModelError, match="the dream family needs one: set mask_token_id in its config.json"):
        resolve_special_ids("dream", config, tokenizer)
    assert resolve_special_ids("ar", config, tokenizer).mask is None


def test_mask_id_outside_vocabulary():
    tokenizer = AutoTokenizer.from_pretrained(GOLDEN / "llada-tiny")
    with pytest.raises(ModelError, match="mask token id 70 is outside the model's vocabulary of 68 embeddings"):
        resolve_special_ids("llada", {"mask_token_id": 70, "vocab_size": 68}, tokenizer)


def test_training_methods_come_from_the_registry():
    from dlm.trainers.sft_config import TRAINING_METHODS

    assert TRAINING_METHODS == ("auto", "bert", "dream", "llada", "llada2", "llada_moe", "a2d", "ar", "bd3lm", "sdar")
    assert set(TRAINING_METHODS) == {"auto", *FAMILIES}
