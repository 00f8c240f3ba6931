"""Native LLaDA and Dream models: loading, saving, numerics, training features, adapters and quantisation."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from dlm.lora import apply_lora
from dlm.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModelLM

FIXTURES = Path(__file__).parents[1] / "fixtures" / "golden"
FAMILIES = ["llada", "dream"]
MODEL_CLASSES = {"llada": (LLaDAConfig, LLaDAModelLM), "dream": (DreamConfig, DreamModel)}
LORA_TARGETS = {
    "llada": ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"],
    "dream": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
# Keys of the official config.json that are not stored as such: auto_map is dropped on purpose, the version is ours,
# and transformers 5 folds Dream's rope_theta/rope_scaling into rope_parameters.
CONFIG_KEYS_NOT_KEPT = {"auto_map", "transformers_version", "rope_theta", "rope_scaling"}


def fixture(family: str) -> Path:
    return FIXTURES / f"{family}-tiny"


def load(family: str, **kwargs) -> PreTrainedModel:
    return AutoModelForMaskedLM.from_pretrained(fixture(family), **kwargs).eval()


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    # Ids 5..59 avoid every special token of the tiny vocabularies (pad, eos, bos, mask).
    return torch.randint(5, 60, (batch, length), generator=torch.Generator().manual_seed(seed))


def max_rel_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's scale (the LLaDA fixture's logits have std ~25)."""
    return ((ours.float() - reference.float()).abs().max() / reference.float().std()).item()


def tiny_llada(**overrides) -> LLaDAModelLM:
    fields = dict(d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=96, vocab_size=70, embedding_size=70)
    fields |= dict(bos_token_id=1, eos_token_id=2, pad_token_id=2, mask_token_id=3)
    torch.manual_seed(0)
    return LLaDAModelLM(LLaDAConfig(**(fields | overrides))).eval()


def safetensors_keys(path: Path) -> set[str]:
    with safe_open(path, framework="pt") as handle:
        return set(handle.keys())


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_classes_load_without_remote_code(family: str) -> None:
    config_class, model_class = MODEL_CLASSES[family]
    assert "auto_map" in json.loads((fixture(family) / "config.json").read_text())
    config = AutoConfig.from_pretrained(fixture(family))
    assert type(config) is config_class and not hasattr(config, "auto_map")
    assert type(AutoModel.from_pretrained(fixture(family))) is model_class
    assert type(AutoModelForMaskedLM.from_pretrained(fixture(family))) is model_class
    # The fixture folder has no remote code files: trusting remote code must still resolve to the local class.
    assert type(AutoModel.from_pretrained(fixture(family), trust_remote_code=True)) is model_class


def test_forward_kwargs_contract() -> None:
    def takes_kwargs(model_class: type) -> bool:
        parameters = inspect.signature(model_class.forward).parameters.values()
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)

    assert not takes_kwargs(LLaDAModelLM)
    assert takes_kwargs(DreamModel)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(family: str, tmp_path: Path) -> None:
    model = load(family)
    model.save_pretrained(tmp_path)
    assert safetensors_keys(tmp_path / "model.safetensors") == safetensors_keys(fixture(family) / "model.safetensors")

    official = json.loads((fixture(family) / "config.json").read_text())
    saved = json.loads((tmp_path / "config.json").read_text())
    for key, value in official.items():
        if key not in CONFIG_KEYS_NOT_KEPT:
            assert saved[key] == value, f"config field {key}: saved {saved.get(key)!r} != official {value!r}"
    if "rope_theta" in official and "rope_theta" not in saved:
        assert saved["rope_parameters"]["rope_theta"] == official["rope_theta"]

    ids = random_ids(2, 11)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_llada_weight_tying_round_trip(tmp_path: Path) -> None:
    model = tiny_llada(weight_tying=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    keys = safetensors_keys(tmp_path / "model.safetensors")
    assert "model.transformer.wte.weight" in keys and "model.transformer.ff_out.weight" not in keys
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    ids = random_ids(1, 7)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_feed_the_head(family: str) -> None:
    model = load(family)
    ids = random_ids(2, 9)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        hidden = model.model(ids).last_hidden_state
        as_tuple = model(input_ids=ids, return_dict=False)
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(ids)).logits
    assert torch.equal(out.hidden_states[-1], hidden)
    assert torch.equal(model.logits_from_hidden(hidden[:, 3:5]), out.logits[:, 3:5])
    assert model.get_output_embeddings()(hidden).shape == out.logits.shape
    assert torch.equal(as_tuple[0], out.logits)
    assert torch.equal(from_embeds, out.logits)


