"""LLaDA and Dream samplers: transfer schedule, batching with left padding, no remasking, NFE, settings errors,
guidance, EOS suppression and seeded randomness, on the tiny fixture checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import dlm  # noqa: F401  (registers LLaDA and Dream with the Auto classes)
from dlm.samplers.common import SamplingError
from dlm.samplers.dream import generate_dream
from dlm.samplers.llada import LladaSampler, generate_llada, llada_transfer_counts
from tests.helpers import left_padded

FIXTURES = Path(__file__).parents[1] / "fixtures" / "golden"
PAD = 2  # a token id that is neither mask (3 for LLaDA, 4 for Dream) nor used in the prompts


class Recorder(nn.Module):
    """Passes calls to the model (reachable as `.module`, like a DDP wrapper) and keeps every input canvas."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model
        self.config = model.config
        self.inputs: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        self.inputs.append(input_ids.clone())
        return self.module(input_ids=input_ids, **kwargs)


def _prompts(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 60, (length,), generator=generator) for length in lengths]


def _left_pad(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return left_padded(prompts, PAD)


def _llada(model: nn.Module, prompt: torch.Tensor, **settings: Any) -> Any:
    return generate_llada(model, prompt, mask_id=model.config.mask_token_id, **settings)


def _dream(model: nn.Module, prompt: torch.Tensor, **settings: Any) -> Any:
    return generate_dream(model, prompt, mask_id=model.config.mask_token_id, **settings)


def test_transfer_counts_spread_the_remainder_over_the_first_steps() -> None:
    assert llada_transfer_counts(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    counts = llada_transfer_counts(torch.tensor([10, 3, 0, 8]), 4)
    assert counts.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0], [2, 2, 2, 2]]
    assert counts.sum(-1).tolist() == [10, 3, 0, 8]


LLADA_SETTINGS = [
    {"steps": 12, "gen_length": 12, "block_length": 12},
    {"steps": 8, "gen_length": 16, "block_length": 4},
    {"steps": 5, "gen_length": 12, "block_length": 12},
    {"steps": 6, "gen_length": 12, "block_length": 6, "cfg_scale": 0.5},
]


@pytest.mark.parametrize("settings", LLADA_SETTINGS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_llada_batch_equals_one_prompt_at_a_time(llada: nn.Module, settings: dict[str, Any]) -> None:
    prompts = _prompts([5, 11, 8, 2])
    ids, attention = _left_pad(prompts)
    batched = _llada(llada, ids, attention_mask=attention, **settings)
    for row, prompt in enumerate(prompts):
        alone = _llada(llada, prompt.unsqueeze(0), **settings)
        assert batched.sequences[row, ids.shape[1] - len(prompt) :].tolist() == alone.sequences[0].tolist()
        assert batched.generated_tokens[row] == alone.generated_tokens[0]
    assert batched.nfe == alone.nfe


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])  # origin reveals at random
def test_dream_batch_equals_one_prompt_at_a_time(dream: nn.Module, alg: str) -> None:
    prompts = _prompts([6, 13, 3], seed=1)
    ids, attention = _left_pad(prompts)
    settings = {"steps": 6, "max_new_tokens": 10, "alg": alg}
    batched = _dream(dream, ids, attention_mask=attention, **settings)
    for row, prompt in enumerate(prompts):
        alone = _dream(dream, prompt.unsqueeze(0), **settings)
        assert batched.sequences[row, ids.shape[1] - len(prompt) :].tolist() == alone.sequences[0].tolist()


def _assert_never_remasked(canvases: list[torch.Tensor], final: torch.Tensor, mask_id: int) -> None:
    history = [*canvases, final]
    for before, after in zip(history, history[1:], strict=False):
        revealed = before != mask_id
        assert torch.equal(after[revealed], before[revealed]), "a revealed token changed or was masked again"
    assert not bool((final == mask_id).any()), "masks left in the output"


