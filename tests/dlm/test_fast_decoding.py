"""Fast decoding on the tiny golden checkpoints: LLaDA's and Dream's key/value cache (a replayed span equals the
uncached pass on the recorded canvas, and really reads the cache), the cached samplers (every refresh is the uncached
pass; with one step per block they are exact), the parallel threshold (against a brute-force recomputation),
suppressed tokens, infilling, stochastic transfer counts, the settings' plumbing and bad settings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForMaskedLM

import dlm  # noqa: F401  (registers LLaDA and Dream with the Auto classes)
from dlm.eval_config import EvaluatorConfig
from dlm.evaluation.checks import check_sampler_settings
from dlm.families import get_family
from dlm.families.special_ids import SpecialIds
from dlm.forward import logits_at_positions
from dlm.generation import SamplerSettings, generate
from dlm.lm_eval.model import settings_for_length
from dlm.metrics.result import EvaluationError
from dlm.models.cache import CanvasCache
from dlm.samplers.common import SamplingError, masked_canvas
from dlm.samplers.dream import generate_dream
from dlm.samplers.llada import LladaSampler, generate_llada, llada_transfer_counts
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft
from plugin_sdk.params import ParameterError, coerce_and_validate
from tests.helpers import Reporter, tiny_run

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "golden"
PAD = 2


@pytest.fixture(scope="module")
def models(llada: nn.Module, dream: nn.Module) -> dict[str, nn.Module]:
    return {"llada": llada, "dream": dream}


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded prompts of lengths 7, 4 and 6."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (3, 7), generator=generator)
    attention = torch.ones_like(ids)
    for row, pad in enumerate((0, 3, 1)):
        ids[row, :pad], attention[row, :pad] = PAD, 0
    return ids, attention


def _sample(model: nn.Module, family: str, **settings: Any) -> Any:
    ids, attention = _batch()
    common = {"attention_mask": attention, "mask_id": model.config.mask_token_id}
    if family == "llada":
        return generate_llada(model, ids, **common, **settings)
    length = settings.pop("gen_length")
    return generate_dream(model, ids, max_new_tokens=length, alg="entropy", **common, **settings)


class Spy(nn.Module):
    """Passes calls to the model (reachable as `.module`, like a DDP wrapper); keeps every call's input canvas,
    whether it recorded a cache, and the logits it returned."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model
        self.config = model.config
        self.calls: list[dict[str, Any]] = []

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        cache = kwargs.get("past_key_values")
        refresh = cache is None or not cache.filled
        output = self.module(input_ids=input_ids, **kwargs)
        self.calls.append({"ids": input_ids.clone(), "refresh": refresh, "logits": output.logits.clone()})
        return output


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("span", [(7, 11), (7, 15)], ids=["dual", "prefix"])
def test_replayed_span_logits_equal_uncached(models: dict[str, nn.Module], family: str, span: tuple[int, int]) -> None:
    model = models[family]
    ids, attention = _batch()
    canvas = torch.cat([ids, torch.randint(5, 60, (3, 8))], dim=1)
    canvas[:, 9:13] = model.config.mask_token_id
    with torch.no_grad():
        uncached = model(canvas, attention_mask=attention_mask(attention, 8)).logits
        cache = CanvasCache()
        recorded = model(canvas, attention_mask=attention_mask(attention, 8), past_key_values=cache).logits
        cache.span_start = span[0]
        replayed = model(
            canvas[:, span[0] : span[1]], attention_mask=attention_mask(attention, 8), past_key_values=cache
        ).logits
    torch.testing.assert_close(recorded, uncached, rtol=0, atol=0)
    torch.testing.assert_close(replayed, uncached[:, span[0] : span[1]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_rows_replay_spans_at_their_own_starts(models: dict[str, nn.Module], family: str) -> None:
    """Per-row span starts (rows decoding different blocks): each row's replayed logits equal the uncached ones at
    its own span."""
    model = models[family]
    ids, attention = _batch()
    canvas = torch.cat([ids, torch.randint(5, 60, (3, 12))], dim=1)
    canvas[:, 9:17] = model.config.mask_token_id
    starts = torch.tensor([7, 11, 9])
    full_mask = attention_mask(attention, 12)
    with torch.no_grad():
        uncached = model(canvas, attention_mask=full_mask).logits
        cache = CanvasCache()
        model(canvas, attention_mask=full_mask, past_key_values=cache)
        cache.span_start = starts
        spans = canvas.gather(1, starts[:, None] + torch.arange(4))
        replayed = model(spans, attention_mask=full_mask, past_key_values=cache).logits
    for row, start in enumerate(starts.tolist()):
        torch.testing.assert_close(replayed[row], uncached[row, start : start + 4], rtol=1e-5, atol=1e-5)


def attention_mask(prompt_mask: torch.Tensor, generated: int) -> torch.Tensor:
    return torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], generated)], dim=1)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_replay_reads_the_cached_keys(models: dict[str, nn.Module], family: str) -> None:
    """Outside the span, the replay sees the recorded canvas, not the tokens it is given."""
    model = models[family]
    canvas = torch.randint(5, 60, (1, 16), generator=torch.Generator().manual_seed(0))
    changed = canvas.clone()
    changed[:, 8:] = (canvas[:, 8:] + 1) % 60
    with torch.no_grad():
        cache = CanvasCache()
        model(canvas, past_key_values=cache)
        cache.span_start = 4
        stale = model(changed[:, 4:8], past_key_values=cache).logits
        before, after = model(canvas).logits[:, 4:8], model(changed).logits[:, 4:8]
    torch.testing.assert_close(stale, before, rtol=1e-5, atol=1e-5)
    assert (stale - after).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_sampler_refreshes_each_block_with_the_uncached_pass(
    models: dict[str, nn.Module], family: str, cache: str
) -> None:
    model = models[family]
    spy = Spy(model)
    out = _sample(spy, family, steps=8, gen_length=8, block_length=4, cache=cache)
    refreshes = [call for call in spy.calls if call["refresh"]]
    assert len(refreshes) == 2 and len(spy.calls) == out.nfe
    for block, call in enumerate(refreshes):  # the pass after each refresh sees the whole canvas...
        start = 7 + 4 * block
        positions = torch.zeros_like(call["ids"], dtype=torch.bool)
        positions[:, start : start + 4] = True
        mask = attention_mask(_batch()[1], 8)
        with torch.no_grad():
            expected = logits_at_positions(model, call["ids"], mask, positions, shift=family == "dream")
        torch.testing.assert_close(call["logits"], expected, rtol=0, atol=0)
    shift = int(family == "dream")  # ...and the others only the span the cache mode recomputes
    widths = {call["ids"].shape[1] for call in spy.calls if not call["refresh"]}
    assert widths == ({4 + shift} if cache == "dual" else {8 + shift, 4 + shift})


