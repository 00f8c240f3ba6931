"""The BD3LM block sampler: token ids equal to dllm's `BD3LMSampler` on the golden fixture, its schedule equal to
dllm's, the key/value cache exact against a full block-causal forward pass, and the cache actually saving work
(model calls and positions fed against an uncached brute-force sampler)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from dlm.block_diffusion import block_logits_at_positions
from dlm.families.a2d import A2D
from dlm.families.special_ids import SpecialIds
from dlm.generation import SAMPLERS, SamplerSettings, build_sampler, check_decoding_settings
from dlm.samplers.bd3lm import BD3LMSampler, bd3lm_schedule
from dlm.samplers.block_cache import BlockCausalCache
from dlm.samplers.common import SamplingError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "bd3lm-sampler"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
MASK_ID = GOLDEN["sample"]["mask_token_id"]


@pytest.fixture(scope="module")
def golden_model() -> transformers.Qwen3ForCausalLM:
    """The fixture checkpoint (dllm's a2d-qwen3) as a transformers Qwen3 with bidirectional attention."""
    fields = json.loads((FIXTURE / "config.json").read_text())
    for key in ("model_type", "architectures", "transformers_version"):
        fields.pop(key)
    config = transformers.Qwen3Config(**fields, is_causal=False, mask_token_id=MASK_ID)
    model = transformers.Qwen3ForCausalLM(config)
    model.load_state_dict(load_file(FIXTURE / "model.safetensors"))
    return model.eval()


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, prompts))
    ids = torch.full((len(prompts), length), pad_id)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.tensor(prompt)
        mask[row, length - len(prompt) :] = 1
    return ids, mask


@pytest.mark.parametrize("case", GOLDEN["sample"]["cases"], ids=lambda c: c["case"])
def test_token_ids_equal_dllm(golden_model: torch.nn.Module, case: dict) -> None:
    expected = load_file(FIXTURE / "golden.safetensors")[case["sequences"]]
    ids, mask = left_padded(case["prompts"], case["pad_id"])
    sampler = BD3LMSampler(
        steps=case["steps"],
        gen_length=case["max_new_tokens"],
        block_length=case["block_size"],
        cfg_scale=case.get("cfg_scale", 0.0),
        right_shift_logits=case.get("right_shift_logits", False),
        block_alignment="prompt_end",
    )
    out = sampler.sample(
        golden_model, ids, mask_id=MASK_ID, attention_mask=mask, pad_id=case["pad_id"], eos_id=case["eos_id"]
    )
    # dllm pads the prompts further left, to a whole number of blocks, and stops after the block where every row ended
    expected = expected[:, -ids.shape[1] % case["block_size"] :]
    assert torch.equal(out.sequences[:, : expected.shape[1]], expected)
    rest = out.sequences[:, expected.shape[1] :]
    if case["eos_id"] is None:
        assert rest.numel() == 0
    else:  # the fixture's EOS cases stop early; the rest is EOS
        assert rest.numel() and bool((rest == case["eos_id"]).all())


@pytest.mark.parametrize("case", GOLDEN["schedule"]["cases"], ids=lambda c: f"{c['masks']}in{c['steps']}")
def test_schedule_equals_dllm(case: dict) -> None:
    assert bd3lm_schedule(case["masks"], case["steps"]) == case["counts"]


def test_schedule_by_hand() -> None:
    # masks left x 1/(steps left), rounded half to even; steps revealing nothing dropped
    assert bd3lm_schedule(4, 8) == [1, 1, 1, 1]  # 0.5->0, 4/7->1, 0.5->0, 0.6->1, 0.5->0, 2/3->1, 0.5->0, 1
    assert bd3lm_schedule(10, 4) == [2, 3, 2, 3]  # 2.5->2, 8/3->3, 2.5->2, 3
    assert bd3lm_schedule(5, 1) == [5]