@pytest.mark.parametrize(
    "settings",
    [
        {"steps": 8, "gen_length": 16, "block_length": 4},
        {"steps": 16, "gen_length": 16, "block_length": 16, "remasking": "random", "temperature": 1.0},
    ],
)
def test_llada_never_remasks_and_counts_forward_passes(llada: nn.Module, settings: dict[str, Any]) -> None:
    ids, attention = _left_pad(_prompts([4, 7]))
    recorder = Recorder(llada)
    out = _llada(recorder, ids, attention_mask=attention, generator=torch.Generator().manual_seed(0), **settings)
    assert out.nfe == len(recorder.inputs) == settings["steps"]
    _assert_never_remasked(recorder.inputs, out.sequences, llada.config.mask_token_id)
    # each step reveals its scheduled count, inside the current block only
    block, per_block = settings["block_length"], settings["steps"] * settings["block_length"] // settings["gen_length"]
    history = [*recorder.inputs, out.sequences]
    for step, (before, after) in enumerate(zip(history, history[1:], strict=False)):
        changed = (before != after).nonzero()
        start = ids.shape[1] + (step // per_block) * block
        assert ((changed[:, 1] >= start) & (changed[:, 1] < start + block)).all()
        assert (before != after).sum(-1).tolist() == [block // per_block] * 2


def test_llada_skips_steps_with_nothing_to_reveal(llada: nn.Module) -> None:
    prompt = _prompts([5])[0].unsqueeze(0)
    recorder = Recorder(llada)
    out = _llada(recorder, prompt, steps=8, gen_length=4, block_length=4)
    assert out.nfe == len(recorder.inputs) == 4
    assert out.sequences.tolist() == _llada(llada, prompt, steps=4, gen_length=4, block_length=4).sequences.tolist()


def test_llada_guidance_batches_both_passes(llada: nn.Module) -> None:
    ids, attention = _left_pad(_prompts([4, 6]))
    recorder = Recorder(llada)
    out = _llada(recorder, ids, attention_mask=attention, steps=4, gen_length=8, block_length=4, cfg_scale=1.0)
    assert out.nfe == 8 and len(recorder.inputs) == 4
    for canvas in recorder.inputs:
        assert canvas.shape[0] == 4
        assert (canvas[2:, : ids.shape[1]] == llada.config.mask_token_id).all(), "prompt not masked in the 2nd pass"
        assert torch.equal(canvas[2:, ids.shape[1] :], canvas[:2, ids.shape[1] :])
    plain = _llada(llada, ids, attention_mask=attention, steps=4, gen_length=8, block_length=4)
    assert not torch.equal(out.sequences, plain.sequences)


@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy", "origin"])
def test_dream_never_remasks(dream: nn.Module, alg: str) -> None:
    ids, attention = _left_pad(_prompts([5, 9], seed=2))
    recorder = Recorder(dream)
    out = _dream(
        recorder,
        ids,
        attention_mask=attention,
        steps=5,
        max_new_tokens=10,
        alg=alg,
        temperature=0.7,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.nfe == len(recorder.inputs) <= 5
    _assert_never_remasked(recorder.inputs, out.sequences, dream.config.mask_token_id)


def test_dream_reveals_int_masks_times_one_minus_s_over_t(dream: nn.Module) -> None:
    prompt = _prompts([6])[0].unsqueeze(0)
    recorder = Recorder(dream)
    out = _dream(recorder, prompt, steps=4, max_new_tokens=10, alg="maskgit_plus")
    masks_left = [int((canvas == dream.config.mask_token_id).sum()) for canvas in [*recorder.inputs, out.sequences]]
    # t = 1, 0.75025, 0.5005, 0.25075, 0.001: int(10 * 0.24975) = 2, int(8 * 0.3329) = 2, int(6 * 0.49900) = 2, rest
    assert masks_left == [10, 8, 6, 4, 0]
    assert out.nfe == 4


def test_generated_token_counts_skip_eos(llada: nn.Module) -> None:
    prompt = _prompts([5])[0].unsqueeze(0)
    out = _llada(llada, prompt, steps=16, gen_length=16, block_length=16)
    generated = out.sequences[0, 5:]
    frequent = int(generated.mode().values)
    counted = _llada(llada, prompt, steps=16, gen_length=16, block_length=16, eos_id=frequent)
    assert out.generated_tokens.tolist() == [16]
    assert counted.generated_tokens.tolist() == [int((generated != frequent).sum())]


def test_llada_suppresses_eos_in_logits(llada: nn.Module) -> None:
    prompt = _prompts([5])[0].unsqueeze(0)
    settings = {"steps": 16, "gen_length": 16, "block_length": 16}
    plain = _llada(llada, prompt, **settings).sequences[0, 5:]
    eos = int(plain.mode().values)
    suppressed = _llada(llada, prompt, eos_id=eos, suppress_eos_in_logits=True, **settings).sequences[0, 5:]
    assert not bool((suppressed == eos).any())


def test_llada_reveals_suppressed_eos_last(llada: nn.Module) -> None:
    prompt = _prompts([5])[0].unsqueeze(0)
    settings = {"steps": 16, "gen_length": 16, "block_length": 16}
    eos = int(_llada(llada, prompt, **settings).sequences[0, 5:].mode().values)
    recorder = Recorder(llada)
    out = _llada(recorder, prompt, eos_id=eos, suppress_eos_in_confidence=True, **settings)
    mask_id = llada.config.mask_token_id
    history = [*recorder.inputs, out.sequences]
    revealed_eos = 0
    for before, after in zip(history, history[1:], strict=False):
        (position,) = (before != after).nonzero()[:, 1].tolist()
        if int(after[0, position]) == eos:
            revealed_eos += 1
            with torch.no_grad():
                choices = llada(before).logits[0].argmax(-1)
            # an EOS is revealed only when every masked position would also get EOS
            assert (choices[before[0] == mask_id] == eos).all()
    assert revealed_eos > 0


@pytest.mark.parametrize(
    "settings",
    [
        {"remasking": "random"},
        {"temperature": 0.8},
        {"temperature": 1.0, "remasking": "random", "cfg_scale": 0.5},
    ],
)
def test_llada_randomness_is_seeded(llada: nn.Module, settings: dict[str, Any]) -> None:
    ids, attention = _left_pad(_prompts([4, 7, 5]))

    def run(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return _llada(
            llada,
            ids,
            attention_mask=attention,
            steps=8,
            gen_length=16,
            block_length=8,
            generator=generator,
            **settings,
        ).sequences

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize(
    "settings",
    [
        {"alg": "origin", "temperature": 0.0},
        {"alg": "entropy", "temperature": 1.0, "top_p": 0.9},
        {"alg": "maskgit_plus", "temperature": 0.7, "top_k": 5},
        {"alg": "topk_margin", "temperature": 0.0, "alg_temp": 0.5},
    ],
)
def test_dream_randomness_is_seeded(dream: nn.Module, settings: dict[str, Any]) -> None:
    ids, attention = _left_pad(_prompts([4, 7, 5], seed=3))

    def run(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return _dream(
            dream, ids, attention_mask=attention, steps=8, max_new_tokens=16, generator=generator, **settings
        ).sequences

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize("keep_one", [{"top_k": 1}, {"top_p": 1e-6}])
def test_dream_sampling_respects_top_k_and_top_p(dream: nn.Module, keep_one: dict[str, Any]) -> None:
    prompt = _prompts([6], seed=4)[0].unsqueeze(0)
    settings = {"steps": 5, "max_new_tokens": 10, "alg": "maskgit_plus", **keep_one}
    # the filters apply at temperature 0 too (they change the confidences), so compare with that
    greedy = _dream(dream, prompt, **settings).sequences
    assert not torch.equal(greedy, _dream(dream, prompt, steps=5, max_new_tokens=10, alg="maskgit_plus").sequences)
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        sampled = _dream(dream, prompt, temperature=1.0, generator=generator, **settings).sequences
        assert torch.equal(sampled, greedy)


def test_bad_block_length_says_which_would_work(llada: nn.Module) -> None:
    prompt = _prompts([3])[0].unsqueeze(0)
    with pytest.raises(SamplingError, match=r"block_length=4 must divide gen_length=10; .*: 1, 2, 5, 10"):
        _llada(llada, prompt, steps=10, gen_length=10, block_length=4)


def test_bad_steps_say_which_would_work(llada: nn.Module) -> None:
    prompt = _prompts([3])[0].unsqueeze(0)
    with pytest.raises(
        SamplingError,
        match=r"steps=6 must be a positive multiple of the number of blocks, .* 16/4 = 4: use steps=4 or steps=8",
    ):
        _llada(llada, prompt, steps=6, gen_length=16, block_length=4)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"remasking": "lowest"}, "remasking='lowest' is unknown; choose one of: low_confidence, random"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"cfg_scale": -0.5}, "cfg_scale must be >= 0"),
        ({"suppress_eos_in_logits": True}, "needs eos_id"),
    ],
)
def test_llada_settings_errors(llada: nn.Module, settings: dict[str, Any], message: str) -> None:
    prompt = _prompts([3])[0].unsqueeze(0)
    with pytest.raises(SamplingError, match=message):
        _llada(llada, prompt, **{"steps": 4, "gen_length": 4, "block_length": 4, **settings})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"alg": "greedy"}, "alg='greedy' is unknown; choose one of: origin, maskgit_plus, topk_margin, entropy"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"eps": 0.0}, "eps"),
        ({"steps": 0}, "steps must be at least 1"),
    ],
)
def test_dream_settings_errors(dream: nn.Module, settings: dict[str, Any], message: str) -> None:
    prompt = _prompts([3])[0].unsqueeze(0)
    with pytest.raises(SamplingError, match=message):
        _dream(dream, prompt, **{"steps": 4, "max_new_tokens": 4, **settings})


