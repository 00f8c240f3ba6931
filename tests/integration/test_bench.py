"""The benchmarks still run and print their result line, at a size small enough for the test suite. The ratios
they print at this size mean nothing; the equalities (same loss, identical samples, same ELBO) must hold at any
size."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

SMALL = {
    "sft.py": [
        *("--vocab", "2048", "--small-vocab", "256", "--d-model", "64", "--layers", "1", "--batch", "2"),
        *("--length", "32", "--iters", "1"),
    ],
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
    "elbo.py": [
        *("--vocab", "1024", "--small-vocab", "256", "--d-model", "64", "--layers", "1", "--prompts", "2"),
        *("--mc-num", "8", "--samples-per-forward", "4", "8", "--rounds", "1"),
    ],
    "sample.py": [
        *("--block-length", "4", "--official-gen-length", "8", "--small-vocab", "256", "--rounds", "1"),
        *("--lengths", "8", "16", "--problems", "2", "--batch", "2", "--train-steps", "2"),
    ],
    "models.py": [
        "--vocab",
        "512",
        "--small-vocab",
        "128",
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
SMALL["bd3lm.py"] = [
    *("--vocab", "2048", "--small-vocab", "256", "--d-model", "64", "--layers", "1", "--batch", "2"),
    *("--length", "32", "--block-size", "8", "--iters", "1", "--prompts", "3", "--prompt-length", "9"),
    *("--gen-length", "12", "--rounds", "1"),
]
SMALL["grpo.py"] = [
    *("--vocab", "1024", "--d-model", "64", "--layers", "1", "--prompts", "2", "--group", "2", "--batches", "2"),
    *("--prompt-length", "8", "--completion-length", "16", "--block-length", "8", "--num-iterations", "2"),
    *("--check-steps", "2", "--iters", "1"),
]
SMALL["pretrain.py"] = [
    *("--vocab", "512", "--batch", "2", "--length", "32", "--steps", "2", "--warmup", "1"),
    *("--tokens-small", "1000", "--tokens-large", "5000"),
]
SMALL["fast_dllm_reference.py"] = ["--gen-lengths", "6", "16", "--block-length", "8", "--batch", "2", "--rounds", "1"]
KEYS = {
    "sft.py": {
        *("throughput_ratio", "memory_ratio", "max_loss_diff"),
        *(f"{ratio}_v{v}" for ratio in ("throughput_ratio", "memory_ratio") for v in (2048, 256)),
    },
    "dpo.py": {"step_time_ratio", "memory_ratio", "memory_ratio_per_sample_backward", "max_loss_diff"},
    "elbo.py": {
        "throughput_ratio",
        *(f"throughput_ratio_v{v}_b{b}" for v in (1024, 256) for b in (4, 8)),
        "max_rel_diff",
    },
    "sample.py": {
        *("speedup_1024_best", "best_mode", "accuracy_drop_best", "batch8_nfe_ratio"),
        *("outputs_identical_exact", "official_ratio_vocab_32k", "official_ratio_small_vocab"),
        *(f"{k}_16_{mode}" for k in ("speedup", "accuracy", "nfe") for mode in ("exact", "dual_parallel_stop_window")),
        *(f"{k}_{cache}" for k in ("variation_from_uncached", "agreement_with_uncached") for cache in ("dual", "0.9")),
    },
    "models.py": {
        "speed_ratio",
        "memory_ratio",
        *(f"{r}_v{v}" for r in ("speed_ratio", "memory_ratio") for v in (512, 128)),
    },
    "pretrain.py": {"throughput_ratio", "memory_growth_ratio", "baseline_memory_growth_ratio"},
    "fast_dllm_reference.py": {
        "max_logit_diff",
        *(
            f"{k}_{mode}"
            for k in ("ids_identical", "speed_ratio")
            for mode in ("exact", "prefix", "dual", "dual_parallel")
        ),
    },
    "grpo.py": {
        *("step_time_ratio", "rollout_time_ratio", "update_time_ratio", "memory_ratio"),
        *("max_loss_diff", "max_loss_abs_diff"),
    },
    "bd3lm.py": {
        *("train_throughput_ratio", "train_memory_ratio", "sample_speed_ratio", "outputs_identical"),
        *(
            f"{r}_v{v}"
            for r in ("train_throughput_ratio", "train_memory_ratio", "sample_speed_ratio")
            for v in (2048, 256)
        ),
        *("sample_outputs_identical", "max_loss_rel_diff"),
    },
}
NEEDS_DLLM = {"bd3lm.py", "grpo.py"}  # run dllm's own trainers and sampler from the checkout DLLM_DIR names
NEEDS_TRL = {"grpo.py"}  # dllm's GRPO trainer is a TRL 0.19 GRPOTrainer (bench/grpo.py says how to install it)


def missing(script: str) -> str | None:
    """What this machine lacks to run `script`, if anything."""
    if script == "fast_dllm_reference.py" and not os.environ.get("FAST_DLLM_DIR"):
        return "needs a Fast-dLLM checkout (git clone https://github.com/NVlabs/Fast-dLLM) named by FAST_DLLM_DIR"
    if script in NEEDS_DLLM and not os.environ.get("DLLM_DIR"):
        return "needs a dllm checkout (the folder holding the dllm package) named by DLLM_DIR"
    if script in NEEDS_TRL and importlib.util.find_spec("trl") is None:
        return "needs TRL 0.19.1 importable (pip install --no-deps --target <folder> trl==0.19.1; PYTHONPATH)"
    return None


def bench_case(script: str):
    reason = missing(script)
    return pytest.param(script, marks=[pytest.mark.skip(reason=reason)] if reason else [])


def test_every_benchmark_is_covered():
    assert {p.name for p in BENCH.glob("*.py")} - {"common.py"} == set(SMALL)


def run_bench(script: str, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *SMALL[script]],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("LLADA_MODELING_DIR"),
    reason="needs LLaDA's modeling_llada.py and configuration_llada.py in the folder LLADA_MODELING_DIR names",
)
def test_models_bench_runs_llada_own_code_with_our_weights():
    result = run_bench("models.py")
    assert {f"{r}_official_v{v}" for r in ("speed_ratio", "memory_ratio") for v in (512, 128)} <= set(result)
    assert result["max_logit_diff_official"] <= 1e-5  # the same weights give the same logits


@pytest.fixture(scope="module")
def bench_results(request) -> Iterator[dict[str, Future]]:
    """The result lines of the benchmarks this session runs, two at a time (each runs its sides one after the other
    in processes of one thread: CI's two cores run two benchmarks at once), all started by the first test."""
    selected = {
        item.callspec.params["script"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_benchmark_prints_its_result_line"
    }
    runnable = sorted((s for s in selected if not missing(s)), key=lambda s: (s != "pretrain.py", s))  # longest first
    with ThreadPoolExecutor(max_workers=2) as pool:
        workspace = str(request.getfixturevalue("tmp_path_factory").mktemp("bench-workspace"))  # the counting model
        runs = {
            script: pool.submit(run_bench, script, LLADA_MODELING_DIR="", DLM_WORKSPACE=workspace)
            for script in runnable
        }
        yield runs
        for run in runs.values():
            run.cancel()


@pytest.mark.slow
@pytest.mark.parametrize("script", [bench_case(script) for script in sorted(SMALL)])
def test_benchmark_prints_its_result_line(script, bench_results):
    result = bench_results[script].result()
    assert KEYS[script] <= set(result)
    measured = {k: v for k, v in result.items() if v is not None}  # None: not measured at this size
    rates = {k: v for k, v in measured.items() if not isinstance(v, bool | str) and not k.startswith("max_")}
    # a difference from a reference (the elastic cache's from the uncached model) may be 0; every other rate is not
    differences = {k: v for k, v in rates.items() if k.startswith("variation_")}
    assert all(0 <= v <= 1 for v in differences.values())
    assert all(v > 0 for k, v in rates.items() if not k.startswith("accuracy") and k not in differences)
    assert all(0 <= v <= 1 for k, v in rates.items() if k.startswith("accuracy_") and "drop" not in k)
    if "max_loss_diff" in result:
        assert result["max_loss_diff"] <= 1e-5
    if "max_abs_diff" in result:
        assert result["max_abs_diff"] <= 1e-9
    if "max_loss_rel_diff" in result:
        assert result["max_loss_rel_diff"] <= 1e-5
    if "max_rel_diff" in result:
        assert result["max_rel_diff"] <= 1e-6
    if "max_logit_diff" in result:
        assert result["max_logit_diff"] <= 1e-5
    for key in [k for k in result if k.startswith(("outputs_identical", "ids_identical"))]:
        assert result[key] is True, key
