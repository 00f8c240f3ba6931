"""The diffusion loss reproduces the reference trainers' losses on the golden fixtures.

The fixture root is ``$DLM_GOLDEN_DIR`` (default ``tests/fixtures/golden``); one test per fixture folder and per case
of its ``golden.json`` ``loss`` section. Everything (batch tensors, mask id, times, masked positions, weight and
normalisation types, logit shift, expected loss) is read from the fixture.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, PreTrainedModel

import dlm  # noqa: F401  (registers LLaDA and Dream with the Auto classes)
from dlm.families import detect_family
from dlm.losses import LossConfig, diffusion_loss

GOLDEN_ROOT = Path(os.environ.get("DLM_GOLDEN_DIR", Path(__file__).parent / "fixtures" / "golden"))
RELATIVE_TOLERANCE = 1e-5


def loss_cases() -> list[Any]:
    params = []
    for spec_file in sorted(GOLDEN_ROOT.glob("*/golden.json")):
        for case in json.loads(spec_file.read_text()).get("loss", {}).get("cases", []):
            params.append(pytest.param(spec_file.parent, case, id=f"{spec_file.parent.name}-case{case['case']}"))
    return params


@cache
def golden(fixture_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], PreTrainedModel]:
    spec = json.loads((fixture_dir / "golden.json").read_text())
    model = AutoModelForMaskedLM.from_pretrained(fixture_dir).eval()
    family = detect_family(model.config)
    assert spec["family"].lower() in {family.name, *(t.lower() for t in family.model_types)}, (
        f"{fixture_dir}: golden.json names family {spec['family']!r}, the checkpoint loads as {family.name}"
    )
    return spec, load_file(fixture_dir / "golden.safetensors"), model


def test_golden_root_has_loss_cases() -> None:
    assert loss_cases(), f"no loss cases in */golden.json under {GOLDEN_ROOT} (set DLM_GOLDEN_DIR to the fixture root)"


@pytest.mark.parametrize(("fixture_dir", "case"), loss_cases())
def test_golden_loss(fixture_dir: Path, case: dict[str, Any]) -> None:
    spec, tensors, model = golden(fixture_dir)
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
        out = diffusion_loss(model, batch, masked=tensors[case["masked"]], t=tensors[case["t"]], config=config)
    assert out.loss.item() == pytest.approx(case["expected_loss"], rel=RELATIVE_TOLERANCE), (
        f"{fixture_dir.name} case {case['case']} ({case['loss_weight_type']}, {case['loss_norm_type']}, "
        f"shift={case['right_shift_logits']})"
    )