def test_prompt_errors(llada: nn.Module) -> None:
    ids, attention = _left_pad(_prompts([3, 5]))
    with pytest.raises(SamplingError, match="left-padded"):
        _llada(llada, ids, attention_mask=attention.flip(-1), steps=4, gen_length=4, block_length=4)
    ids[1, 2] = llada.config.mask_token_id
    with pytest.raises(SamplingError, match="prompt row 1 holds the mask token id 3 at position 2"):
        _llada(llada, ids, attention_mask=attention, steps=4, gen_length=4, block_length=4)


def test_growing_canvas_equals_chunk_by_chunk_runs(llada: nn.Module) -> None:
    """Growing by 4 over 12 tokens is three 4-token runs, each with the previous answer appended to the prompt
    (no end token in these ids, so it never stops early); the model never sees masks past the current chunk."""
    prompt = _prompts([5])[0].unsqueeze(0)
    recorder = Recorder(llada)
    grown = _llada(recorder, prompt, steps=6, gen_length=12, block_length=12, grow_canvas=4, eos_id=99)
    expected = prompt
    for _ in range(3):
        expected = _llada(llada, expected, steps=2, gen_length=4, block_length=4).sequences
    assert torch.equal(grown.sequences, expected)
    assert grown.nfe == 6
    assert [canvas.shape[1] for canvas in recorder.inputs] == [9, 9, 13, 13, 17, 17]


