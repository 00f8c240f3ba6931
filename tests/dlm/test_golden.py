"""Golden tests: reproduce what the reference implementations computed on tiny checkpoints.

The fixture root is ``$DLM_GOLDEN_DIR`` (default ``tests/fixtures/golden``); every subfolder holding a
``golden.json`` is a fixture (format: ``tests/fixtures/golden/README.md``). Tests are generated per fixture and per
section (and per case where a section has ``cases``); a section a fixture lacks generates no test, so nothing passes
by being skipped. Family and settings come from ``golden.json`` only, never from the folder name.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, PreTrainedModel

import dlm  # noqa: F401  (registers LLaDA and Dream with the Auto classes)
from dlm.elbo import elbo_terms
from dlm.families import get_family
from dlm.losses import LossConfig, diffusion_loss
from dlm.samplers.dream import generate_dream
from dlm.samplers.llada import generate_llada

GOLDEN_ROOT = Path(os.environ.get("DLM_GOLDEN_DIR", Path(__file__).parents[1] / "fixtures" / "golden"))

# model_type that each golden.json family must load as.
FAMILY_MODEL_TYPES = {"llada": "llada", "llada_moe": "lladamoe", "dream": "Dream", "modernbert": "modernbert"}
LOGITS_RTOL = 1e-4  # max |ours - reference| relative to the reference logits' standard deviation


def fixture_dirs() -> list[Path]:
    """The fixtures of this format (a `family` these tests load); block-diffusion fixtures have tests of their own."""
    found = (path for path in GOLDEN_ROOT.glob("*/golden.json"))
    return sorted(p.parent for p in found if json.loads(p.read_text()).get("family") in FAMILY_MODEL_TYPES)


@functools.cache
def load_golden(fixture_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(golden.json contents, golden.safetensors tensors by name) of one fixture."""
    spec = json.loads((fixture_dir / "golden.json").read_text())
    return spec, load_file(fixture_dir / "golden.safetensors")


def section_params(section: str) -> list[Any]:
    """One ``(fixture_dir, case)`` param per case of ``section`` (``case`` is None for a section without cases)."""
    params = []
    for fixture_dir in fixture_dirs():
        spec = json.loads((fixture_dir / "golden.json").read_text()).get(section)
        if spec is None:
            continue
        cases = spec.get("cases")
        if cases is None:
            params.append(pytest.param(fixture_dir, None, id=fixture_dir.name))
        else:
            for index, case in enumerate(cases):
                params.append(pytest.param(fixture_dir, case, id=f"{fixture_dir.name}-case{case.get('case', index)}"))
    return params


