"""Block-diffusion samplers (BD3LM, SDAR, LLaDA 2.x) whose rows advance on their own: a row whose answer has ended
leaves the batch, and a row whose block is done sits out the block's remaining passes. A batch of left-padded prompts
that end at different blocks gives each row the tokens and forward passes (`row_nfe`) it gets alone, and the passes
that follow a row's end run without it (counted at the embedding layer)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from dlm.samplers.bd3lm import BD3LMSampler
from dlm.samplers.common import SampleOutput, SamplingError
from dlm.samplers.llada2 import LLaDA2Sampler
from dlm.samplers.sdar import SDARSampler
from tests.dlm.test_bd3lm_sampler import left_padded, tiny_model
from tests.dlm.test_llada2 import fixture_model as llada2_model
from tests.dlm.test_sdar_sampler import model as sdar_model

PAD = 0
bd3lm_model = functools.cache(tiny_model)  # one instance, so that the pass counter sees the sampler's calls
PROMPTS = ([5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19], [20, 21, 22, 23])


@dataclass(frozen=True)
class Case:
    """A sampler on its tiny model: `run(sampler, ids, mask, end_id)` samples a batch; `alone(row)` is a row's
    prompt and attention mask at batch 1 (LLaDA 2.x aligns blocks to the padded canvas, so a row keeps its padding)."""

    name: str
    model: Callable[[], torch.nn.Module]
    sampler: Any
    mask_id: int
    keeps_padding: bool = False

    def run(self, ids: torch.Tensor, mask: torch.Tensor, end_id: int | None) -> SampleOutput:
        """The sampler on a batch; without an end token, with `stop_at_end` (which needs one) off."""
        sampler = self.sampler
        if end_id is None and getattr(sampler, "stop_at_end", False):
            sampler = dataclasses.replace(sampler, stop_at_end=False)
        return sampler.sample(self.model(), ids, mask_id=self.mask_id, attention_mask=mask, eos_id=end_id)

    def alone(self, ids: torch.Tensor, mask: torch.Tensor, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keeps_padding:
            return ids[row : row + 1], mask[row : row + 1]
        prompt = torch.tensor([PROMPTS[row]])
        return prompt, torch.ones_like(prompt)


CASES = [
    Case("bd3lm", lambda: bd3lm_model("qwen3", seed=3), BD3LMSampler(
        steps=24, gen_length=16, block_length=4, parallel_threshold=0.3, stop_at_end=True), 39),
    Case("bd3lm-cfg-prompt-end", lambda: bd3lm_model("llama", seed=5), BD3LMSampler(
        steps=16, gen_length=16, block_length=4, cfg_scale=1.0, block_alignment="prompt_end", stop_at_end=True), 39),
    Case("bd3lm-right-shift", lambda: bd3lm_model("qwen3", seed=3), BD3LMSampler(
        steps=16, gen_length=16, block_length=4, right_shift_logits=True, stop_at_end=True), 39),
    Case("sdar", sdar_model, SDARSampler(
        steps=12, gen_length=16, block_length=4, confidence_threshold=0.3), 63),
    Case("sdar-sequential", sdar_model, SDARSampler(steps=8, gen_length=16, block_length=4, remasking="sequential"), 63),
    Case("llada2", llada2_model, LLaDA2Sampler(
        steps=4, gen_length=16, block_size=4, threshold=0.3, stop_at_end=True), 95, keeps_padding=True),
    Case("llada21-editing", llada2_model, LLaDA2Sampler(
        steps=4, gen_length=16, block_size=4, threshold=0.3, editing_threshold=0.5, max_post_steps=2,
        stop_at_end=True), 95, keeps_padding=True),
]  # fmt: skip


@contextmanager
def pass_sizes(model: torch.nn.Module) -> Iterator[list[int]]:
    """The batch size of every forward pass of `model`, read where token ids enter it."""
    sizes: list[int] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, args, _o: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        handle.remove()


def answers(out: SampleOutput, prompt_width: int) -> list[list[int]]:
    return out.sequences[:, prompt_width:].tolist()


def early_end_token(answers: list[list[int]], block: int) -> tuple[int, int]:
    """(row, token): a token in the first block of some row's answer that no other row produces in that block or
    the next, so that this row ends at least a block before the others."""
    for row, answer in enumerate(answers):
        for token in answer[:block]:
            others = [other[: 3 * block] for index, other in enumerate(answers) if index != row]
            if all(token not in other for other in others):
                return row, token
    raise AssertionError("no row's early token is absent from the others' answers")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rows_that_end_early_leave_and_each_row_decodes_as_alone(case: Case) -> None:
    ids, mask = left_padded(list(PROMPTS), PAD)
    width, block = ids.shape[1], 4
    unstopped = case.run(ids, mask, end_id=None)
    early_row, end_id = early_end_token(answers(unstopped, width), block)

    with pass_sizes(case.model()) as sizes:
        out = case.run(ids, mask, end_id)
    for row in range(len(PROMPTS)):
        prompt, prompt_mask = case.alone(ids, mask, row)
        alone = case.run(prompt, prompt_mask, end_id)
        assert answers(out, width)[row] == answers(alone, prompt.shape[1])[0], f"row {row}"
        assert int(out.row_nfe[row]) == alone.nfe == int(alone.row_nfe[0]), f"row {row}"

    row_nfe = out.row_nfe.tolist()
    assert row_nfe[early_row] < min(n for row, n in enumerate(row_nfe) if row != early_row)
    assert answers(out, width)[early_row][-block:] == [end_id] * block  # the blocks after its end are the end token
    # every pass counted once per row that ran in it, and the last passes ran without the early row
    guided = 2 if getattr(case.sampler, "cfg_scale", 0) > 0 else 1
    assert sum(sizes) == sum(row_nfe) and len(sizes) * guided == out.nfe >= max(row_nfe)
    assert min(sizes) < len(PROMPTS) * guided and sizes[-1] < len(PROMPTS) * guided


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5]], ids=lambda c: c.name)
def test_without_an_end_token_every_row_decodes_as_alone(case: Case) -> None:
    """Rows still sit out the passes of a block they have finished (the threshold finishes blocks early)."""
    ids, mask = left_padded(list(PROMPTS), PAD)
    with pass_sizes(case.model()) as sizes:
        out = case.run(ids, mask, end_id=None)
    for row in range(len(PROMPTS)):
        prompt, prompt_mask = case.alone(ids, mask, row)
        alone = case.run(prompt, prompt_mask, None)
        assert answers(out, ids.shape[1])[row] == answers(alone, prompt.shape[1])[0]
        assert int(out.row_nfe[row]) == alone.nfe
    assert sum(sizes) == int(out.row_nfe.sum()) < len(sizes) * len(PROMPTS), "no row ever sat out a pass"


def test_random_draws_keep_every_row_in_the_pass() -> None:
    """At a temperature the draws cover the whole batch (as the references'), so no row sits out a block's pass:
    each pass runs every live row."""
    ids, mask = left_padded(list(PROMPTS), PAD)
    sampler = LLaDA2Sampler(steps=4, gen_length=8, block_size=4, threshold=0.3, temperature=1.0)
    with pass_sizes(llada2_model()) as sizes:
        out = sampler.sample(llada2_model(), ids, mask_id=95, attention_mask=mask, generator=torch.Generator())
    assert set(sizes) == {len(PROMPTS)} and out.row_nfe.tolist() == [out.nfe] * len(PROMPTS)


@pytest.mark.parametrize("case", [CASES[0], CASES[5]], ids=lambda c: c.name)
def test_stop_at_end_needs_an_end_token(case: Case) -> None:
    with pytest.raises(SamplingError, match="stop_at_end needs eos_id or eot_id"):
        case.sampler.sample(case.model(), torch.tensor([[5, 6]]), mask_id=case.mask_id)