def test_growing_canvas_stops_each_row_once_its_answer_has_ended(llada: nn.Module) -> None:
    """Made the end token, the first generated token ends the answer the step it is revealed: the run stops there
    (its forward passes are those of the full run up to that step) and fills the rest with the end token."""
    prompt = _prompts([5])[0].unsqueeze(0)
    canvases: list[torch.Tensor] = []
    sampler = LladaSampler(steps=6, gen_length=12, block_length=12, grow_canvas=4)
    first = sampler.sample(
        llada, prompt, mask_id=llada.config.mask_token_id, eos_id=99, on_step=lambda x, *_: canvases.append(x.clone())
    )
    end_token = int(first.sequences[0, 5])
    revealed_at = next(i for i, canvas in enumerate(canvases) if canvas[0, 5] != llada.config.mask_token_id) + 1
    out = _llada(llada, prompt, steps=6, gen_length=12, block_length=12, grow_canvas=4, eos_id=end_token)
    assert out.nfe == revealed_at < first.nfe
    assert torch.equal(out.sequences[0, :6], first.sequences[0, :6])
    assert out.sequences[0, 6:].tolist() == [end_token] * 11


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": 12, "grow_canvas": 5}, r"grow_canvas=5 must divide gen_length=12; .*: 1, 2, 3, 4, 6, 12"),
        ({"steps": 4, "grow_canvas": 2}, r"steps=4 must be a multiple of gen_length/grow_canvas = 6 .*steps=6"),
        ({"steps": 12, "grow_canvas": -1}, r"grow_canvas must be >= 0"),
    ],
)
def test_bad_growth_says_what_would_work(llada: nn.Module, settings: dict[str, Any], message: str) -> None:
    prompt = _prompts([3])[0].unsqueeze(0)
    with pytest.raises(SamplingError, match=message):
        _llada(llada, prompt, gen_length=12, block_length=12, eos_id=99, **settings)