@pytest.mark.parametrize(
    ("family", "guidance"), [("llada", {}), ("llada", {"cfg_scale": 0.5}), ("dream", {})], ids=["llada", "cfg", "dream"]
)
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_step_per_block_is_exact_with_a_cache(
    models: dict[str, nn.Module], family: str, guidance: dict[str, float], cache: str
) -> None:
    settings = {"steps": 4, "gen_length": 16, "block_length": 4, **guidance}
    exact = _sample(models[family], family, **settings)
    cached = _sample(models[family], family, cache=cache, **settings)
    assert torch.equal(cached.sequences, exact.sequences) and cached.nfe == exact.nfe == (8 if guidance else 4)


def _block_argmax(model: nn.Module, family: str, gen_length: int, block_length: int) -> torch.Tensor:
    """Brute force: every block takes the argmax of one plain forward pass over the canvas so far."""
    ids, attention = _batch()
    mask_id, shift = model.config.mask_token_id, int(family == "dream")
    canvas = torch.cat([ids, ids.new_full((3, gen_length), mask_id)], dim=1)
    with torch.no_grad():
        for start in range(7, 7 + gen_length, block_length):
            logits = model(canvas, attention_mask=attention_mask(attention, gen_length)).logits
            canvas[:, start : start + block_length] = logits[:, start - shift : start + block_length - shift].argmax(-1)
    return canvas


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_threshold_everyone_passes_fills_each_block_in_one_pass(models: dict[str, nn.Module], family: str) -> None:
    out = _sample(models[family], family, steps=12, gen_length=12, block_length=4, parallel_threshold=1e-9)
    assert out.nfe == 3
    assert torch.equal(out.sequences, _block_argmax(models[family], family, 12, 4))


