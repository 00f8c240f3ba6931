"""Rows that advance on their own, stop at their answer's end and see only part of the suffix (DPad): checked
against a brute-force loop that decodes one prompt at a time with full forward passes over the visible canvas,
and against the same sampler run on each prompt alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from dlm.samplers.common import SamplingError
from dlm.samplers.dream import generate_dream
from dlm.samplers.llada import generate_llada
from tests.helpers import left_padded

PAD = 2
PROMPTS = ([11, 25, 7, 40, 33, 9, 17], [5, 44, 21, 8], [30, 12, 19, 27, 6, 14])


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    return left_padded(PROMPTS, PAD)


@torch.no_grad()
def brute_force(
    model: nn.Module,
    prompt: list[int],
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    threshold: float | None = None,
    window: int | None = None,
    end_id: int | None = None,
) -> tuple[list[int], int]:
    """One prompt, no cache: each step runs the model on the canvas up to `window` positions past the block,
    reveals the scheduled count of most probable argmax tokens and, given a threshold, every masked position that
    probable; with `end_id`, stops once an end token has nothing masked before it. (tokens, forward passes)."""
    mask_id = model.config.mask_token_id
    x = torch.tensor([prompt + [mask_id] * gen_length])
    start_of_answer, steps_per_block, nfe = len(prompt), steps // (gen_length // block_length), 0
    for start in range(start_of_answer, x.shape[1], block_length):
        end = start + block_length
        masks = int((x[0, start:end] == mask_id).sum())
        schedule = [masks // steps_per_block + (s < masks % steps_per_block) for s in range(steps_per_block)]
        for count in schedule:
            masked = x[0, start:end] == mask_id
            if not bool(masked.any()):
                break
            width = x.shape[1] if window is None else min(x.shape[1], end + window)
            probs = model(x[:, :width]).logits[0, start:end].float().softmax(-1)
            nfe += 1
            confidence, tokens = probs.max(-1)
            reveal = torch.zeros_like(masked)
            reveal[confidence.masked_fill(~masked, -torch.inf).topk(count).indices] = True
            if threshold is not None:
                reveal |= confidence >= threshold
            reveal &= masked
            x[0, start:end][reveal] = tokens[reveal]
            answer = x[0, start_of_answer:].tolist()
            if end_id in answer and mask_id not in answer[: answer.index(end_id)]:
                cut = answer.index(end_id) + 1
                return answer[:cut] + [end_id] * (len(answer) - cut), nfe
    return x[0, start_of_answer:].tolist(), nfe


def _answers(out: Any, prompt_width: int) -> list[list[int]]:
    return out.sequences[:, prompt_width:].tolist()


@pytest.mark.parametrize("window", [None, 0, 3])
@pytest.mark.parametrize("threshold", [None, 0.999])
def test_batched_rows_equal_brute_force_one_prompt_at_a_time(
    llada: nn.Module, window: int | None, threshold: float | None
) -> None:
    ids, attention = _batch()
    settings = {"gen_length": 16, "block_length": 4, "steps": 16}
    out = generate_llada(
        llada,
        ids,
        mask_id=llada.config.mask_token_id,
        attention_mask=attention,
        parallel_threshold=threshold,
        suffix_window=window,
        **settings,
    )
    expected = [brute_force(llada, prompt, threshold=threshold, window=window, **settings) for prompt in PROMPTS]
    assert _answers(out, ids.shape[1]) == [tokens for tokens, _ in expected]
    assert out.row_nfe.tolist() == [nfe for _, nfe in expected]
    if threshold is not None:
        assert len(set(out.row_nfe.tolist())) > 1, "the rows never went their own ways"


def test_rows_stop_once_their_answer_has_ended(llada: nn.Module) -> None:
    """The end token is a common early token of these answers: each row stops the step its answer ends, with
    the forward passes the brute force needed, and keeps the answer the full run gives."""
    ids, attention = _batch()
    settings = {"gen_length": 16, "block_length": 4, "steps": 16}
    common = {"mask_id": llada.config.mask_token_id, "attention_mask": attention, **settings}
    full = generate_llada(llada, ids, **common)
    end_id = int(full.sequences[1, ids.shape[1] + 2])  # the third token of row 1's answer
    out = generate_llada(llada, ids, eos_id=end_id, stop_at_end=True, **common)
    expected = [brute_force(llada, prompt, end_id=end_id, **settings) for prompt in PROMPTS]
    assert _answers(out, ids.shape[1]) == [tokens for tokens, _ in expected]
    assert out.row_nfe.tolist() == [nfe for _, nfe in expected]
    assert out.row_nfe[1] < full.row_nfe[1] == 16
    for row, answer in enumerate(_answers(full, ids.shape[1])):
        cut = answer.index(end_id) + 1 if end_id in answer else len(answer)
        assert _answers(out, ids.shape[1])[row][:cut] == answer[:cut]


def _generate(family: str, model: nn.Module, prompt: torch.Tensor, **settings: Any) -> Any:
    if family == "llada":
        return generate_llada(model, prompt, mask_id=model.config.mask_token_id, **settings)
    length = settings.pop("gen_length")
    return generate_dream(model, prompt, mask_id=model.config.mask_token_id, max_new_tokens=length, **settings)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_cached_rows_decode_as_each_prompt_alone(llada: nn.Module, dream: nn.Module, family: str, cache: str) -> None:
    """With a cache, a threshold, a suffix window and an end token, rows refresh, replay and stop at their own
    blocks: the batch gives each row the tokens and forward passes it gets alone."""
    model = {"llada": llada, "dream": dream}[family]
    ids, attention = _batch()
    settings = {"gen_length": 16, "block_length": 4, "steps": 16, "cache": cache, "parallel_threshold": 0.999}
    settings |= {"suffix_window": 4, **({"alg": "entropy"} if family == "dream" else {})}
    full = _generate(family, model, ids, attention_mask=attention, **settings)
    end_id = int(full.sequences[1, ids.shape[1] + 5])  # a token of row 1's second block
    settings |= {"eos_id": end_id, "stop_at_end": True}
    out = _generate(family, model, ids, attention_mask=attention, **settings)
    assert len(set(out.row_nfe.tolist())) > 1, "the rows never went their own ways"
    for row, prompt in enumerate(PROMPTS):
        alone = _generate(family, model, torch.tensor([prompt]), **settings)
        assert _answers(out, ids.shape[1])[row] == _answers(alone, len(prompt))[0]
        assert int(out.row_nfe[row]) == alone.nfe


def test_a_negative_suffix_window_is_refused(llada: nn.Module) -> None:
    with pytest.raises(SamplingError, match="suffix_window must be >= 0"):
        generate_llada(
            llada, torch.tensor([[5, 6]]), mask_id=3, steps=4, gen_length=4, block_length=4, suffix_window=-1
        )


def test_stop_at_end_needs_an_end_token(llada: nn.Module) -> None:
    with pytest.raises(SamplingError, match="stop_at_end needs eos_id or eot_id"):
        generate_llada(
            llada, torch.tensor([[5, 6]]), mask_id=3, steps=4, gen_length=4, block_length=4, stop_at_end=True
        )
