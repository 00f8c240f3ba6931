"""GRPO estimators and loss against the reference trainers' own numbers (fixtures `grpo-one-step`, `grpo-coupled`,
written by their `generate.py` from d1's diffu-GRPO, dllm's port of it and DiffuCoder's coupled-GRPO): the same
masks from the same seeds, the same per-token log-probabilities, loss and gradients to 1e-5 relative."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM

import dlm  # noqa: F401  (registers LLaDA and Dream with the Auto classes)
from dlm.families import get_family
from dlm.grpo_loss import grpo_loss
from dlm.logprob_estimators import Rollouts, completion_logps, coupled_masks, one_step_prompt_mask

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
RTOL = 1e-5


@functools.cache
def load(name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return json.loads((GOLDEN / name / "golden.json").read_text()), load_file(GOLDEN / name / "golden.safetensors")


def tiny_model(spec: dict[str, Any]) -> torch.nn.Module:
    """The fixture's checkpoint with its output head scaled as the generator scaled it (fresh, without gradients)."""
    model = AutoModelForMaskedLM.from_pretrained(GOLDEN / spec["fixture"]).eval()
    with torch.no_grad():
        model.get_parameter(spec["head"]).mul_(spec["head_scale"])
    return model


def rollouts_of(names: dict[str, str], tensors: dict[str, torch.Tensor]) -> Rollouts:
    return Rollouts(
        prompt_ids=tensors[names["prompt_ids"]],
        prompt_mask=tensors[names["prompt_mask"]].bool(),
        completion_ids=tensors[names["completion_ids"]],
        completion_mask=tensors[names["completion_mask"]].bool(),
    )


