"""SDAR's sampler: token ids identical to the official `generate.py` (golden fixture `sdar-tiny`), its settings
checks, and a tiny SDAR preset answering through `dlm.generation`."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import dlm  # noqa: F401  (registers SDAR with the Auto classes)
from dlm.families import get_family
from dlm.generation import SamplerSettings, answer, build_sampler, check_decoding_settings, in_blocks
from dlm.loading import load_model_and_tokenizer
from dlm.samplers.common import SamplingError
from dlm.samplers.sdar import SDARSampler, filter_top_k, filter_top_p, sdar_transfer_counts

FIXTURE = Path(__file__).parents[1] / "fixtures" / "golden" / "sdar-tiny"
SPEC = json.loads((FIXTURE / "golden.json").read_text())
SDAR = get_family("sdar")


@functools.cache
def tensors() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "golden.safetensors")


@functools.cache
def model(attn_implementation: str = "sdpa") -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(FIXTURE, attn_implementation=attn_implementation).eval()


def run_case(case: dict, attn_implementation: str = "sdpa"):
    prompt = tensors()[case["prompt_ids"]]
    keep = torch.zeros_like(prompt)
    for row, length in enumerate(case["prompt_lengths"]):
        keep[row, prompt.shape[1] - length :] = 1
    blocks = case["gen_length"] // case["block_length"]
    sampler = SDARSampler(
        steps=case["denoising_steps"] * blocks,
        gen_length=case["gen_length"],
        block_length=case["block_length"],
        remasking="sequential" if case["remasking_strategy"] == "sequential" else "low_confidence",
        confidence_threshold=case["confidence_threshold"],
    )
    stop = case["stop_ids"]
    return sampler.sample(
        model(attn_implementation),
        prompt,
        mask_id=SPEC["block_sample"]["mask_id"],
        attention_mask=None if bool(keep.all()) else keep,
        eos_id=stop[0] if stop else None,
    )


@pytest.mark.parametrize("case", SPEC["block_sample"]["cases"], ids=lambda c: f"case{c['case']}")
def test_matches_generate_py(case):
    out = run_case(case)
    assert torch.equal(out.sequences, tensors()[case["output"]])


def test_eager_attention_gives_the_same_ids():
    case = SPEC["block_sample"]["cases"][7]  # a padded batch with the dynamic threshold
    assert torch.equal(run_case(case, "eager").sequences, tensors()[case["output"]])


def test_stopping_fills_after_the_block_that_ended():
    case = next(c for c in SPEC["block_sample"]["cases"] if c["stop_ids"])
    stop, block = case["stop_ids"][0], case["block_length"]
    out = run_case(case)
    generated = out.sequences[0, -case["gen_length"] :]
    tail = case["prompt_lengths"][0] % block  # the prompt's tokens in the first decoded block
    first = int((generated == stop).nonzero()[0])
    block_end = -(-(tail + first + 1) // block) * block - tail  # end of the block holding the first stop token
    assert block_end < case["gen_length"] and bool((generated[block_end:] == stop).all())
    unstopped = run_case({**case, "stop_ids": None})
    assert out.nfe < unstopped.nfe and torch.equal(unstopped.sequences[0, -case["gen_length"] :][:block_end],
                                                   generated[:block_end])  # fmt: skip


def test_transfer_counts_and_filters():
    assert sdar_transfer_counts(4, 4) == [1, 1, 1, 1]
    assert sdar_transfer_counts(4, 3) == [2, 1, 1]
    assert sdar_transfer_counts(8, 3) == [3, 3, 2]
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [[False, True, False, True]]
    # probabilities 0.64, 0.24, 0.09, 0.03: the smallest set above 0.7 is the first two
    assert torch.isinf(filter_top_p(logits, 0.7)).tolist() == [[False, True, False, True]]
    assert torch.equal(filter_top_p(logits, 1.0), logits) and torch.equal(filter_top_k(logits, None), logits)


def test_settings_are_checked_once():
    sampler = build_sampler(SDAR, SamplerSettings(steps=8, max_new_tokens=8, block_length=4))
    assert isinstance(sampler, SDARSampler) and sampler.denoising_steps == 4 and in_blocks(SDAR, SamplerSettings())
    dynamic = SamplerSettings(steps=8, max_new_tokens=8, block_length=4, parallel_threshold=0.9)
    assert build_sampler(SDAR, dynamic).confidence_threshold == 0.9
    with pytest.raises(SamplingError, match="remasking='random'"):
        build_sampler(SDAR, SamplerSettings(remasking="random"))
    with pytest.raises(SamplingError, match="cache='prefix'"):
        check_decoding_settings(SDAR, SamplerSettings(cache="prefix"))
    with pytest.raises(SamplingError, match="block_length=3 must divide"):
        build_sampler(SDAR, SamplerSettings(max_new_tokens=8, block_length=3))
    with pytest.raises(SamplingError, match="parallel_threshold applies"):
        SDARSampler(steps=4, gen_length=4, block_length=4, remasking="sequential", confidence_threshold=0.5)


def test_tiny_preset_answers_through_generation(preset_workspace):
    loaded = load_model_and_tokenizer("tiny-sdar", workspace=preset_workspace)
    assert loaded.family is SDAR and type(loaded.model).__name__ == "SDARForCausalLM"
    assert loaded.model.config.block_size == SDAR.block_size
    settings = SamplerSettings(steps=8, max_new_tokens=8, block_length=4)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]
    texts = answer(loaded.model.eval(), loaded.tokenizer, SDAR, loaded.special_ids, prompts, settings)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_official_generate_py_drives_our_model(monkeypatch):
    """With `SDAR_DIR` naming a checkout of github.com/JetAstra/SDAR: its `generate.py` (which imports only torch
    and transformers) decodes with our model (its 3-D float masks, `store_kv`) to the golden ids."""
    import importlib.util
    import os

    if not os.environ.get("SDAR_DIR"):
        pytest.skip("set SDAR_DIR to a checkout of JetAstra/SDAR to run its generate.py on our model")
    spec = importlib.util.spec_from_file_location("sdar_generate", Path(os.environ["SDAR_DIR"]) / "generate.py")
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)

    def greedy(logits, temperature=1.0, top_k=0, top_p=1.0):  # the fixture's rule at temperature 0
        tokens = logits.argmax(-1)
        return tokens, torch.softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    monkeypatch.setattr(official, "sample_with_temperature_topk_topp", greedy)
    case = SPEC["block_sample"]["cases"][2]  # one row, dynamic threshold, prompt ending inside a block
    prompt = tensors()[case["prompt_ids"]]
    out = official.block_diffusion_generate(
        model(),
        prompt={"input_ids": prompt},
        mask_id=SPEC["block_sample"]["mask_id"],
        gen_length=case["gen_length"],
        block_length=case["block_length"],
        denoising_steps=case["denoising_steps"],
        temperature=0.0,
        remasking_strategy=case["remasking_strategy"],
        confidence_threshold=case["confidence_threshold"],
    )
    assert torch.equal(out[:, : tensors()[case["output"]].shape[1]], tensors()[case["output"]])


def test_sampling_path_with_top_k_one_is_greedy_and_seeded_runs_repeat():
    """Sequential remasking does not rank by confidence, so sampling from the top-1 token is the greedy decode."""
    case = SPEC["block_sample"]["cases"][4]  # sequential
    prompt, mask_id = tensors()[case["prompt_ids"]], SPEC["block_sample"]["mask_id"]
    settings = {"steps": 4, "gen_length": 8, "block_length": 4, "remasking": "sequential"}
    sampled = SDARSampler(temperature=0.7, top_k=1, **settings).sample(model(), prompt, mask_id=mask_id)
    assert torch.equal(sampled.sequences, tensors()[case["output"]])
    runs = [
        SDARSampler(temperature=1.0, top_p=0.9, **settings).sample(
            model(), prompt, mask_id=mask_id, generator=torch.Generator().manual_seed(seed)
        )
        for seed in (1, 1, 2)
    ]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert not bool((runs[0].sequences == mask_id).any())


def test_on_step_sees_every_denoising_pass():
    case = SPEC["block_sample"]["cases"][0]  # prompt of two full blocks, 8 tokens in 2 blocks of 4 passes
    seen: list[tuple[int, int, int]] = []
    sampler = SDARSampler(steps=8, gen_length=8, block_length=4)

    def record(canvas: torch.Tensor, step: int, block: int) -> None:
        seen.append((step, block, int((canvas == SPEC["block_sample"]["mask_id"]).sum())))

    out = sampler.sample(
        model(), tensors()[case["prompt_ids"]], mask_id=SPEC["block_sample"]["mask_id"], on_step=record
    )
    assert seen == [(s, b, 8 - 4 * b - s - 1) for b in range(2) for s in range(4)]
    assert out.nfe == 1 + 2 * 5 and torch.equal(out.sequences, tensors()[case["output"]])