def test_threshold_reveals_every_confident_position_and_the_schedule(dream: nn.Module) -> None:
    """Brute force on each step's canvas: the step reveals every masked position whose chosen token's
    probability reaches the threshold, and at least one."""
    spy = Spy(dream)
    threshold = 0.3
    out = _sample(spy, "dream", steps=12, gen_length=12, block_length=12, parallel_threshold=threshold)
    exact = _sample(dream, "dream", steps=12, gen_length=12, block_length=12)
    canvases = [call["ids"] for call in spy.calls] + [out.sequences]
    confident_steps = 0
    for before, after in zip(canvases, canvases[1:], strict=False):
        masked = before[:, 7:] == dream.config.mask_token_id
        with torch.no_grad():
            probs = dream(before, attention_mask=attention_mask(_batch()[1], 12)).logits[:, 6:-1].softmax(-1)
        confident = masked & (probs.max(-1).values >= threshold)
        revealed = masked & (after[:, 7:] != dream.config.mask_token_id)
        assert bool((revealed | ~confident).all()), "a confident position stayed masked"
        assert bool((revealed.sum(-1) >= masked.any(-1).long()).all()), "a step revealed nothing"
        confident_steps += int(confident.any())
    assert confident_steps > 0 and out.nfe < exact.nfe


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_suppressed_tokens_are_never_chosen(models: dict[str, nn.Module], family: str) -> None:
    exact = _sample(models[family], family, steps=8, gen_length=8, block_length=8)
    common = torch.mode(exact.sequences[:, 7:].flatten()).values.item()
    out = _sample(models[family], family, steps=8, gen_length=8, block_length=8, suppress_tokens=[common])
    assert not bool((out.sequences[:, 7:] == common).any())


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_infilled_tokens_stay_and_only_masks_are_generated(models: dict[str, nn.Module], family: str) -> None:
    mask_id = models[family].config.mask_token_id
    infill = torch.full((3, 8), mask_id)
    infill[:, [1, 5]] = torch.tensor([[11, 12], [13, 14], [15, 16]])
    spy = Spy(models[family])
    out = _sample(spy, family, steps=8, gen_length=8, block_length=8, infill=infill)
    assert torch.equal(spy.calls[0]["ids"][:, 7:], infill)
    assert torch.equal(out.sequences[:, 7:][:, [1, 5]], infill[:, [1, 5]])
    assert not bool((out.sequences == mask_id).any())
    if family == "llada":
        assert out.nfe == 6  # 6 masks over 8 steps: one per step, then 2 steps with nothing to do