def assert_close(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    """Equal to RTOL relative to the reference's largest magnitude."""
    scale = float(reference.abs().max())
    torch.testing.assert_close(ours, reference, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}")


def check_loss_and_gradients(model: torch.nn.Module, loss: torch.Tensor, case: dict, tensors: dict) -> None:
    assert float(loss.detach()) == pytest.approx(case["loss"], rel=RTOL, abs=1e-8)
    loss.backward()
    for name, key in case["grads"].items():
        assert_close(model.get_parameter(name).grad, tensors[key], f"gradient of {name}")
    squared = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
    assert squared == pytest.approx(case["grad_squared_norm"], rel=2 * RTOL)


D1_CASES = [case["name"] for case in load("grpo-one-step")[0]["d1"]["cases"]]


@pytest.mark.parametrize("name", D1_CASES)
def test_one_step_matches_d1(name: str) -> None:
    """d1's masks from the same seed, its per-token log-probabilities, and its loss and gradients from ours
    (`loss_type="bnpo"`: d1 averages over every completion token of the batch)."""
    spec, tensors = load("grpo-one-step")
    case = next(c for c in spec["d1"]["cases"] if c["name"] == name)
    rollouts = rollouts_of(spec["d1"]["rollouts"], tensors)
    seed = case["seeds"][case["iteration"]]
    mask_id = spec["mask_token_id"]

    prompt_masked = one_step_prompt_mask(rollouts, seed, case["p_mask_prompt"])
    noisy = torch.cat(
        [rollouts.prompt_ids.masked_fill(prompt_masked, mask_id), torch.full_like(rollouts.completion_ids, mask_id)], 1
    )
    assert torch.equal(noisy, tensors[f"{case['prefix']}.noisy"])

    model = tiny_model(spec)
    logps = completion_logps(
        model, rollouts, estimator="one_step", family=get_family(spec["family"]), mask_id=mask_id, seed=seed,
        p_mask_prompt=case["p_mask_prompt"],
    )  # fmt: skip
    mask = rollouts.completion_mask
    assert_close(logps[mask], tensors[f"{case['prefix']}.logps"][mask], "one-step log-probabilities")
    assert torch.all(logps[~mask] == 0)

    index = case["iteration"]
    old = tensors[f"{case['prefix']}.old_logps"][index] if case["num_iterations"] > 1 else None
    ref = tensors[f"{case['prefix']}.ref_logps"][index] if case["beta"] != 0.0 else None
    out = grpo_loss(
        logps, old, ref, tensors[f"{case['prefix']}.advantages"], mask, epsilon_low=case["epsilon"],
        epsilon_high=case["epsilon"], beta=case["beta"], loss_type="bnpo",
    )  # fmt: skip
    if case["reference_kl"] is None:
        assert out.kl is None
    else:
        assert float(out.kl) == pytest.approx(case["reference_kl"], rel=RTOL)
    check_loss_and_gradients(model, out.loss, case, tensors)


def test_one_step_matches_dllm_chunks() -> None:
    """dllm reseeds every chunk of `batch_size` rows: each chunk scored alone with the same seed gives its numbers."""
    spec, tensors = load("grpo-one-step")
    rollouts = rollouts_of(spec["dllm"]["rollouts"], tensors)
    model = tiny_model(spec)
    for case in spec["dllm"]["cases"]:
        size = case["batch_size"]
        reference = tensors[f"{case['prefix']}.logps"]
        for first in range(0, rollouts.prompt_ids.shape[0], size):
            chunk = Rollouts(*(t[first : first + size] for t in vars(rollouts).values()))
            with torch.no_grad():
                logps = completion_logps(
                    model, chunk, estimator="one_step", family=get_family(spec["family"]),
                    mask_id=spec["mask_token_id"], seed=case["seed"], p_mask_prompt=case["p_mask_prompt"],
                )  # fmt: skip
            assert_close(logps, reference[first : first + size], f"dllm rows {first}..{first + size - 1}")


COUPLED_CASES = [case["name"] for case in load("grpo-coupled")[0]["cases"]]


@pytest.mark.parametrize("name", COUPLED_CASES)
def test_coupled_matches_diffucoder(name: str) -> None:
    """DiffuCoder's mask ratio and complementary masks from the same seed, its weighted per-token estimates (Dream's
    shifted logits), its loss (`bnpo`) with asymmetric clipping, its clip metrics, and its gradients."""
    spec, tensors = load("grpo-coupled")
    case = next(c for c in spec["cases"] if c["name"] == name)
    rollouts = rollouts_of(spec["rollouts"], tensors)
    seed = case["seeds"][case["iteration"]]
    mask_id = spec["mask_token_id"]

    masks = coupled_masks(rollouts, seed)
    assert masks.t == pytest.approx(case["mask_ratio"], rel=1e-12)
    versions = [torch.ones_like(masks.first), masks.first, masks.second]
    noisy = torch.stack(
        [torch.cat([rollouts.prompt_ids, rollouts.completion_ids.masked_fill(m, mask_id)], 1) for m in versions]
    )
    assert torch.equal(noisy, tensors[f"{case['prefix']}.noisy"])

    model = tiny_model(spec)
    family = get_family(spec["family"])
    logps = completion_logps(model, rollouts, estimator="coupled", family=family, mask_id=mask_id, seed=seed)
    mask = rollouts.completion_mask
    assert_close(logps[mask], tensors[f"{case['prefix']}.logps"][mask], "coupled log-probabilities")

    index = case["iteration"]
    old = tensors[f"{case['prefix']}.old_logps"][:, index] if case["num_iterations"] > 1 else None
    ref = tensors[f"{case['prefix']}.ref_logps"][:, index] if case["beta"] != 0.0 else None
    out = grpo_loss(
        logps, old, ref, tensors[f"{case['prefix']}.advantages"], mask, epsilon_low=case["epsilon_low"],
        epsilon_high=case["epsilon_high"], beta=case["beta"], loss_type="bnpo",
    )  # fmt: skip
    assert (out.kl is None) == (case["reference_kl"] is None)
    if out.kl is not None:  # DiffuCoder's logged KL is not a masked mean (see _broadcast_kl), so it is not compared
        reference_logps = tensors[f"{case['prefix']}.logps"]
        assert _broadcast_kl(reference_logps, ref, mask) == pytest.approx(case["reference_kl"], rel=RTOL)
    check_loss_and_gradients(model, out.loss, case, tensors)


def _broadcast_kl(logps: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    """DiffuCoder's logged KL: its per-token KL is [N, 1, C] and the completion mask [N, C], so their product is
    [N, N, C] and the "mean" is the sum over every pair of rows divided by the mask count (a reference bug; its clip
    metrics broadcast the same way; the loss itself indexes [:, 0, :] and is right)."""
    kl = (torch.exp(ref - logps) - (ref - logps) - 1).detach()
    return float((kl.unsqueeze(1) * mask).sum() / mask.sum())
