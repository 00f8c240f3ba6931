"""Model loading: fixtures, presets, every error path, quantization (QLoRA on CPU), LoRA targets, checkpointing."""

import json
import sys
from pathlib import Path

import pytest
import torch

from dlm.errors import ModelError
from dlm.loading import load_model_and_tokenizer
from dlm.lora import apply_lora
from dlm.presets.tiny import PRESETS

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
FIXTURES = {"llada-tiny": ("llada", "LLaDAModelLM"), "dream-tiny": ("dream", "DreamModel"),
            "modernbert-tiny": ("bert", "ModernBertForMaskedLM")}  # fmt: skip
PRESET_FAMILY = {
    "tiny-llada": "llada",
    "tiny-dream": "dream",
    "tiny-bert": "bert",
    "tiny-a2d": "a2d",
    "tiny-bd3lm": "bd3lm",
    "tiny-ar": "ar",
}


def load(name, workspace, **kwargs):
    return load_model_and_tokenizer(name, workspace=workspace, **kwargs)


def forward_backward(model, loaded, ids):
    """One training step's forward and backward on masked input; returns the loss."""
    x = torch.tensor([ids, ids])
    if loaded.family.is_diffusion:
        x[:, 1::2] = loaded.special_ids.mask
    logits = model(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), torch.tensor([ids, ids]).flatten())
    loss.backward()
    return loss


@pytest.mark.parametrize("folder", sorted(FIXTURES))
@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_load_fixture_natively(folder, trust_remote_code):
    loaded = load_model_and_tokenizer(GOLDEN / folder, trust_remote_code=trust_remote_code)
    family, class_name = FIXTURES[folder]
    assert loaded.family.name == family
    assert type(loaded.model).__name__ == class_name
    # the fixtures' auto_map points at remote code: the local implementation must win even when it is trusted
    assert type(loaded.model).__module__.startswith(("dlm.models", "transformers.models"))
    assert loaded.path == str(GOLDEN / folder)
    assert loaded.special_ids.mask == (3 if family == "llada" else 4)
    logits = loaded.model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3, loaded.model.config.vocab_size)


def test_missing_path():
    with pytest.raises(ModelError, match=r"^model path \./no/such/model does not exist$"):
        load_model_and_tokenizer("./no/such/model")


def test_hub_id_offline():
    with pytest.raises(ModelError) as err:
        load_model_and_tokenizer("some-org/some-model")
    assert str(err.value) == (
        "'some-org/some-model' is not a local folder, and the model hub is unreachable (HF_HUB_OFFLINE=1 / no "
        "network); download some-org/some-model elsewhere and pass its local folder"
    )


def test_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="is not a model checkpoint: it has no config.json"):
        load_model_and_tokenizer(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="holds a LoRA adapter, not a model"):
        load_model_and_tokenizer(tmp_path)


def test_unknown_preset(preset_workspace):
    with pytest.raises(ModelError, match="unknown tiny preset 'tiny-gpt2'; choose one of: " + ", ".join(PRESETS)):
        load("tiny-gpt2", preset_workspace)