@functools.cache
def load_model(fixture_dir: Path, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """The fixture's checkpoint in eval mode, checked to be of the family its golden.json names."""
    spec, _ = load_golden(fixture_dir)
    model = AutoModelForMaskedLM.from_pretrained(fixture_dir, attn_implementation=attn_implementation).eval()
    expected = FAMILY_MODEL_TYPES[spec["family"]]
    assert model.config.model_type == expected, f"{fixture_dir}: family {spec['family']} should load as {expected}"
    return model


def assert_logits_close(ours: torch.Tensor, reference: torch.Tensor, where: torch.Tensor | None = None) -> None:
    assert ours.shape == reference.shape, f"logits shape {tuple(ours.shape)} != reference {tuple(reference.shape)}"
    diff = (ours.float() - reference.float()).abs()
    if where is not None:
        diff = diff[where.bool()]
    tolerance = LOGITS_RTOL * reference.float().std().item()
    assert diff.max().item() <= tolerance, f"max |diff| {diff.max().item():.3e} > {tolerance:.3e}"


def test_golden_root_has_fixtures() -> None:
    assert fixture_dirs(), f"no */golden.json under {GOLDEN_ROOT} (set DLM_GOLDEN_DIR to the fixture root)"


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("with_attention_mask", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize(("fixture_dir", "case"), section_params("forward"))
def test_forward(fixture_dir: Path, case: None, with_attention_mask: bool, attn_implementation: str) -> None:
    _, tensors = load_golden(fixture_dir)
    model = load_model(fixture_dir, attn_implementation)
    input_ids, attention_mask = tensors["forward.input_ids"], tensors["forward.attention_mask"]
    with torch.no_grad():
        if with_attention_mask:
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            # Padded rows of the reference are not meaningful: compare real tokens only.
            assert_logits_close(logits, tensors["forward.logits_with_attention_mask"], where=attention_mask)
        else:
            logits = model(input_ids=input_ids).logits
            assert_logits_close(logits, tensors["forward.logits_no_attention_mask"])


# ---- loss (diffusion_llm_trainer) ---------------------------------------------------------------------------------
LOSS_RTOL = 1e-5


@pytest.mark.parametrize(("fixture_dir", "case"), section_params("loss"))
def test_loss(fixture_dir: Path, case: dict[str, Any]) -> None:
    spec, tensors = load_golden(fixture_dir)
    section = spec["loss"]
    batch = {key: tensors[name] for key, name in section["inputs"].items()}
    config = LossConfig(
        mask_token_id=int(section["mask_token_id"]),
        shift_logits=bool(case["right_shift_logits"]),
        loss_weight_type=case["loss_weight_type"],
        loss_norm_type=case["loss_norm_type"],
        time_epsilon=float(case["time_epsilon"]),
    )
    with torch.no_grad():
        out = diffusion_loss(
            load_model(fixture_dir), batch, masked=tensors[case["masked"]].bool(), t=tensors[case["t"]], config=config
        )
    assert out.loss.item() == pytest.approx(case["expected_loss"], rel=LOSS_RTOL), (
        f"{fixture_dir.name} case {case['case']} ({case['loss_weight_type']}, {case['loss_norm_type']}, "
        f"shift={case['right_shift_logits']})"
    )


# ---- ELBO (DPO trainer, evaluator) ----------------------------------------------------------------------------------
ELBO_RTOL = 1e-5


@pytest.mark.parametrize(("fixture_dir", "case"), section_params("elbo"))
def test_elbo_terms(fixture_dir: Path, case: None) -> None:
    spec, tensors = load_golden(fixture_dir)
    section = spec["elbo"]
    model = load_model(fixture_dir)
    input_ids = tensors["elbo.input_ids"]
    assert input_ids.shape[1] == section["prompt_len"] + section["response_len"]
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    response_mask[:, section["prompt_len"] :] = True
    with torch.no_grad():
        terms = elbo_terms(
            model,
            input_ids,
            response_mask,
            tensors["elbo.masks"].bool().unsqueeze(1),
            mask_id=model.config.mask_token_id,
            shift=get_family(spec["family"]).shift_logits,
            batch_size=3,
        )
    expected = torch.tensor(section["expected_terms"], dtype=torch.float64)
    torch.testing.assert_close(terms[:, 0], expected, rtol=ELBO_RTOL, atol=0)
    assert terms.mean().item() == pytest.approx(section["expected_mean"], rel=ELBO_RTOL)


# ---- samplers (evaluator, sample logging) ---------------------------------------------------------------------------
@pytest.mark.parametrize(("fixture_dir", "case"), section_params("sample"))
def test_sampler_output(fixture_dir: Path, case: dict[str, Any]) -> None:
    spec, tensors = load_golden(fixture_dir)
    model = load_model(fixture_dir)
    prompt = tensors[spec["sample"]["prompt"]]
    family = spec["family"]
    if get_family(family).sampler == "llada":
        # the reference's cfg case passes an all-ones attention mask
        attention_mask = torch.ones_like(prompt) if case.get("cfg_scale", 0) > 0 else None
        out = generate_llada(
            model,
            prompt,
            steps=case["steps"],
            gen_length=case["gen_length"],
            block_length=case["block_length"],
            temperature=case["temperature"],
            remasking=case["remasking"],
            cfg_scale=case.get("cfg_scale", 0.0),
            mask_id=case["mask_id"],
            attention_mask=attention_mask,
        )
    elif get_family(family).sampler == "dream":
        out = generate_dream(
            model,
            prompt,
            steps=case["steps"],
            max_new_tokens=case["max_new_tokens"],
            temperature=case["temperature"],
            top_p=case.get("top_p"),
            top_k=case.get("top_k"),
            alg=case["alg"],
            alg_temp=case.get("alg_temp"),
            eps=case.get("eps", 1e-3),
            mask_id=case["mask_id"],
        )
    else:
        pytest.fail(f"{fixture_dir}: golden.json has a sample section for family {family!r}, which has no sampler")
    assert out.sequences.tolist() == tensors[case["output"]].tolist()
