"""LLaDA-MoE: loading the reference's checkpoint (and the published config layout) by name, its router loss against the
reference function, masks and positions, expert dispatch, real-size parameter counts on the meta device, the family
(special ids, chat template, LoRA targets) and the router loss in the SFT trainer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

import dlm  # noqa: F401  (registers the native models)
from dlm.errors import ModelError
from dlm.families import detect_family, get_family
from dlm.forward import logits_at_positions
from dlm.loading import load_model_and_tokenizer
from dlm.lora import apply_lora, lora_targets
from dlm.models.llada import LLaDAConfig
from dlm.models.llada_moe import LLaDAMoEConfig, LLaDAMoEModelLM, LLaDAMoESparseMoeBlock
from tests.helpers import Reporter, tiny_run

FIXTURE = Path(__file__).parents[1] / "fixtures" / "golden" / "llada-moe-tiny"
DENSE_FIXTURE = Path(__file__).parents[1] / "fixtures" / "golden" / "llada-tiny"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
TENSORS = load_file(FIXTURE / "golden.safetensors")
# The published config.json: model_type "llada" and the hub's own remote code (dllm renames it "lladamoe").
HUB_AUTO_MAP = {
    "AutoConfig": "configuration_lladamoe.LLaDAConfig",
    "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM",
    "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM",
}


@pytest.fixture(scope="module")
def model() -> LLaDAMoEModelLM:
    return AutoModel.from_pretrained(FIXTURE).eval()


def logits_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert (ours - reference).abs().max().item() <= 1e-4 * reference.std().item()


# ---- loading ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_reference_checkpoint_loads_by_name(trust_remote_code: bool) -> None:
    loaded, info = AutoModel.from_pretrained(FIXTURE, output_loading_info=True, trust_remote_code=trust_remote_code)
    assert type(loaded) is LLaDAMoEModelLM
    assert {key: list(value) for key, value in info.items()} == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }
    saved = load_file(FIXTURE / "model.safetensors")
    assert set(saved) == set(loaded.state_dict())  # every weight and buffer by the reference's names
    assert "auto_map" not in loaded.config.to_dict()


def test_published_config_layout_loads_as_moe(tmp_path: Path, model: LLaDAMoEModelLM) -> None:
    """The hub's config.json says model_type "llada"; architectures decide, and saving writes "lladamoe"."""
    folder = tmp_path / "hub"
    shutil.copytree(FIXTURE, folder)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "model_type": "llada", "auto_map": HUB_AUTO_MAP}))
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config) is LLaDAMoEConfig
    assert detect_family({**raw, "model_type": "llada"}).name == "llada_moe"
    hub = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        logits_close(hub(input_ids=TENSORS["forward.input_ids"]).logits, TENSORS["forward.logits_no_attention_mask"])
    hub.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "lladamoe"


def test_dense_llada_configs_stay_dense() -> None:
    assert type(AutoConfig.for_model("llada", d_model=64, n_heads=4)) is LLaDAConfig
    assert type(AutoConfig.from_pretrained(DENSE_FIXTURE)) is LLaDAConfig
    assert detect_family(AutoConfig.from_pretrained(DENSE_FIXTURE)).name == "llada"


# ---- router loss -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_attention_mask", [False, True], ids=["no_mask", "mask"])
def test_router_aux_loss_matches_the_reference_function(model: LLaDAMoEModelLM, with_attention_mask: bool) -> None:
    section = GOLDEN["router"]
    mask = TENSORS[section["attention_mask"]] if with_attention_mask else None
    with torch.no_grad():
        out = model(input_ids=TENSORS[section["input_ids"]], attention_mask=mask, output_router_logits=True)
    expected = section["aux_loss_with_attention_mask" if with_attention_mask else "aux_loss_no_attention_mask"]
    assert out.aux_loss.item() == pytest.approx(expected, rel=1e-5)
    assert len(out.router_logits) == sum(model.config.is_moe_layer(i) for i in range(model.config.num_hidden_layers))
    assert model(input_ids=TENSORS[section["input_ids"]]).aux_loss is None  # only when asked for


