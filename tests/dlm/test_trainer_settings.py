"""Each trainer's settings live in its config: given as the plugin's parameters (strings, coerced by its index.json,
as a job gets them) the DPO settings reach the loss unchanged (`mc_samples` is the number of masks drawn per
response; the logged rewards and loss are beta times ELBO differences computed here independently, a plain forward
pass per masked sequence), and a setting that cannot work is refused when the config is built, before any model
loads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dlm.trainers.dpo_trainer as dpo_trainer
from dlm.errors import ConfigError
from dlm.loading import load_model_and_tokenizer
from dlm.trainers.dpo_config import DPOConfig
from dlm.trainers.sft_config import SFTConfig
from plugin_sdk.manifest import load_manifest
from plugin_sdk.params import coerce_and_validate
from plugin_sdk.preferences import PreferenceExample
from tests.helpers import Reporter

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "diffusion_dpo_trainer"
PAIRS = [
    PreferenceExample("0", [{"role": "user", "content": "Say A."}], "A", "B"),
    PreferenceExample("1", [{"role": "user", "content": "Say B. Please. Please."}], "B", "A A"),
    PreferenceExample("2", [{"role": "user", "content": "Name a colour."}], "Blue, mostly.", "Seven"),
]


def plugin_config(workspace: str, out: Path, **values: str) -> DPOConfig:
    """The config the plugin builds from these parameters (strings) and a tiny one-step run on the CPU."""
    manifest = load_manifest(PLUGIN)
    given = {
        "model_name": "tiny-llada",
        "train_device": "cpu",
        "dtype": "float32",
        "num_train_epochs": "0",
        "train_steps": "1",
        "batch_size": "3",
        "max_length": "64",
        "warmup_steps": "0",
        "sft_weight": "0",
        "save_steps": "1000",
        **values,
    }
    params = coerce_and_validate(given, manifest["parameters"], aliases=manifest.get("parameter_aliases"))
    return DPOConfig.from_params(params, output_dir=str(out), workspace=workspace)


def brute_force_elbo(
    model: torch.nn.Module, ids: torch.Tensor, response: torch.Tensor, masks: torch.Tensor, mask_id: int
) -> float:
    """Mean over the samples of (L / l) * sum of log p(true token) at the l masked response positions, each sample
    one forward pass of the lone (unpadded) sequence."""
    length = int(response.sum())
    terms = []
    for mask in masks:
        noisy = ids.masked_fill(mask, mask_id)
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=noisy[None]).logits[0].double(), dim=-1)
        picked = log_probs[mask].gather(-1, ids[mask][:, None]).sum()
        terms.append(float(picked) * length / int(mask.sum()))
    return sum(terms) / len(terms)


@pytest.mark.parametrize(("mc_samples", "beta"), [(3, 0.35), (1, 2.0)])
def test_plugin_parameters_reach_the_loss(preset_workspace, tmp_path, monkeypatch, mc_samples, beta):
    draws = []
    draw = dpo_trainer.draw_pair_masks

    def recording(batch, n, seed, name, block_size=None):
        masks = draw(batch, n, seed, name, block_size)
        draws.append((n, name, batch["input_ids"].clone(), batch["response_mask"].clone(), masks))
        return masks

    monkeypatch.setattr(dpo_trainer, "draw_pair_masks", recording)
    # Independent masks for the reference (antithetic off): with LoRA's zero adapters the policy equals the
    # reference, so the rewards at step 1 are beta times ELBO differences of one model on two sets of masks.
    config = plugin_config(
        str(preset_workspace), tmp_path, mc_samples=str(mc_samples), beta=str(beta), antithetic="false"
    )
    assert (config.mc_samples, config.beta, config.antithetic) == (mc_samples, beta, False)
    reporter = Reporter()
    dpo_trainer.run_dpo(config, PAIRS, None, reporter)

    policy, reference = [d for d in draws if d[1] == "train0"], [d for d in draws if d[1] == "train0:reference"]
    assert len(policy) == len(reference) == 1
    for n, _, _, response, masks in (*policy, *reference):
        assert n == mc_samples
        assert masks.shape[0] == mc_samples
        assert bool((masks.sum(-1) >= 1).all()) and bool((masks <= response).all())

    loaded = load_model_and_tokenizer("tiny-llada", workspace=str(preset_workspace), dtype="float32")
    model, mask_id = loaded.model.eval(), loaded.special_ids.mask
    _, _, ids, response, policy_masks = policy[0]
    reference_masks = reference[0][4]
    rows, half = ids.shape[0], ids.shape[0] // 2
    margins = []
    for r in range(rows):
        end = int(response[r].nonzero().max()) + 1  # right padding follows the response
        b = [
            brute_force_elbo(model, ids[r, :end], response[r, :end], m[:, r, :end], mask_id)
            for m in (policy_masks, reference_masks)
        ]
        margins.append(b[0] - b[1])
    chosen = [beta * m for m in margins[:half]]
    rejected = [beta * m for m in margins[half:]]
    losses = [
        -F.logsigmoid(torch.tensor(c - w, dtype=torch.float64)).item() for c, w in zip(chosen, rejected, strict=True)
    ]
    assert reporter.first("train/rewards/chosen") == pytest.approx(sum(chosen) / half, rel=1e-4, abs=1e-6)
    assert reporter.first("train/rewards/rejected") == pytest.approx(sum(rejected) / half, rel=1e-4, abs=1e-6)
    assert reporter.first("train/loss") == pytest.approx(sum(losses) / half, rel=1e-5)
    assert any(abs(c) > 1e-3 for c in chosen)  # the check has something to scale
    assert not math.isclose(sum(losses) / half, math.log(2), rel_tol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss_norm_type": "per_word"}, "unknown loss_norm_type 'per_word'"),
        ({"noise_schedule": "cubic"}, "unknown noise_schedule 'cubic'"),
        ({"time_epsilon": 1.0}, "time_epsilon must be in"),
        ({"loss_weight_type": "cart[geo_p:2]"}, "loss_weight_type 'cart\\[geo_p:2\\]': geo_p"),
        ({"training_method": "gpt"}, "training_method='gpt' is not one of"),
        ({"load_in_4bit": True, "lora": False}, "load_in_4bit/load_in_8bit train only LoRA"),
    ],
)
def test_sft_settings_are_refused_when_the_config_is_built(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        SFTConfig(model_name="tiny-llada", output_dir=str(tmp_path), **overrides)


def test_qlora_without_lora_is_refused_by_the_dpo_config(tmp_path):
    with pytest.raises(ConfigError, match="load_in_8bit train only LoRA"):
        DPOConfig(model_name="tiny-llada", output_dir=str(tmp_path), load_in_8bit=True, lora=False)
