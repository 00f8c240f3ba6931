"""Training parameters change what is trained, checked against independent computations: LoRA target modules and
alpha, and the warm-up of the learning rate as logged."""

import math

import pytest
import torch

from dlm.loading import load_model_and_tokenizer
from dlm.lora import apply_lora
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft
from tests.helpers import Reporter, tiny_run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("effects_ws"))


def lora_layers(model) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules() if hasattr(module, "lora_A") and module.lora_A}


def test_target_modules_choose_the_adapted_layers(workspace):
    loaded = load_model_and_tokenizer("tiny-llada", workspace=workspace)
    model = apply_lora(loaded.model, loaded.family, r=4, alpha=8, target_modules="q_proj,v_proj")
    names = lora_layers(model)
    blocks = sum(1 for name, _ in loaded.model.named_modules() if name.endswith(".q_proj"))
    assert blocks > 0
    assert len(names) == 2 * blocks
    assert all(name.endswith((".q_proj", ".v_proj")) for name in names)


@pytest.mark.parametrize("alpha", [4, 8, 32])
def test_lora_alpha_scales_the_adapter_output_by_alpha_over_r(workspace, alpha):
    loaded = load_model_and_tokenizer("tiny-llada", workspace=workspace)
    model = apply_lora(loaded.model, loaded.family, r=4, alpha=alpha, dropout=0.0, target_modules="q_proj")
    layer = next(iter(lora_layers(model).values()))
    torch.manual_seed(0)
    torch.nn.init.normal_(layer.lora_B["default"].weight)  # B starts at zero; any B shows the scale
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        expected = layer.base_layer(x) + (alpha / 4) * (x @ a.T @ b.T)  # W x + (alpha / r) B A x
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_warm_up_ramps_the_logged_learning_rate_linearly(workspace, tmp_path):
    learning_rate, steps, ratio = 1e-3, 6, 0.5
    values = {**tiny_run(workspace, tmp_path), "batch_size": 2, "train_steps": steps, "save_steps": 1000}
    config = SFTConfig(**{**values, "learning_rate_schedule": "constant_with_warmup", "warmup_ratio": ratio})
    conversations = [
        [{"role": "user", "content": f"{i}?"}, {"role": "assistant", "content": f"{i}."}] for i in range(2 * steps)
    ]
    reporter = Reporter()
    run_sft(config, conversations, None, reporter)
    logged = [metrics["train/lr"] for _, metrics in reporter.metrics if "train/lr" in metrics]
    warmup = math.ceil(ratio * steps)
    # step k (from 1) trains at lambda(k - 1) of the rate, lambda(s) = s / warmup during the warm-up, then 1
    expected = [learning_rate * min(1.0, (k - 1) / warmup) for k in range(1, steps + 1)]
    assert logged == pytest.approx(expected)