def test_llada_matches_bidirectional_llama() -> None:
    """Independent oracle: LLaDA's llama block is Llama with is_causal=False once the weights are renamed."""
    model = tiny_llada(n_kv_heads=2, rope_theta=500000.0)
    config = model.config
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.d_model,
            intermediate_size=config.mlp_hidden_size,
            num_hidden_layers=config.n_layers,
            num_attention_heads=config.n_heads,
            num_key_value_heads=config.n_kv_heads,
            rms_norm_eps=config.rms_norm_eps,
            rope_theta=config.rope_theta,
            is_causal=False,
        )
    ).eval()
    renames = {
        "attn_norm": "input_layernorm",
        "ff_norm": "post_attention_layernorm",
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
        "attn_out": "self_attn.o_proj",
        "ff_proj": "mlp.gate_proj",
        "up_proj": "mlp.up_proj",
        "ff_out": "mlp.down_proj",
    }
    state = {"model.embed_tokens.weight": model.model.transformer.wte.weight, "lm_head.weight": None}
    state["model.norm.weight"] = model.model.transformer.ln_f.weight
    state["lm_head.weight"] = model.model.transformer.ff_out.weight
    for i, block in enumerate(model.model.transformer.blocks):
        for ours, theirs in renames.items():
            state[f"model.layers.{i}.{theirs}.weight"] = getattr(block, ours).weight
    llama.load_state_dict(state, strict=True)

    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        for attention_mask in (None, mask):
            ours = model(input_ids=ids, attention_mask=attention_mask).logits
            reference = llama(input_ids=ids, attention_mask=attention_mask).logits
            assert max_rel_diff(ours[:, :8], reference[:, :8]) < 1e-5