def tiny_model(architecture: str, attention: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A random block-diffusion model: a tiny Qwen3 or Llama with `is_causal=False` and a mask token."""
    torch.manual_seed(seed)
    sizes = dict(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        is_causal=False,
        mask_token_id=39,
        attn_implementation=attention,
    )
    if architecture == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**sizes))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3)
        model.lm_head.weight.mul_(20.0)
        model.lm_head.weight[39] = 0.0
    return model.eval()


def full_block_causal_logits(
    model: torch.nn.Module, ids: torch.Tensor, valid: torch.Tensor, block: int
) -> torch.Tensor:
    """Brute force, no cache: one forward pass over the whole sequence; query q sees key k when both are real
    tokens and block(k) <= block(q), block = column // `block`; RoPE positions count real tokens."""
    rows, length = ids.shape
    allowed = torch.zeros(rows, 1, length, length, dtype=torch.bool)
    positions = torch.zeros(rows, length, dtype=torch.long)
    for row in range(rows):
        seen = 0
        for q in range(length):
            if valid[row, q]:
                positions[row, q] = seen
                seen += 1
            for k in range(length):
                allowed[row, 0, q, k] = bool(valid[row, q] and valid[row, k] and k // block <= q // block)
    if model.config._attn_implementation == "eager":
        allowed = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=allowed, position_ids=positions).logits


@pytest.mark.parametrize(("architecture", "attention"), [("qwen3", "sdpa"), ("llama", "sdpa"), ("qwen3", "eager")])
def test_cache_is_exact(architecture: str, attention: str) -> None:
    """Prompt (left-padded, row 1 with two pads) and one finished block (row 0 holding a pad token) committed; the
    current block's logits from the cache equal a full block-causal forward pass over everything."""
    model, block, pad = tiny_model(architecture, attention), 4, 0
    torch.manual_seed(1)
    prompt = torch.randint(1, 39, (2, 8))
    prompt_valid = torch.ones_like(prompt, dtype=torch.bool)
    prompt_valid[:, :2] = False  # the padding up to a whole number of blocks
    prompt_valid[1, 2:4] = False  # row 1's own left padding
    prompt[~prompt_valid] = pad
    finished = torch.randint(1, 39, (2, block))
    finished[0, 1] = pad
    current = torch.randint(1, 40, (2, block))  # masks (39) and revealed tokens
    current[:, ::2] = 39

    cache = BlockCausalCache(model, block, batch=2, device=torch.device("cpu"))
    with torch.no_grad():
        cache.commit(prompt, prompt_valid)
        finished_last = cache.commit(finished, finished != pad)
        first = cache.peek(current, torch.ones_like(current, dtype=torch.bool))
        again = cache.peek(current, torch.ones_like(current, dtype=torch.bool))
    assert cache.cache.get_seq_length() == 12  # peeking left the cache as it was

    ids = torch.cat([prompt, finished, current], dim=1)
    valid = torch.cat([prompt_valid, finished != pad, torch.ones_like(current, dtype=torch.bool)], dim=1)
    full = full_block_causal_logits(model, ids, valid, block)
    scale = full[:, 12:].abs().max()
    assert torch.allclose(first, full[:, 12:], atol=1e-5 * scale, rtol=0)
    assert torch.allclose(again, first, atol=1e-6 * scale, rtol=0)
    assert torch.allclose(finished_last, full[:, 11], atol=1e-5 * scale, rtol=0)


class ForwardCounter:
    """Counts model calls and the positions (batch x length) they were fed."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = self.positions = 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls += 1
        self.positions += kwargs["input_ids"].numel()


def uncached_sample(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    sampler: BD3LMSampler,
    pad_id: int,
) -> torch.Tensor:
    """The same algorithm without a cache: every step runs the whole sequence under the block-causal mask."""
    block = sampler.block_length
    padding = -ids.shape[1] % block
    canvas = torch.cat([torch.full((ids.shape[0], padding), pad_id), ids], dim=1)
    valid = torch.cat([torch.zeros(ids.shape[0], padding, dtype=torch.bool), mask.bool()], dim=1)
    for start in range(0, sampler.gen_length, block):
        length = min(block, sampler.gen_length - start)
        canvas = torch.cat([canvas, torch.full((ids.shape[0], length), 39)], dim=1)
        valid = torch.cat([valid, torch.ones(ids.shape[0], length, dtype=torch.bool)], dim=1)
        for count in bd3lm_schedule(length, sampler.steps_per_block):
            masked = canvas[:, -length:] == 39
            if not masked.any():
                break
            logits = full_block_causal_logits(model, canvas, valid, block)[:, -length:]
            probability, tokens = logits.softmax(-1).max(-1)
            for row in range(canvas.shape[0]):
                confidence = probability[row].masked_fill(~masked[row], -1.0)
                chosen = confidence.topk(min(count, int(masked[row].sum()))).indices
                reveal = torch.zeros(length, dtype=torch.bool)
                reveal[chosen] = True
                if sampler.parallel_threshold is not None:
                    reveal |= masked[row] & (probability[row] >= sampler.parallel_threshold)
                canvas[row, -length:] = torch.where(reveal, tokens[row], canvas[row, -length:])
        valid[:, -length:] = canvas[:, -length:] != pad_id
    return canvas[:, padding:]


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_cache_saves_work_and_changes_nothing(threshold: float | None) -> None:
    """The cached sampler's ids equal the uncached brute force's; it makes one call per step plus one per block
    (prompt, then each finished block but the last) and feeds each column once outside the current block."""
    model = tiny_model("qwen3", seed=3)
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10], [11, 12, 13]], pad_id=0)
    sampler = BD3LMSampler(
        steps=12, gen_length=14, block_length=4, parallel_threshold=threshold, block_alignment="prompt_end"
    )
    counter = ForwardCounter(model)
    out = sampler.sample(model, ids, mask_id=39, attention_mask=mask, pad_id=0)
    cached_calls, cached_positions = counter.calls, counter.positions
    counter.calls = counter.positions = 0
    expected = uncached_sample(model, ids, mask, sampler, pad_id=0)
    counter.handle.remove()

    assert torch.equal(out.sequences, expected)
    denoising = counter.calls  # the uncached sampler calls the model once per denoising step, on everything
    blocks = [4, 4, 4, 2]  # 14 tokens in blocks of 4; the prompt takes 8 columns (two blocks)
    assert cached_calls == denoising + len(blocks) == out.nfe
    if threshold is None:
        assert denoising == sum(len(bd3lm_schedule(n, 3)) for n in blocks) == 11
        # batch 2 x (prompt 8 + finished blocks 12 + 3 + 3 + 3 + 2 steps over blocks of 4, 4, 4, 2)
        assert cached_positions == 2 * (8 + 12 + 3 * 4 + 3 * 4 + 3 * 4 + 2 * 2)
        assert counter.positions == 2 * (3 * 12 + 3 * 16 + 3 * 20 + 2 * 22)
    else:
        assert denoising < 11  # confident positions come early
    assert cached_positions < counter.positions / 2


def test_built_from_settings() -> None:
    assert SAMPLERS["bd3lm"] is BD3LMSampler
    family = dataclasses.replace(A2D, name="block", sampler="bd3lm", shift_logits=True)
    settings = SamplerSettings(steps=8, max_new_tokens=12, block_length=4, temperature=0.5, parallel_threshold=0.9)
    sampler = build_sampler(family, settings)
    assert sampler == BD3LMSampler(
        steps=8,
        gen_length=12,
        block_length=4,
        temperature=0.5,
        right_shift_logits=True,
        parallel_threshold=0.9,
        stop_at_end=True,
    )
    # 12 tokens in blocks of 4: three blocks from a block boundary, four from inside the prompt's last block
    assert sampler.steps_per_block == 3 and sampler.forward_passes == 4 * (3 + 1)
    assert dataclasses.replace(sampler, block_alignment="prompt_end").forward_passes == 3 * (3 + 1)
    with pytest.raises(SamplingError, match="cache='prefix'"):
        check_decoding_settings(family, dataclasses.replace(settings, cache="prefix"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"gen_length": 0}, "gen_length must be at least 1"),
        ({"block_length": 0}, "block_length must be at least 1"),
        ({"remasking": "entropy"}, "remasking='entropy' is unknown"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"cfg_scale": -1.0}, "cfg_scale must be >= 0"),
        ({"parallel_threshold": 0.0}, "parallel_threshold must be in"),
        ({"block_alignment": "answer"}, "block_alignment='answer' is unknown"),
    ],
)
def test_settings_checked_when_built(change: dict, message: str) -> None:
    settings = {"steps": 4, "gen_length": 8, "block_length": 4} | change
    with pytest.raises(SamplingError, match=message):
        BD3LMSampler(**settings)


def test_answer_stops_at_eos_and_reports_steps() -> None:
    """`answer` passes the checkpoint's ids; generation stops after the first block where every row holds EOS and the
    rest is EOS; `on_step` sees every step; at a temperature the same generator seed gives the same tokens."""
    model = tiny_model("llama", seed=5)
    ids, mask = left_padded([[5, 6, 7], [8, 9, 10, 11, 12]], pad_id=0)
    sampler = BD3LMSampler(steps=8, gen_length=8, block_length=4, block_alignment="prompt_end")
    seen: list[tuple[int, int]] = []
    full = sampler.sample(model, ids, mask_id=39, attention_mask=mask, pad_id=0)
    assert full.nfe == 1 + 4 + 1 + 4 and not bool((full.sequences == 39).any())
    eos = 25  # generated in block 0 of both rows by this model
    assert bool((full.sequences[:, 5:9] == eos).any(-1).all())
    special = SpecialIds(mask=39, eos=eos, eot=eos, pad=0, bos=None)
    out = sampler.answer(model, special, ids, mask, on_step=lambda canvas, step, block: seen.append((step, block)))
    assert seen == [(0, 0), (1, 0), (2, 0), (3, 0)] and out.nfe == 5
    assert torch.equal(out.sequences[:, :9], full.sequences[:, :9]) and bool((out.sequences[:, 9:] == eos).all())
    assert out.generated_tokens.tolist() == (out.sequences[:, 5:] != eos).sum(-1).tolist()

    hot = BD3LMSampler(steps=8, gen_length=8, block_length=4, temperature=1.0, block_alignment="prompt_end")
    draws = [
        hot.sample(model, ids, mask_id=39, attention_mask=mask, generator=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert torch.equal(draws[0].sequences, draws[1].sequences)
    assert not torch.equal(draws[0].sequences, draws[2].sequences)


def test_the_output_head_runs_only_where_a_row_is_still_masked() -> None:
    """At temperature 0 a position's choice needs its own logits only: each denoising step feeds the head the block's
    positions still masked (counted here from the canvas after every step), a commit its last column."""
    model = tiny_model("qwen3", seed=3)
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10], [11, 12, 13]], pad_id=0)
    sampler = BD3LMSampler(steps=12, gen_length=14, block_length=4, block_alignment="prompt_end")
    rows: list[int] = []
    handle = model.lm_head.register_forward_hook(lambda _m, _args, out: rows.append(out[..., 0].numel()))
    canvases: list[tuple[int, torch.Tensor]] = []
    out = sampler.sample(model, ids, mask_id=39, attention_mask=mask, pad_id=0,
                         on_step=lambda x, step, block: canvases.append((block, x.clone())))  # fmt: skip
    handle.remove()
    starts = [6 + 4 * b for b in range(4)]
    expected = 2 * 4  # commits: the prompt, then blocks 0, 1, 2 (one column each, two rows)
    for block, start in enumerate(starts):
        end = min(start + 4, 20)
        steps = [x for b, x in canvases if b == block]
        expected += 2 * (end - start)  # the first step: every column of the block is masked
        expected += sum(int((x[:, start:end] == 39).sum()) for x in steps[:-1])
    assert sum(rows) == expected
    assert sum(rows) < 2 * (4 + sum(len(bd3lm_schedule(n, 3)) * n for n in (4, 4, 4, 2)))
    assert torch.equal(out.sequences[:, 6:] == 39, torch.zeros(2, 14, dtype=torch.bool))


def decoded_in_training_layout(model: torch.nn.Module, prompt: list[int], sampler: BD3LMSampler) -> list[int]:
    """Brute force of `sequence_start` for one prompt alone: the row [prompt, masks] cut into blocks from its first
    token, as the trainer cuts it; every step scores the current block with the training forward pass over
    `x_t ⊕ x_0` (`block_logits_at_positions`, the noisy block seeing the clean blocks before it) and reveals the
    step's count of most probable masked positions. Under guidance the unconditional row masks the whole prompt."""
    block, mask_id = sampler.block_length, 39
    canvas = torch.tensor(prompt + [mask_id] * sampler.gen_length)
    for start in range(len(prompt) // block * block, len(canvas), block):
        end = min(start + block, len(canvas))
        for count in bd3lm_schedule(int((canvas[start:end] == mask_id).sum()), sampler.steps_per_block):
            masked = canvas[start:end] == mask_id
            where = (torch.zeros(end - start, dtype=torch.long), torch.arange(start, end))
            row = canvas[:end].unsqueeze(0)
            with torch.no_grad():
                logits = block_logits_at_positions(model, row, row, block, where)
                if sampler.cfg_scale > 0:
                    uncond = row.clone()
                    uncond[0, : len(prompt)] = mask_id
                    free = block_logits_at_positions(model, uncond, uncond, block, where)
                    logits = free + (sampler.cfg_scale + 1) * (logits - free)
            probability, tokens = logits.softmax(-1).max(-1)
            chosen = probability.masked_fill(~masked, -1.0).topk(min(count, int(masked.sum()))).indices
            canvas[start + chosen] = tokens[chosen]
    return canvas[len(prompt) :].tolist()


@pytest.mark.parametrize(("architecture", "cfg_scale"), [("qwen3", 0.0), ("llama", 0.0), ("qwen3", 1.5)])
def test_sequence_start_decodes_each_row_in_the_training_layout(architecture: str, cfg_scale: float) -> None:
    """The default alignment: each row of a left-padded batch gets the tokens that decoding it alone, block by block
    in the layout training uses (blocks from its first token, answer starting inside the prompt's last block),
    gives; the answers differ from dllm's layout, where the answer starts a block."""
    model = tiny_model(architecture, seed=3)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]
    ids, mask = left_padded(prompts, pad_id=0)
    sampler = BD3LMSampler(steps=12, gen_length=14, block_length=4, cfg_scale=cfg_scale)
    out = sampler.sample(model, ids, mask_id=39, attention_mask=mask, pad_id=0)
    assert torch.equal(out.sequences[:, :6], ids)
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, 6:].tolist() == decoded_in_training_layout(model, prompt, sampler), row
    dllm_layout = dataclasses.replace(sampler, block_alignment="prompt_end")
    other = dllm_layout.sample(model, ids, mask_id=39, attention_mask=mask, pad_id=0)
    assert not torch.equal(other.sequences, out.sequences)
    # answers start at columns 6, 7, 4 of blocks [4, 8), [8, 12), ..., [20, 21): each block takes its rows' longest
    # schedule; one call for the prompts' full blocks and one per finished block but the last
    masks_per_block = [(2, 1, 4), (4, 4, 4), (4, 4, 4), (4, 4, 2), (0, 1, 0)]
    steps = sum(max(len(bd3lm_schedule(n, 3)) if n else 0 for n in block) for block in masks_per_block)
    assert out.nfe == (1 + steps + 4) * (2 if cfg_scale else 1) == 18 * (2 if cfg_scale else 1)
