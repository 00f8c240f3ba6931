"""Golden ELBO terms and sampler outputs: what the reference LLaDA and Dream code computed on tiny checkpoints.

Fixture root: ``$DLM_GOLDEN_DIR`` (default ``tests/fixtures/golden``); every subfolder with a ``golden.json`` having
an ``elbo`` or ``sample`` section yields tests, one per case. Family and every setting come from ``golden.json``.
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
from dlm.samplers import generate_dream, generate_llada

GOLDEN_ROOT = Path(os.environ.get("DLM_GOLDEN_DIR", Path(__file__).parent / "fixtures" / "golden"))
ELBO_RTOL = 1e-5


def _fixture_dirs() -> list[Path]:
    return sorted(path.parent for path in GOLDEN_ROOT.glob("*/golden.json"))


@functools.cache
def _golden(fixture_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return json.loads((fixture_dir / "golden.json").read_text()), load_file(fixture_dir / "golden.safetensors")


@functools.cache
def _model(fixture_dir: Path) -> PreTrainedModel:
    return AutoModelForMaskedLM.from_pretrained(fixture_dir).eval()


def _params(section: str) -> list[Any]:
    params = []
    for fixture_dir in _fixture_dirs():
        spec = json.loads((fixture_dir / "golden.json").read_text()).get(section)
        if spec is None:
            continue
        for index, case in enumerate(spec.get("cases", [spec])):
            params.append(pytest.param(fixture_dir, case, id=f"{fixture_dir.name}-case{case.get('case', index)}"))
    return params


@pytest.mark.parametrize(("fixture_dir", "case"), _params("elbo"))
def test_golden_elbo_terms(fixture_dir: Path, case: dict[str, Any]) -> None:
    spec, tensors = _golden(fixture_dir)
    model = _model(fixture_dir)
    input_ids = tensors["elbo.input_ids"]
    masks = tensors["elbo.masks"].bool()
    prompt_len, response_len = case["prompt_len"], case["response_len"]
    assert input_ids.shape[1] == prompt_len + response_len
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    response_mask[:, prompt_len:] = True
    with torch.no_grad():
        terms = elbo_terms(
            model,
            input_ids,
            response_mask,
            masks.unsqueeze(1),
            mask_id=model.config.mask_token_id,
            shift=get_family(spec["family"]).shift_logits,
            batch_size=3,
        )
    expected = torch.tensor(case["expected_terms"], dtype=torch.float64)
    torch.testing.assert_close(terms[:, 0], expected, rtol=ELBO_RTOL, atol=0)
    assert terms.mean().item() == pytest.approx(case["expected_mean"], rel=ELBO_RTOL)


@pytest.mark.parametrize(("fixture_dir", "case"), _params("sample"))
def test_golden_sampler_output(fixture_dir: Path, case: dict[str, Any]) -> None:
    spec, tensors = _golden(fixture_dir)
    model = _model(fixture_dir)
    prompt = tensors[spec["sample"]["prompt"]]
    expected = tensors[case["output"]]
    family = spec["family"]
    if family == "llada":
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
    elif family == "dream":
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
        pytest.fail(f"{fixture_dir}: no sampler for family {family!r}")
    assert out.sequences.tolist() == expected.tolist()