# ---- model behaviour -------------------------------------------------------------------------------------------------
def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 60, (batch, length), generator=torch.Generator().manual_seed(seed))  # no special ids


def test_save_load_round_trip(model: LLaDAMoEModelLM, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(FIXTURE / "model.safetensors"))
    official = json.loads((FIXTURE / "config.json").read_text())
    saved = json.loads((tmp_path / "config.json").read_text())
    for key, value in official.items():
        if key not in ("auto_map", "transformers_version"):
            assert saved[key] == value, key
    ids = random_ids(2, 11)
    with torch.no_grad():
        assert torch.equal(AutoModel.from_pretrained(tmp_path).eval()(ids).logits, model(ids).logits)


def test_padding_invariance(model: LLaDAMoEModelLM) -> None:
    """Real-token logits do not depend on right/left padding or a longer batch companion."""
    seq, companion = random_ids(1, 9, seed=1), random_ids(1, 14, seed=2)
    pad = torch.full((1, 5), model.config.pad_token_id)
    with torch.no_grad():
        alone = model(input_ids=seq).logits[0]
        for row, real in ((torch.cat([seq, pad], 1), slice(0, 9)), (torch.cat([pad, seq], 1), slice(5, 14))):
            mask = torch.zeros(2, 14, dtype=torch.long)
            mask[0, real], mask[1] = 1, 1
            logits = model(input_ids=torch.cat([row, companion]), attention_mask=mask).logits[0, real]
            assert (logits - alone).abs().max() <= 1e-5 * alone.std()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_gradient_checkpointing_gives_same_grads() -> None:
    ids = random_ids(2, 12)

    def grads(model: LLaDAMoEModelLM) -> dict[str, torch.Tensor]:
        model.train()
        F.cross_entropy(model(input_ids=ids).logits.flatten(0, 1), ids.flatten()).backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    plain = grads(AutoModel.from_pretrained(FIXTURE))
    checkpointed_model = AutoModel.from_pretrained(FIXTURE)
    checkpointed_model.gradient_checkpointing_enable()
    calls = []
    checkpointed_model.model.layers[0].input_layernorm.register_forward_pre_hook(lambda *_: calls.append(1))
    checkpointed = grads(checkpointed_model)
    assert len(calls) == 2, "a checkpointed layer runs its first module again during backward"
    assert plain.keys() == checkpointed.keys() and "model.layers.0.mlp.gate.weight" in plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward(model: LLaDAMoEModelLM, dtype: torch.dtype) -> None:
    ids, mask = TENSORS["forward.input_ids"], TENSORS["forward.attention_mask"]
    with torch.no_grad():
        logits = AutoModel.from_pretrained(FIXTURE, dtype=dtype).eval()(input_ids=ids, attention_mask=mask).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    reference = TENSORS["forward.logits_with_attention_mask"][mask.bool()]
    assert (logits[mask.bool()].float() - reference).abs().max() < 0.1 * reference.std()


# ---- masks, positions, sparse logits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_a_4d_bool_mask_is_used_as_given(attn_implementation: str) -> None:
    model = AutoModel.from_pretrained(FIXTURE, attn_implementation=attn_implementation).eval()
    ids, padding = TENSORS["forward.input_ids"], TENSORS["forward.attention_mask"]
    keys = padding.bool()[:, None, None, :].expand(-1, 1, ids.shape[1], -1)
    with torch.no_grad():
        from_2d = model(input_ids=ids, attention_mask=padding).logits
        from_4d = model(input_ids=ids, attention_mask=keys).logits
        # a 4-D mask that also hides key 0 from every query changes every row
        hidden_first = model(input_ids=ids, attention_mask=keys & (torch.arange(ids.shape[1]) != 0)).logits
    torch.testing.assert_close(from_4d, from_2d, rtol=0, atol=1e-5)
    assert (hidden_first - from_2d)[:, 1:].abs().amax(dim=-1).min() > 1e-3


