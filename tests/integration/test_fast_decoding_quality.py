"""Fast decoding keeps the demo model's task accuracy: tiny-llada trained by the small demo's own SFT job (the run
of conftest.py's `small_demo` that test_demo.py checks: minutes, hence slow) answers the demo's held-out test
problems with the exact sampler and with each cache plus a parallel threshold; each fast mode scores within one point
of the exact one and needs fewer forward passes. With the evaluator's default decoding (a window far longer than the
training rows, grown 8 tokens at a time, with the dual cache and threshold 0.99) it keeps the short window's
accuracy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from demo.run import SFT_NAME, SIZES
from demo.task import MAX_DIGITS, build_task, is_correct
from dlm.generation import SamplerSettings, decode_answers, encode_prompts, generate
from dlm.loading import LoadedModel, load_model_and_tokenizer

if TYPE_CHECKING:
    from tests.integration.conftest import DemoRun

ANSWER = MAX_DIGITS + 1  # digits and end of turn: the canvas the demo trains and evaluates with
EXACT = SamplerSettings(steps=ANSWER, max_new_tokens=ANSWER, block_length=ANSWER // 2)


@pytest.fixture(scope="module")
def trained(small_demo: DemoRun) -> tuple[LoadedModel, list[dict[str, str]]]:
    """The small demo's tiny-llada after SFT (the run test_demo.py checks) and the demo's test problems."""
    size = SIZES["small"]
    rows = build_task(size.train, size.validation, size.test, seed=0).rows["test"]  # the demo's default seed
    return load_model_and_tokenizer(small_demo.workspace.model_dir(f"tiny-llada_{SFT_NAME}")), rows


def _accuracy(loaded: LoadedModel, rows: list[dict[str, str]], settings: SamplerSettings) -> tuple[float, int]:
    correct, nfe = 0, 0
    for first in range(0, len(rows), 50):
        chunk = rows[first : first + 50]
        prompts = [[{"role": "user", "content": row["instruction"]}] for row in chunk]
        ids, mask = encode_prompts(loaded.tokenizer, prompts, loaded.special_ids.pad)
        out = generate(loaded.model.eval(), loaded.family, loaded.special_ids, ids, mask, settings)
        answers = decode_answers(loaded.tokenizer, loaded.special_ids, out.sequences.cpu(), ids.shape[1])
        correct += sum(is_correct(a, r["output"]) for a, r in zip(answers, chunk, strict=True))
        nfe += out.nfe
    return correct / len(rows), nfe


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_and_threshold_keep_task_accuracy(trained: tuple[LoadedModel, list], cache: str) -> None:
    loaded, rows = trained
    exact, exact_nfe = _accuracy(loaded, rows, EXACT)
    fast_settings = SamplerSettings(**{**EXACT.__dict__, "cache": cache, "parallel_threshold": 0.9})
    fast, fast_nfe = _accuracy(loaded, rows, fast_settings)
    assert exact >= 0.5, f"the demo model did not learn (accuracy {exact})"
    assert abs(fast - exact) <= 0.01, (exact, fast)
    assert fast_nfe < exact_nfe


def _evaluator_defaults() -> SamplerSettings:
    index = Path(__file__).parents[2] / "plugins" / "diffusion_evaluator" / "index.json"
    parameters = json.loads(index.read_text(encoding="utf-8"))["parameters"]
    names = ("steps", "max_new_tokens", "block_length", "grow_canvas", "cache", "parallel_threshold", "suffix_window")
    names += ("alg_temp", "top_p", "top_k")
    return SamplerSettings.from_form(**{name: parameters[name]["default"] for name in names})


@pytest.mark.slow
def test_evaluator_defaults_keep_the_short_window_accuracy(trained: tuple[LoadedModel, list]) -> None:
    """The evaluator's default decoding (a long window grown 8 tokens at a time, `cache` auto: the dual cache with
    threshold 0.99) scores what the exact sampler scores on the window the model was trained with."""
    loaded, rows = trained
    defaults = _evaluator_defaults()
    assert defaults.max_new_tokens >= 16 * ANSWER and defaults.grow_canvas > 0 and defaults.cache == "auto"
    short, _ = _accuracy(loaded, rows, SamplerSettings(steps=ANSWER, max_new_tokens=ANSWER, block_length=ANSWER))
    grown, _ = _accuracy(loaded, rows, defaults)
    assert short >= 0.5, f"the demo model did not learn (accuracy {short})"
    assert grown >= short - 0.02, (short, grown)