def test_stochastic_transfer_counts_are_seeded_and_finish_each_block(llada: nn.Module) -> None:
    def run(seed: int) -> tuple[torch.Tensor, list[list[int]]]:
        """The sequences and each row's reveal counts, step by step (rows advance on their own)."""
        generator = torch.Generator().manual_seed(seed)
        prompt, attention = _batch()
        sampler = LladaSampler(steps=8, gen_length=16, block_length=8, stochastic_transfer=True)
        canvases = [masked_canvas(prompt, 16, llada.config.mask_token_id, None)]
        out = sampler.sample(
            llada,
            prompt,
            mask_id=llada.config.mask_token_id,
            attention_mask=attention,
            generator=generator,
            on_step=lambda x, *_: canvases.append(x.clone()),
        )
        masks = torch.stack([(c[:, 7:] == llada.config.mask_token_id).sum(-1) for c in canvases])
        return out.sequences, [[int(d) for d in column if d] for column in (masks[:-1] - masks[1:]).T]

    sequences, counts = run(0)
    assert torch.equal(run(0)[0], sequences)
    assert not bool((sequences == llada.config.mask_token_id).any())
    schedule = llada_transfer_counts(torch.tensor([8]), 4)[0].tolist()  # [2, 2, 2, 2] per block, deterministic
    assert all(sum(row) == 16 for row in counts)
    assert any(row != schedule * 2 for row in counts), "the counts never left the deterministic schedule"
    assert {run(seed)[1].__repr__() for seed in (1, 2, 3)}.__len__() > 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"parallel_threshold": 0.0}, "parallel_threshold must be in (0, 1]"),
        ({"parallel_threshold": 1.5}, "parallel_threshold must be in (0, 1]"),
        ({"cache": "full"}, "cache='full' is unknown; choose one of: none, prefix, dual"),
        ({"block_length": 3}, "block_length=3 must divide"),
    ],
)
def test_bad_decoding_settings(llada: nn.Module, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(SamplingError, match=message.replace("(", r"\(").replace("[", r"\[")):
        _sample(llada, "llada", **{"steps": 8, "gen_length": 8, "block_length": 4, **settings})


def test_dream_threshold_needs_a_ranked_algorithm(dream: nn.Module) -> None:
    ids, _ = _batch()
    with pytest.raises(SamplingError, match="alg='origin' reveals positions at random"):
        generate_dream(dream, ids, steps=8, max_new_tokens=8, mask_id=4, alg="origin", parallel_threshold=0.9)
    with pytest.raises(SamplingError, match="block_length=3 must divide max_new_tokens=8"):
        generate_dream(dream, ids, steps=8, max_new_tokens=8, mask_id=4, block_length=3, cache="dual")


def test_a_cache_needs_a_family_that_can_take_one() -> None:
    bert = AutoModelForMaskedLM.from_pretrained(FIXTURES / "modernbert-tiny").eval()
    ids = torch.randint(5, 60, (1, 6))
    with pytest.raises(SamplingError, match="which the llada and dream families can; ModernBertForMaskedLM cannot"):
        generate_llada(bert, ids, steps=4, gen_length=4, block_length=4, mask_id=3, cache="dual")
    with pytest.raises(EvaluationError, match="which the llada and dream families can; bert cannot"):
        check_sampler_settings(get_family("bert"), SamplerSettings(cache="prefix"))
    check_sampler_settings(
        get_family("ar"), SamplerSettings(cache="dual", parallel_threshold=0.9)
    )  # causal LMs ignore both


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_generation_passes_cache_and_threshold_on(models: dict[str, nn.Module], family: str) -> None:
    """The evaluator's and trainer's `generate` gives the sampler both settings (Dream: block-wise when cached)."""
    model = models[family]
    ids, attention = _batch()
    special = SpecialIds(mask=model.config.mask_token_id, eos=PAD, eot=PAD, pad=PAD, bos=None)
    settings = SamplerSettings(steps=8, max_new_tokens=8, block_length=4, alg="entropy")
    fast = SamplerSettings(**{**settings.__dict__, "cache": "dual", "parallel_threshold": 0.3})
    out = generate(model, get_family(family), special, ids, attention, fast)
    direct = _sample(
        model,
        family,
        steps=8,
        gen_length=8,
        block_length=4,
        cache="dual",
        parallel_threshold=0.3,
        eos_id=PAD,
        stop_at_end=True,
    )
    assert torch.equal(out.sequences, direct.sequences) and out.nfe == direct.nfe
    exact = generate(model, get_family(family), special, ids, attention, settings)
    assert (exact.nfe, exact.sequences.tolist()) != (out.nfe, out.sequences.tolist())


def _evaluator_settings(**values: str) -> Any:
    schema = json.loads((REPO / "plugins" / "diffusion_evaluator" / "index.json").read_text())["parameters"]
    return EvaluatorConfig.from_params(
        coerce_and_validate({"model_name": "tiny-llada", **values}, schema)
    ).sampler_settings()


def test_the_evaluator_form_sets_cache_and_threshold() -> None:
    # the default "auto" is resolved per family when the sampler is built (tests/plugins/test_parameter_paths_eval_data)
    assert (_evaluator_settings().cache, _evaluator_settings().parallel_threshold) == ("auto", None)
    chosen = _evaluator_settings(cache="dual", parallel_threshold="0.9")
    assert (chosen.cache, chosen.parallel_threshold) == ("dual", 0.9)
    for bad, field in (({"parallel_threshold": "1.5"}, "parallel_threshold"), ({"cache": "full"}, "cache")):
        with pytest.raises(ParameterError, match=field):
            _evaluator_settings(**bad)


def test_sample_logging_refuses_a_cache_the_family_cannot_take_before_training(tmp_path: Path) -> None:
    config = SFTConfig(
        **{
            **tiny_run(str(tmp_path / "ws"), tmp_path / "out"),
            "model_name": str(FIXTURES / "modernbert-tiny"),
            **{"sample_every_steps": 1, "sample_cache": "dual", "num_train_epochs": 0, "train_steps": 1},
        }
    )
    with pytest.raises(SamplingError, match="bert cannot"):
        rows = [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]] * 4
        run_sft(config, rows, rows, Reporter())


def test_lm_eval_rounds_a_cached_dream_answer_to_whole_blocks() -> None:
    settings = SamplerSettings(steps=32, max_new_tokens=32, block_length=8, cache="dual")
    assert settings_for_length(settings, 20, "dream").max_new_tokens == 24
    assert settings_for_length(dataclasses.replace(settings, cache="none"), 20, "dream").max_new_tokens == 20