def test_position_ids(model: LLaDAMoEModelLM) -> None:
    ids = TENSORS["forward.input_ids"]
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        default = model(input_ids=ids).logits
        explicit = model(input_ids=ids, position_ids=positions).logits
        shifted = model(input_ids=ids, position_ids=positions + 7).logits  # rotary embeddings are relative
        reversed_ = model(input_ids=ids, position_ids=positions.flip(-1)).logits
    torch.testing.assert_close(explicit, default, rtol=0, atol=0)
    torch.testing.assert_close(shifted, default, rtol=0, atol=1e-3)
    assert (reversed_ - default).abs().max() > 1.0


def test_logits_at_positions_are_the_full_logits_there(model: LLaDAMoEModelLM) -> None:
    ids, padding = TENSORS["forward.input_ids"], TENSORS["forward.attention_mask"]
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=padding).logits
        sparse = logits_at_positions(model, ids, padding, chosen)
    torch.testing.assert_close(sparse, full[chosen], rtol=0, atol=1e-5)


def test_each_expert_runs_on_exactly_the_tokens_routed_to_it(model: LLaDAMoEModelLM) -> None:
    """Rows each expert sees, against top-k of the router's softmax (+ expert bias) computed here from its logits."""
    block = next(m for m in model.modules() if isinstance(m, LLaDAMoESparseMoeBlock))
    seen: dict[int, int] = {}
    gate_logits: list[torch.Tensor] = []
    hooks = [block.gate.register_forward_hook(lambda _m, _a, out: gate_logits.append(out))]
    for index, expert in enumerate(block.experts):
        hooks.append(expert.register_forward_hook(lambda _m, args, _o, i=index: seen.__setitem__(i, args[0].shape[0])))
    ids = TENSORS["forward.input_ids"][:1, :6]  # few tokens: some experts get none
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    scores = F.softmax(gate_logits[0].float(), dim=-1) + block.expert_bias
    chosen = scores.topk(model.config.num_experts_per_tok, dim=-1).indices
    expected = {e: int((chosen == e).sum()) for e in range(model.config.num_experts) if (chosen == e).any()}
    assert seen == expected
    assert sum(seen.values()) == ids.numel() * model.config.num_experts_per_tok


# ---- real size -------------------------------------------------------------------------------------------------------
def test_published_size_on_the_meta_device() -> None:
    """LLaDA-MoE-7B-A1B: "7 billion total parameters, only 1.4 billion are activated" (model card,
    huggingface.co/inclusionAI/LLaDA-MoE-7B-A1B-Instruct). Shapes: the config class's defaults (16 layers of width 2048,
    16 heads, 64 experts of width 1024, 8 per token, vocabulary 157184, untied head), as third-party ports quote the
    hub's config.json. Active: everything a token passes through (its 8 experts per layer, attention, router, head),
    without the embedding table (a lookup)."""
    config = LLaDAMoEConfig(architectures=["LLaDAMoEModelLM"])
    with torch.device("meta"):
        model = LLaDAMoEModelLM(config)
    total = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for p in model.model.layers[0].mlp.experts[0].parameters())
    idle = (config.num_experts - config.num_experts_per_tok) * expert * config.num_hidden_layers
    embedding = model.model.embed_tokens.weight.numel()  # a lookup, not a computation
    active = total - idle - embedding
    assert 7.0e9 <= total <= 7.5e9, total
    assert 1.35e9 <= active <= 1.45e9, active