def test_remote_code_refused_unless_trusted(tmp_path):
    config = {
        "architectures": ["MysteryLM"],
        "model_type": "mystery",
        "auto_map": {"AutoConfig": "configuration_mystery.MysteryConfig", "AutoModel": "modeling_mystery.MysteryLM"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as err:
        load_model_and_tokenizer(tmp_path)
    message = str(err.value)
    assert "model_type 'mystery'" in message and "MysteryLM" in message and "modeling_mystery.MysteryLM" in message
    assert "pass trust_remote_code=True" in message
    # trusted, it is still no family dlm knows: the error says how to name one
    with pytest.raises(ModelError, match=r"(?s)cannot tell which model family.*llada: LLaDAModelLM.*family=\.\.\."):
        load_model_and_tokenizer(tmp_path, trust_remote_code=True)


def test_unknown_architecture_without_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ModelError, match=r"(?s)architectures=\['GPT2LMHeadModel'\].*dream: DreamModel"):
        load_model_and_tokenizer(tmp_path)


def test_bad_arguments(preset_workspace):
    with pytest.raises(ModelError, match="unknown dtype 'fp8'; choose one of: auto, float32, bfloat16, float16"):
        load("tiny-bert", preset_workspace, dtype="fp8")
    with pytest.raises(ModelError, match="load_in_4bit and load_in_8bit are exclusive"):
        load("tiny-bert", preset_workspace, load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(ModelError, match="unknown model family 'gpt'"):
        load("tiny-bert", preset_workspace, family="gpt")


def test_causal_and_converted_are_not_mixed_up(preset_workspace):
    with pytest.raises(
        ModelError, match="belongs to family ar .*convert it with dlm.convert.convert_causal_to_diffusion"
    ):
        load("tiny-ar", preset_workspace, family="a2d")
    with pytest.raises(ModelError, match="belongs to family a2d .*load it as a2d"):
        load("tiny-a2d", preset_workspace, family="ar")


def test_dtype(preset_workspace):
    model = load("tiny-dream", preset_workspace, dtype="bfloat16").model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert load("tiny-dream", preset_workspace).model.dtype == torch.float32


def test_default_chat_template_added_when_missing(tmp_path):
    loaded = load_model_and_tokenizer(GOLDEN / "modernbert-tiny")
    loaded.tokenizer.chat_template = None
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    assert not (tmp_path / "chat_template.jinja").exists()
    assert load_model_and_tokenizer(tmp_path).tokenizer.chat_template == loaded.family.chat_template


@pytest.mark.parametrize("name", sorted(PRESET_FAMILY))
def test_gradient_checkpointing_flag(preset_workspace, name):
    calls = {}
    for flag in (False, True):
        loaded = load(name, preset_workspace, gradient_checkpointing=flag)
        model = loaded.model
        assert model.is_activation_checkpointing is flag
        model.train()
        block = next(m for n, m in model.named_modules() if n.endswith(("layers.0", "blocks.0")))
        inner = next(m for m in block.modules() if isinstance(m, torch.nn.Linear))
        count = []
        inner.register_forward_hook(lambda *_, seen=count: seen.append(1))
        forward_backward(model, loaded, [5, 6, 7, 8, 9, 10])
        calls[flag] = len(count)
    assert calls == {False: 1, True: 2}  # a checkpointed block runs again during backward


def lora_names(model):
    return {n.removesuffix(".lora_A") for n, _ in model.named_modules() if n.endswith(".lora_A")}


@pytest.mark.parametrize("name", sorted(PRESET_FAMILY))
@pytest.mark.parametrize("targets", ["default", "all-linear"])
def test_lora_on_every_family(preset_workspace, name, targets):
    loaded = load(name, preset_workspace)
    peft_model = apply_lora(loaded.model, loaded.family, r=4, alpha=8, dropout=0.0, target_modules=targets)
    adapted = lora_names(peft_model)
    head = loaded.family.output_head
    assert adapted and not any(n == f"base_model.model.{head}" or n.endswith(".decoder") for n in adapted)
    # 2 layers of 7 projections (q, k, v, o, 3 MLP); ModernBERT: Wqkv, Wo, Wi, Wo, and all-linear adds head.dense
    expected = {"bert": 8 + (targets == "all-linear")}.get(loaded.family.name, 14)
    assert len(adapted) == expected
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    loss = forward_backward(peft_model, loaded, [5, 6, 7, 8, 9, 10])
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if n in trainable and "lora_B" in n)


def test_llada_lora_skips_the_output_head_but_not_block_ff_out(preset_workspace):
    loaded = load("tiny-llada", preset_workspace)
    adapted = lora_names(apply_lora(loaded.model, "llada"))
    assert "base_model.model.model.transformer.blocks.1.ff_out" in adapted
    assert "base_model.model.model.transformer.ff_out" not in adapted
    assert loaded.family.output_head == "model.transformer.ff_out"
    assert loaded.model.get_output_embeddings() is loaded.model.get_submodule("model.transformer.ff_out")


def test_lora_target_list_checked(preset_workspace):
    loaded = load("tiny-dream", preset_workspace)
    adapted = lora_names(apply_lora(loaded.model, "dream", target_modules="q_proj, v_proj"))
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"q_proj", "v_proj"}
    with pytest.raises(ModelError, match=r"target_modules \['Wqkv'\] match no module of DreamModel; .*gate_proj"):
        apply_lora(load("tiny-dream", preset_workspace).model, "dream", target_modules=["q_proj", "Wqkv"])
    with pytest.raises(ModelError, match="rank r must be at least 1"):
        apply_lora(loaded.model, "dream", r=0)


@pytest.mark.parametrize(
    ("name", "bits"),
    [("tiny-llada", 4), ("tiny-llada", 8), ("tiny-dream", 4), ("tiny-bert", 4), ("tiny-a2d", 4), ("tiny-ar", 8)],
)
def test_quantized_load_and_qlora_on_cpu(preset_workspace, name, bits):
    import bitsandbytes as bnb

    quantized_class = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    loaded = load(name, preset_workspace, **{f"load_in_{bits}bit": True})
    model = loaded.model
    head = model.get_output_embeddings()
    assert type(head) is torch.nn.Linear  # never quantized
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    assert linear and all(isinstance(m, quantized_class) for m in linear)
    peft_model = apply_lora(model, loaded.family, r=4, dropout=0.0)
    peft_model.train()
    loss = forward_backward(peft_model, loaded, [5, 6, 7, 8, 9, 10])
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert torch.isfinite(loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_quantization_without_a_working_bitsandbytes(preset_workspace, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ModelError, match="load_in_4bit needs bitsandbytes, which cannot run here"):
        load("tiny-llada", preset_workspace, load_in_4bit=True)
