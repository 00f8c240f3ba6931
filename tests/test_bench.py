"""The benchmarks still run and print their result line, at a size small enough for the test suite. The ratios
they print at this size mean nothing; the equalities (same loss, identical samples, same ELBO) must hold at any
size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

SMALL = {
    "sft.py": ["--vocab", "2048", "--d-model", "64", "--layers", "1", "--batch", "2", "--length", "32", "--iters", "1"],
    "dpo.py": [
        "--vocab",
        "2048",
        "--d-model",
        "64",
        "--layers",
        "1",
        "--pairs",
        "2",
        "--prompt",
        "8",
        "--response",
        "8",
        "--mc-samples",
        "4",
        "--iters",
        "1",
    ],
    "elbo.py": ["--sequences", "2", "--mc-num", "8", "--batch-size", "8", "--rounds", "1"],
    "sample.py": [
        *("--gen-length", "8", "--block-length", "4", "--official-gen-length", "8", "--small-vocab", "256"),
        *("--rounds", "1"),
    ],
    "models.py": [
        "--vocab",
        "512",
        "--d-model",
        "64",
        "--heads",
        "4",
        "--layers",
        "1",
        "--mlp",
        "128",
        "--seq-len",
        "16",
        "--batch",
        "2",
        "--warmup",
        "1",
        "--iters",
        "1",
    ],
}
SMALL["pretrain.py"] = [
    *("--vocab", "512", "--batch", "2", "--length", "32", "--steps", "2", "--warmup", "1"),
    *("--tokens-small", "1000", "--tokens-large", "5000"),
]
KEYS = {
    "sft.py": {"throughput_ratio", "memory_ratio", "max_loss_diff"},
    "dpo.py": {"step_time_ratio", "memory_ratio", "memory_ratio_per_sample_backward", "max_loss_diff"},
    "elbo.py": {"throughput_ratio", "max_abs_diff"},
    "sample.py": {
        *("speedup_prefix", "speedup_dual", "speedup_dual_parallel", "nfe_ratio_dual_parallel"),
        *("outputs_identical_exact", "official_ratio_vocab_32k", "official_ratio_small_vocab", "accuracy_exact"),
    },
    "models.py": {"speed_ratio", "memory_ratio"},
    "pretrain.py": {"throughput_ratio", "memory_growth_ratio", "baseline_memory_growth_ratio"},
}


def test_every_benchmark_is_covered():
    assert {p.name for p in BENCH.glob("*.py")} - {"common.py"} == set(SMALL)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMALL))
def test_benchmark_prints_its_result_line(script):
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *SMALL[script]],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert KEYS[script] <= set(result)
    measured = {k: v for k, v in result.items() if v is not None}  # None: not measured at this size
    assert all(isinstance(v, bool) or v > 0 for k, v in measured.items() if not k.startswith("max_"))
    if "max_loss_diff" in result:
        assert result["max_loss_diff"] <= 1e-5
    if "max_abs_diff" in result:
        assert result["max_abs_diff"] <= 1e-9
    for key in [k for k in result if k.startswith("outputs_identical")]:
        assert result[key] is True, key
