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

GOLDEN_ROOT = Path(os.environ.get("DLM_GOLDEN_DIR", Path(__file__).parent / "fixtures" / "golden"))

# model_type that each golden.json family must load as.
FAMILY_MODEL_TYPES = {"llada": "llada", "dream": "Dream", "modernbert": "modernbert"}
LOGITS_RTOL = 1e-4  # max |ours - reference| relative to the reference logits' standard deviation


def fixture_dirs() -> list[Path]:
    return sorted(path.parent for path in GOLDEN_ROOT.glob("*/golden.json"))


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
