"""Our LLaDA sampler against NVIDIA's Fast-dLLM (`llada/generate.py`, https://github.com/NVlabs/Fast-dLLM) on the same
random tiny LLaDA: identical token ids in the four modes both implement (exact, prefix cache, dual cache, dual cache
with threshold 0.9), at batch 1 and at batch 8 (Fast-dLLM decodes one prompt per call: its rows are decoded one by
one). Fast-dLLM is loaded as bench/fast_dllm_reference.py describes, from the checkout that FAST_DLLM_DIR names;
without one every test skips."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "fast_dllm_reference.py"
MODES = ("exact", "prefix", "dual", "dual_parallel")
PROMPT_LENGTH = 12


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    if not os.environ.get("FAST_DLLM_DIR"):
        pytest.skip("needs a Fast-dLLM checkout (git clone https://github.com/NVlabs/Fast-dLLM) named by FAST_DLLM_DIR")
    spec = importlib.util.spec_from_file_location("fast_dllm_reference", BENCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def decoders(bench: ModuleType):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: one thread is as fast, and the machine may be shared
    fast_dllm = bench.load_fast_dllm(os.environ["FAST_DLLM_DIR"])
    ours = bench.random_llada(vocab=1024, d_model=128, layers=2, heads=4, head_scale=64.0, seed=0)
    yield bench.Decoders(ours, bench.reference_model(fast_dllm, ours), fast_dllm)
    torch.set_num_threads(threads)


def prompts(bench: ModuleType, batch: int) -> torch.Tensor:
    return bench.random_prompts(batch, PROMPT_LENGTH, mask_id=1023, seed=1)


def test_the_bench_compares_these_modes(bench):
    assert tuple(bench.MODES) == MODES


def test_fast_dllm_model_has_our_logits(bench, decoders):
    assert bench.max_logit_diff(decoders, prompts(bench, 2)) <= 1e-5


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize(("gen_length", "block_length"), [(6, 3), (16, 8)])
@pytest.mark.parametrize("mode", MODES)
def test_token_ids_are_fast_dllm_ones(bench, decoders, mode, gen_length, block_length, batch):
    ids = prompts(bench, batch)
    ours, _ = decoders.ours(mode, ids, gen_length, block_length)
    reference, _ = decoders.reference(mode, ids, gen_length, block_length)
    assert ours.shape == (batch, PROMPT_LENGTH + gen_length)
    assert torch.equal(ours[:, :PROMPT_LENGTH], ids)
    assert torch.equal(ours, reference)


def test_threshold_reveals_several_tokens_at_a_step(bench, decoders):
    """The scaled head makes the 0.9 threshold fire on both sides, so dual_parallel checks more than dual does."""
    ids = prompts(bench, 8)
    for side in (decoders.ours, decoders.reference):
        _, nfe_dual = side("dual", ids[:1], 16, 8)
        _, nfe_parallel = side("dual_parallel", ids[:1], 16, 8)
        assert nfe_parallel < nfe_dual == 16


def test_the_four_modes_decode_differently(bench, decoders):
    """The caches' approximations and the threshold change these outputs, so matching one mode is not matching
    another: a sampler that fell back to the exact loop (or ignored the threshold) would fail the comparison."""
    ids = prompts(bench, 8)
    outputs = [decoders.reference(mode, ids, 16, 8)[0] for mode in MODES]
    assert not any(torch.equal(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1 :])