# ---- family ----------------------------------------------------------------------------------------------------------
def test_family_of_the_fixture_and_its_special_ids(tmp_path: Path) -> None:
    assert detect_family(json.loads((FIXTURE / "config.json").read_text())).name == "llada_moe"
    loaded = load_model_and_tokenizer("tiny-llada-moe", workspace=tmp_path)
    tokenizer, special = loaded.tokenizer, loaded.special_ids
    assert loaded.family.name == "llada_moe" and type(loaded.model) is LLaDAMoEModelLM
    assert special.mask == tokenizer.convert_tokens_to_ids("<|mask|>") == loaded.model.config.mask_token_id
    assert special.eot == tokenizer.convert_tokens_to_ids("<|role_end|>")
    assert special.eos == special.pad == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == "<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>Hi?<|role_end|><role>ASSISTANT</role>"


def test_published_config_without_mask_id_uses_the_models_mask_token() -> None:
    assert LLaDAMoEConfig().mask_token_id == 156895


def test_lora_adapts_attention_by_default_and_experts_on_request(model: LLaDAMoEModelLM) -> None:
    family = get_family("llada_moe")
    assert lora_targets(model, family, "default") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    fresh = AutoModel.from_pretrained(FIXTURE)
    adapted = {name for name, module in apply_lora(fresh, family, target_modules="default+experts").named_modules()
               if hasattr(module, "lora_A")}  # fmt: skip
    assert "base_model.model.model.layers.0.mlp.experts.3.down_proj" in adapted
    assert "base_model.model.model.layers.0.shared_expert.gate_proj" in adapted
    assert "base_model.model.model.layers.1.mlp.up_proj" in adapted  # the dense layer's MLP
    assert not any(name.endswith(("mlp.gate", "lm_head")) for name in adapted)
    with pytest.raises(ModelError, match="mixture-of-experts"):
        lora_targets(model, get_family("llada"), "default+experts")


# ---- training --------------------------------------------------------------------------------------------------------
def moe_with_router_loss(workspace: Path, coef: float) -> Path:
    """tiny-llada-moe with `output_router_logits` on (the config asks for the router loss)."""
    source = load_model_and_tokenizer("tiny-llada-moe", workspace=workspace).path
    folder = workspace / "models" / "moe-router-loss"
    shutil.copytree(source, folder)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "output_router_logits": True, "router_aux_loss_coef": coef}))
    return folder


def train(workspace: Path, out: Path, model_name: str, **overrides):
    """Two SFT steps; returns the reporter and, per training micro-batch, (diffusion loss, aux_loss of its forward)."""
    import dlm.trainers.sft_trainer as sft_trainer
    from dlm.forward import unwrap_model
    from dlm.trainers.sft_config import SFTConfig

    values = {**tiny_run(str(workspace), out), "batch_size": 2, "train_steps": 2, "warmup_ratio": 0.0}
    config = SFTConfig(**{**values, "model_name": str(model_name), **overrides})
    rows = [
        [{"role": "user", "content": f"{i} + {i}?"}, {"role": "assistant", "content": f"{2 * i}."}] for i in range(4)
    ]
    steps: list[tuple[float, float | None]] = []
    real = sft_trainer.diffusion_loss

    def recording(model, inputs, **kwargs):
        caught = []
        hook = unwrap_model(model).register_forward_hook(lambda _m, _a, out: caught.append(out.aux_loss))
        try:
            out = real(model, inputs, **kwargs)
        finally:
            hook.remove()
        if model.training:
            steps.append((out.loss.item(), None if caught[0] is None else caught[0].item()))
        return out

    reporter = Reporter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sft_trainer, "diffusion_loss", recording)
        result = sft_trainer.run_sft(config, rows, None, reporter)
    assert result.global_step == 2
    return reporter, steps


def logged(reporter: Reporter, name: str) -> list[float]:
    return [metrics[name] for _, metrics in reporter.metrics if name in metrics]