def test_llada_gqa_biases_and_eager() -> None:
    model = tiny_llada(n_kv_heads=2, include_bias=True)
    names = dict(model.named_parameters())
    assert names["model.transformer.blocks.0.k_proj.weight"].shape == (32, 64)
    for name in ("blocks.1.q_proj.bias", "blocks.1.attn_out.bias", "blocks.1.ff_out.bias", "ff_out.bias"):
        assert f"model.transformer.{name}" in names
    ids = random_ids(2, 10)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        sdpa = model(input_ids=ids, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        eager = model(input_ids=ids, attention_mask=mask).logits
    assert max_rel_diff(eager[mask.bool()], sdpa[mask.bool()]) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_matches_eager_on_fixture(family: str) -> None:
    ids = random_ids(2, 16)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    with torch.no_grad():
        sdpa = load(family, attn_implementation="sdpa")(input_ids=ids, attention_mask=mask).logits
        eager = load(family, attn_implementation="eager")(input_ids=ids, attention_mask=mask).logits
    assert max_rel_diff(eager[mask.bool()], sdpa[mask.bool()]) < 1e-5


@pytest.mark.parametrize("family", [*FAMILIES, "modernbert"])
def test_padding_invariance(family: str) -> None:
    """Real-token logits do not depend on padding side, padding length or batch companions."""
    model = load(family)
    pad = model.config.pad_token_id
    n, extra = 9, 5
    seq, companion = random_ids(1, n, seed=1), random_ids(1, n + extra, seed=2)
    padding = torch.full((1, extra), pad)
    with torch.no_grad():
        alone = model(input_ids=seq).logits[0]
        variants = {
            "alone with mask": (seq, torch.ones_like(seq), slice(0, n)),
            "right padded": (torch.cat([seq, padding], 1), None, slice(0, n)),
            "left padded": (torch.cat([padding, seq], 1), None, slice(extra, extra + n)),
        }
        for name, (row, mask, real) in variants.items():
            batch = torch.cat([row, companion]) if mask is None else row
            if mask is None:
                mask = torch.ones_like(batch)
                mask[0] = 0
                mask[0, real] = 1
            logits = model(input_ids=batch, attention_mask=mask).logits[0, real]
            assert max_rel_diff(logits, alone) < 1e-5, name


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5 renames it activation_checkpointing_enable
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_same_grads(family: str) -> None:
    ids = random_ids(2, 12)

    def grads(model: PreTrainedModel) -> dict[str, torch.Tensor]:
        model.train()
        logits = model(input_ids=ids).logits
        F.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
        return {name: p.grad for name, p in model.named_parameters()}

    plain = grads(load(family))
    model = load(family)
    model.gradient_checkpointing_enable()
    first_norm = (
        model.model.transformer.blocks[0].attn_norm if family == "llada" else model.model.layers[0].input_layernorm
    )
    calls = []
    first_norm.register_forward_pre_hook(lambda *_: calls.append(1))
    checkpointed = grads(model)
    assert len(calls) == 2, "a checkpointed layer runs its first module again during backward"
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision_forward(family: str, dtype: torch.dtype) -> None:
    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    with torch.no_grad():
        reference = load(family)(input_ids=ids, attention_mask=mask).logits
        logits = load(family, dtype=dtype)(input_ids=ids, attention_mask=mask).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert max_rel_diff(logits[mask.bool()], reference[mask.bool()]) < 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_resize_token_embeddings(family: str, tmp_path: Path) -> None:
    model = load(family)
    model.resize_token_embeddings(80)
    assert model.get_input_embeddings().weight.shape[0] == 80
    assert model.get_output_embeddings().weight.shape[0] == 80
    assert model.config.vocab_size == 80
    if family == "llada":
        assert model.config.embedding_size == 80
    ids = torch.tensor([[5, 79, 7]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 3, 80)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(AutoModelForMaskedLM.from_pretrained(tmp_path).eval()(input_ids=ids).logits, logits)


def lora_grads_flow_only_to_adapters(peft_model: PreTrainedModel, family: str, ids: torch.Tensor) -> None:
    wrapped = {name.rsplit(".", 1)[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert wrapped == set(LORA_TARGETS[family])
    trainable = [(name, p) for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in name for name, _ in trainable)
    optimizer = torch.optim.Adam([p for _, p in trainable], lr=1e-3)
    peft_model.train()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        logits = peft_model(input_ids=ids).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
        loss.backward()
        losses.append(loss.item())
        assert all(p.grad is not None for _, p in trainable)
        assert any(p.grad.abs().sum() > 0 for name, p in trainable if "lora_B" in name)
        optimizer.step()
    assert all(p.grad is None for name, p in peft_model.named_parameters() if not p.requires_grad)
    assert losses[-1] < losses[0], losses


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls transformers' deprecated checkpointing names
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_default_targets_train(family: str) -> None:
    peft_model = get_peft_model(load(family), LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[family]))
    lora_grads_flow_only_to_adapters(peft_model, family, random_ids(2, 12))


NF4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def linears_4bit(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "Linear4bit"]


def repacked_for_cpu_inference(module: torch.nn.Module) -> bool:
    return bool(getattr(module.weight.quant_state, "packing_format_for_cpu", False))


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_4bit_on_cpu(family: str) -> None:
    model = load(family, quantization_config=NF4, device_map="cpu")
    linears = {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    head = "model.transformer.ff_out" if family == "llada" else "lm_head"
    assert linears.pop(head) == "Linear", "the output head must stay unquantized"
    assert linears and set(linears.values()) == {"Linear4bit"}
    ids = random_ids(4, 16)
    with torch.no_grad():
        quantized, reference = model(input_ids=ids).logits, load(family)(input_ids=ids).logits
    # NF4 on a random 64-wide model is coarse; this only guards against a broken (unrelated) output.
    assert torch.corrcoef(torch.stack([quantized.flatten(), reference.flatten()]))[0, 1] > 0.8
    # The usual QLoRA set-up: frozen 4-bit base, gradient checkpointing, adapters on the default targets. The
    # evaluation pass above is what used to break it on CPUs with AVX512-BF16 (see the next tests).
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_grads_flow_only_to_adapters(apply_lora(model, family, r=4, alpha=8, dropout=0.0), family, ids[:2])


def qlora_model(family: str, *, repacked: bool = False, scales_in_bf16: bool = False) -> PreTrainedModel:
    """A 4-bit model under LoRA adapters, as `apply_lora` sets it up for training. Every 4-bit layer claims the
    AVX512-BF16 repacking path of bitsandbytes whatever this CPU has. `repacked`: its weights were repacked for CPU
    inference (by a sampling pass) before the adapters came; `scales_in_bf16`: its block scales are rounded to
    bfloat16 as that repacking does."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    model = load(family, quantization_config=NF4, device_map="cpu")
    for module in linears_4bit(model):
        module.support_avx512bf16_for_cpu = True
        weight = module.weight
        if scales_in_bf16:
            weight.quant_state.absmax = weight.quant_state.absmax.bfloat16().float()
        if repacked:
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu(weight.data, weight.quant_state)
    torch.manual_seed(0)  # the same adapter initialisation for every copy
    return apply_lora(model, family, r=4, alpha=8, dropout=0.0)


def adapter_grads(peft_model: PreTrainedModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The adapters' gradients of one training step's loss."""
    peft_model.train()
    logits = peft_model(input_ids=ids).logits
    F.cross_entropy(logits.float().flatten(0, 1), ids.flatten()).backward()
    return {name: p.grad for name, p in peft_model.named_parameters() if p.requires_grad}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_trains_the_same_after_a_sampling_pass(family: str) -> None:
    # The user's path: QLoRA model -> a sampling pass in eval mode without gradients -> a training step. On
    # AVX512-BF16 CPUs bitsandbytes repacked the weights at that pass for a kernel without backward: training then
    # silently lost the gradient through every base layer, or failed on a bias (Dream's q/k/v).
    ids = random_ids(2, 12)
    expected = adapter_grads(qlora_model(family), ids)
    model = qlora_model(family)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    assert not any(repacked_for_cpu_inference(m) for m in linears_4bit(model))
    grads = adapter_grads(model, ids)
    assert grads.keys() == expected.keys()
    assert all(torch.equal(grads[name], expected[name]) for name in expected)
    # The gradient reaches the first layer's adapters only through every later (frozen, 4-bit) base layer.
    assert any(grads[name].abs().sum() > 0 for name in grads if ".layers.0." in name or ".blocks.0." in name)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_unpacks_weights_repacked_before_the_adapters(family: str) -> None:
    ids = random_ids(2, 12)
    model = qlora_model(family, repacked=True)
    assert not any(repacked_for_cpu_inference(m) for m in linears_4bit(model))
    grads, expected = adapter_grads(model, ids), adapter_grads(qlora_model(family, scales_in_bf16=True), ids)
    assert all(torch.equal(grads[name], expected[name]) for name in expected)


def test_llada_config_errors() -> None:
    with pytest.raises(ValueError, match="d_model"):
        LLaDAConfig(d_model=66, n_heads=4)
    with pytest.raises(ValueError, match="n_heads"):
        LLaDAConfig(d_model=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(NotImplementedError, match="block_type"):
        LLaDAModelLM(LLaDAConfig(d_model=64, n_heads=4, n_layers=1, vocab_size=10, block_type="sequential"))
    with pytest.raises(ValueError, match="use_cache"):
        tiny_llada()(input_ids=random_ids(1, 3), use_cache=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_mask_must_be_2d(family: str) -> None:
    ids = random_ids(1, 4)
    with pytest.raises(ValueError, match="2-D"):
        load(family)(input_ids=ids, attention_mask=torch.ones(1, 1, 4, 4))


def test_unknown_config_fields_are_kept(tmp_path: Path) -> None:
    config = LLaDAConfig(d_model=64, n_heads=4, some_future_field=[1, 2])
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).some_future_field == [1, 2]


def test_llada_logit_and_embedding_scaling() -> None:
    plain = tiny_llada()
    scaled = tiny_llada(scale_logits=True, input_emb_norm=True)
    scaled.load_state_dict(plain.state_dict())
    ids = random_ids(1, 6)
    embeds = plain.get_input_embeddings()(ids) * 64**0.5  # input_emb_norm multiplies embeddings by sqrt(d_model)
    with torch.no_grad():
        expected = plain(inputs_embeds=embeds).logits * 64**-0.5  # scale_logits divides logits by sqrt(d_model)
        torch.testing.assert_close(scaled(input_ids=ids).logits, expected)
