"""Block diffusion against dllm's BD3LM trainer: the committed fixture (`tests/fixtures/golden/bd3lm-tiny`, made by its
`generate.py` from dllm's code and dllm's a2d Qwen3 model on transformers 4.57) and, with `DLLM_DIR` set, a live
run of dllm's `BD3LMTrainer.compute_loss` side by side with ours for several optimizer steps."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dlm.block_diffusion import block_attention_mask
from dlm.losses import LossConfig, diffusion_loss

FIXTURE = Path(__file__).parents[1] / "fixtures" / "golden" / "bd3lm-tiny"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
TENSORS = load_file(FIXTURE / "golden.safetensors")
DLLM_DIR = os.environ.get("DLLM_DIR")


def fixture_model() -> torch.nn.Module:
    """The fixture's a2d Qwen3 checkpoint as transformers' Qwen3ForCausalLM with `is_causal: false`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    raw = json.loads((FIXTURE / "config.json").read_text())
    fields = {k: v for k, v in raw.items() if k not in ("architectures", "model_type", "transformers_version")}
    config = Qwen3Config(**fields, is_causal=False, attn_implementation="sdpa")
    model = Qwen3ForCausalLM(config)
    model.load_state_dict(load_file(FIXTURE / "model.safetensors"), strict=True)
    return model.eval()


def loss_config(block_size: int, norm: str, weight: str) -> LossConfig:
    return LossConfig(
        mask_token_id=GOLDEN["mask_token_id"],
        block_size=block_size,
        loss_norm_type=norm,
        loss_weight_type=weight,
        time_epsilon=GOLDEN["time_epsilon"],
    )


def batch_of(prefix: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    batch = {"input_ids": TENSORS[f"{prefix}.input_ids"], "labels": TENSORS[f"{prefix}.labels"]}
    return batch, TENSORS[f"{prefix}.t"], TENSORS[f"{prefix}.masked"]


@pytest.mark.parametrize("case", GOLDEN["masks"], ids=lambda c: c["tensor"])
def test_attention_mask_equals_reference(case):
    expected = TENSORS[case["tensor"]]
    assert torch.equal(block_attention_mask(case["length"], case["block_size"]), expected)


@pytest.mark.parametrize("case", GOLDEN["loss"], ids=lambda c: c["tensors"])
def test_loss_equals_reference(case):
    batch, t, masked = batch_of(case["tensors"])
    config = loss_config(case["block_size"], case["loss_norm_type"], case["loss_weight_type"])
    with torch.no_grad():
        loss = diffusion_loss(fixture_model(), batch, masked=masked, t=t, config=config).loss
    assert loss.item() == pytest.approx(case["expected_loss"], rel=1e-5)


def test_fixture_covers_a_length_that_is_not_a_block_multiple():
    lengths = {c["block_size"]: TENSORS[f"{c['tensors']}.input_ids"].shape[1] for c in GOLDEN["loss"]}
    assert any(length % block for block, length in lengths.items())


def test_training_steps_equal_reference():
    train = GOLDEN["train"]
    model = fixture_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"])
    config = loss_config(train["block_size"], train["loss_norm_type"], train["loss_weight_type"])
    for step, expected in enumerate(train["expected_losses"]):
        batch, t, masked = batch_of(f"train.{step}")
        loss = diffusion_loss(model, batch, masked=masked, t=t, config=config).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert loss.item() == pytest.approx(expected, rel=1e-5), f"step {step}"


def _generator_module():
    spec = importlib.util.spec_from_file_location("bd3lm_golden_generate", FIXTURE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not DLLM_DIR, reason="set DLLM_DIR to a dllm checkout to compare with its BD3LM trainer live")
@pytest.mark.parametrize(("block_size", "norm", "weight"), [(4, "token", "scheduler"), (2, "sequence", "uniform")])
def test_parity_with_dllm_trainer_over_steps(block_size, norm, weight):
    """dllm's compute_loss (its own t and mask draws) and ours (given those draws) train two copies of one model with
    AdamW; the per-step losses agree to 1e-6."""
    generate = _generator_module()
    reference = generate.import_reference(DLLM_DIR, with_model=False)
    ours_model = fixture_model().train()
    theirs_model = copy.deepcopy(ours_model)
    ours_opt = torch.optim.AdamW(ours_model.parameters(), lr=1e-3)
    theirs_opt = torch.optim.AdamW(theirs_model.parameters(), lr=1e-3)
    trainer = generate.reference_trainer(reference, block_size, norm, weight)
    config = loss_config(block_size, norm, weight)
    rows = generate.sft_rows(torch.Generator().manual_seed(7), [(3, 6), (2, 3), (4, 5), (1, 8), (2, 10), (5, 2)])
    for step in range(6):
        batch = generate.collate(reference, rows[(step % 3) * 2 : (step % 3) * 2 + 2], block_size, True)
        torch.manual_seed(step)
        theirs = trainer.compute_loss(theirs_model, dict(batch))
        t, masked = trainer.drawn["t"], trainer.drawn["masked"]
        ours = diffusion_loss(ours_model, batch, masked=masked, t=t, config=config).loss
        assert abs(ours.item() - theirs.item()) <= 1e-6, f"step {step}: {ours.item()} vs {theirs.item()}"
        for loss, optimizer in ((ours, ours_opt), (theirs, theirs_opt)):
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