def test_router_loss_is_added_to_the_training_loss(tmp_path: Path) -> None:
    coef = 0.5
    folder = moe_with_router_loss(tmp_path, coef)
    reporter, steps = train(tmp_path, tmp_path / "out", folder)
    assert len(steps) == 2 and all(aux is not None and aux > 0 for _, aux in steps)
    assert logged(reporter, "train/aux_loss") == pytest.approx([aux for _, aux in steps], rel=1e-6)
    assert logged(reporter, "train/loss") == pytest.approx([loss + coef * aux for loss, aux in steps], rel=1e-5)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_tiny_llada_moe_trains_without_router_loss_by_default(tmp_path: Path, lora: bool) -> None:
    reporter, steps = train(tmp_path, tmp_path / "out", "tiny-llada-moe", lora=lora)
    assert all(aux is None for _, aux in steps)
    assert not logged(reporter, "train/aux_loss")
    assert logged(reporter, "train/loss") == pytest.approx([loss for loss, _ in steps], rel=1e-5)


def test_tiny_llada_moe_generates(tmp_path: Path) -> None:
    from dlm.generation import SamplerSettings, generate

    loaded = load_model_and_tokenizer("tiny-llada-moe", workspace=tmp_path, dtype="float32")
    ids = torch.tensor([[5, 6, 7, 8]])
    settings = SamplerSettings(steps=4, max_new_tokens=8, block_length=4)
    out = generate(loaded.model, loaded.family, loaded.special_ids, ids, torch.ones_like(ids), settings)
    assert out.sequences.shape == (1, 12) and out.sequences[0, :4].tolist() == [5, 6, 7, 8]
    assert loaded.special_ids.mask not in out.sequences.tolist()[0]  # every position revealed


@pytest.mark.slow
@pytest.mark.parametrize("lora", ["true", "false"])
def test_sft_plugin_trains_tiny_llada_moe_and_samples(workspace_with_presets, tmp_path: Path, lora: str) -> None:
    from tests.dlm.test_sft import run_trainer

    workspace = str(workspace_with_presets(f"moe_plugin_{lora}"))
    code, record, log, ws = run_trainer(
        workspace,
        tmp_path,
        model_name="tiny-llada-moe",
        train_steps="2",
        lora=lora,
        lora_target_modules="default+experts",
        save_full_model="true",
        sample_every_steps="2",
        validation_fraction="0.25",
    )
    assert code == 0, log
    assert "samples at step 2:" in log
    assert record["status"] == "COMPLETE" and record["job_data"]["completion_status"] == "success", log
    registered = json.loads((ws.model_dir(f"tiny-llada-moe_{tmp_path.name}") / "index.json").read_text())
    assert registered["json_data"]["architecture"] == "LLaDAMoEModelLM"
    if lora == "true":
        adapter = load_file(ws.adaptor_dir("tiny-llada-moe", tmp_path.name) / "adapter_model.safetensors")
        assert any(".mlp.experts.3.down_proj.lora_A" in key for key in adapter)


def test_tiny_llada_moe_evaluates(tmp_path: Path) -> None:
    from dlm.evaluation.run import evaluate
    from dlm.evaluation.settings import EvalExample, EvalSettings
    from dlm.generation import SamplerSettings

    loaded = load_model_and_tokenizer("tiny-llada-moe", workspace=tmp_path, dtype="float32")
    examples = [
        EvalExample(
            text="Lily reads a book in the park.", prompt=[{"role": "user", "content": "3 + 4?"}], reference="7"
        ),
        EvalExample(text="Tom has 12 coins.", prompt=[{"role": "user", "content": "Where?"}], reference="home"),
    ]
    settings = EvalSettings(
        metrics=("perplexity", "conditional_perplexity", "accuracy", "generation", "task_accuracy"),
        batch_size=2,
        mc_num=4,
        sampler=SamplerSettings(steps=4, max_new_tokens=4, block_length=4),
    )
    metrics = {m.name: m.value for m in evaluate(loaded, examples, settings).metrics}
    assert {"perplexity", "conditional_perplexity", "generation_perplexity", "task_accuracy"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(float(v))) for v in metrics.values()), metrics
    assert 1 < metrics["perplexity"] < 2 * len(loaded.tokenizer)  # a random model: about the vocabulary size
