"""Sampler speed on one device: dlm's batched LLaDA sampler, exact and in its fast modes, against the official
LLaDA `generate.py` loop run batched (8 prompts per call, as the official code does), written below as plainly as
the original.

Part 1, exact: ours against the official batched loop on random-weight LLaDAs of tiny-llada's size at a 32k and at
a small vocabulary (prompts of different lengths, left-padded with an attention mask on both sides): tokens/s and
whether every output token matches. The official loop runs the full model (logits at every position) each step;
ours applies the output head only to the current block.

Part 2, fast modes against our exact sampler on one model, 8 prompts, `--gen-length` (256) new tokens, blocks of
`--block-length` (32), one token per step: `prefix` and `dual` key/value caches, and `dual` with
`--threshold` (0.9) parallel decoding. The model is the demo's trained tiny-llada when `--demo-model DIR` is given
(its held-out test problems are the prompts, and task accuracy over `--problems` of them is reported per mode),
else the small-vocabulary random model of part 1. Prints tokens/s, NFE (forward passes) per answer and speed-ups.

Runs alternate (order flipped each round) after a warm-up, on one thread unless `--threads` says otherwise; times
are medians. Tokens per second count generated tokens other than EOS/end-of-turn.

The last line printed is one JSON object: ``speedup_prefix``, ``speedup_dual``, ``speedup_dual_parallel`` (tokens/s
over our exact sampler's), ``nfe_ratio_dual_parallel``, ``outputs_identical_exact`` (ours = official batched at both
vocabularies), ``official_ratio_vocab_32k``/``official_ratio_small_vocab`` (ours exact over official batched), and
``accuracy_<mode>`` for each mode (null without `--demo-model`).
Run: ``python bench/sample.py`` (``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import add_threads_argument

import dlm  # noqa: F401  (registers LLaDA with the Auto classes)
from dlm.demo_task import build_task, is_correct
from dlm.generation import decode_answers, encode_prompts
from dlm.loading import load_model_and_tokenizer
from dlm.models import LLaDAConfig, LLaDAModelLM
from dlm.samplers import SampleOutput, generate_llada
from plugin_sdk.demo import SIZES

MODES = {"exact": {}, "prefix": {"cache": "prefix"}, "dual": {"cache": "dual"}, "dual_parallel": {"cache": "dual"}}


@torch.no_grad()
def official_llada(model, prompt, attention_mask, steps, gen_length, block_length, mask_id):
    """The official LLaDA sampling loop for a batch of left-padded prompts [B, P] at temperature 0 with
    low-confidence remasking."""
    batch, prompt_len = prompt.shape
    x = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt_len] = prompt
    attention_mask = torch.cat([attention_mask, torch.ones(batch, gen_length, dtype=attention_mask.dtype)], dim=1)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for block in range(num_blocks):
        start = prompt_len + block * block_length
        masks_in_block = (x[:, start : start + block_length] == mask_id).sum(1, keepdim=True)
        base, remainder = masks_in_block // steps_per_block, masks_in_block % steps_per_block
        schedule = base + (torch.arange(steps_per_block) < remainder).long()
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(x, attention_mask=attention_mask).logits
            x0 = logits.argmax(-1)
            p = F.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, start + block_length :] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for row in range(batch):
                _, chosen = torch.topk(confidence[row], k=int(schedule[row, i]))
                transfer[row, chosen] = True
            x[transfer] = x0[transfer]
    return x


def random_llada(vocab: int, seed: int = 0) -> LLaDAModelLM:
    """Random weights at tiny-llada's size (d_model 128, 2 layers, 4 heads, MLP 256); mask id vocab - 1."""
    torch.manual_seed(seed)
    config = LLaDAConfig(
        d_model=128,
        n_heads=4,
        n_layers=2,
        mlp_hidden_size=256,
        vocab_size=vocab,
        embedding_size=vocab,
        max_sequence_length=4096,
        mask_token_id=vocab - 1,
        eos_token_id=1,
        pad_token_id=1,
        bos_token_id=0,
    )
    return LLaDAModelLM(config).eval()


def random_prompts(count: int, vocab: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 25, (count,), generator=generator).tolist()
    width = max(lengths)
    ids = torch.full((count, width), pad_id, dtype=torch.long)
    attention = torch.zeros(count, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.randint(5, min(vocab - 1, 1000), (length,), generator=generator)
        attention[row, width - length :] = 1
    return ids, attention


def time_alternating(runs: dict[str, Callable[[], torch.Tensor]], rounds: int) -> tuple[dict, dict]:
    """Median seconds and last result of each run; a warm-up first, then `rounds` rounds, order flipped each."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, object] = {}
    for round_ in range(rounds):
        for name in list(runs) if round_ % 2 == 0 else list(reversed(runs)):
            start = time.perf_counter()
            results[name] = runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, results


def count_tokens(sequences: torch.Tensor, gen_length: int, end_ids: tuple[int, ...]) -> int:
    generated = sequences[:, -gen_length:]
    return int(sum((generated != end_id) for end_id in end_ids).eq(len(end_ids)).sum())


def against_official(vocab: int, args: argparse.Namespace) -> tuple[float, bool]:
    """Part 1 at one vocabulary: (tokens/s ratio ours / official batched, outputs identical)."""
    model = random_llada(vocab)
    mask_id, eos_id = model.config.mask_token_id, model.config.eos_token_id
    ids, attention = random_prompts(args.prompts, vocab, eos_id)
    settings = {"steps": args.official_gen_length, "gen_length": args.official_gen_length}
    settings["block_length"] = min(args.block_length, args.official_gen_length)
    runs = {
        "ours": lambda: generate_llada(model, ids, attention_mask=attention, mask_id=mask_id, **settings).sequences,
        "official": lambda: official_llada(model, ids, attention, mask_id=mask_id, **settings),
    }
    seconds, results = time_alternating(runs, args.rounds)
    identical = torch.equal(results["ours"], results["official"])
    tokens = count_tokens(results["ours"], settings["gen_length"], (eos_id,))
    rates = {name: tokens / seconds[name] for name in runs}
    print(
        f"vocabulary {vocab}: {args.prompts} prompts x {settings['gen_length']} tokens, block "
        f"{settings['block_length']}: ours {rates['ours']:.1f} tokens/s, official batched {rates['official']:.1f} "
        f"tokens/s, ratio {rates['ours'] / rates['official']:.2f}x, outputs identical: {identical}"
    )
    return rates["ours"] / rates["official"], identical


def demo_prompts(args: argparse.Namespace) -> tuple[LLaDAModelLM, Callable, list[tuple], tuple[int, ...]]:
    """The demo model, an answer checker, batches of (ids, attention, references) of held-out problems, and the
    end token ids."""
    loaded = load_model_and_tokenizer(args.demo_model)
    size = SIZES["small"]  # the small demo's splits: the held-out test problems it evaluates on
    rows = build_task(size.train, size.validation, size.test).rows["test"][: args.problems]
    batches = []
    for first in range(0, len(rows), args.prompts):
        chunk = rows[first : first + args.prompts]
        messages = [[{"role": "user", "content": row["instruction"]}] for row in chunk]
        ids, attention = encode_prompts(loaded.tokenizer, messages, loaded.special_ids.pad)
        batches.append((ids, attention, [row["output"] for row in chunk]))

    def score(out: SampleOutput, ids: torch.Tensor, references: list[str]) -> int:
        answers = decode_answers(loaded.tokenizer, loaded.special_ids, out.sequences, ids.shape[1])
        return sum(is_correct(answer, reference) for answer, reference in zip(answers, references, strict=True))

    special = loaded.special_ids
    return loaded.model.eval(), score, batches, (special.eos, special.eot)


def fast_modes(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Part 2: tokens/s, NFE per answer and (with the demo model) accuracy of each mode."""
    if args.demo_model:
        model, score, batches, end_ids = demo_prompts(args)
    else:
        model = random_llada(args.small_vocab)
        ids, attention = random_prompts(args.prompts, args.small_vocab, model.config.eos_token_id)
        batches, score, end_ids = [(ids, attention, None)], None, (model.config.eos_token_id,)
    settings = {"steps": args.gen_length, "gen_length": args.gen_length, "block_length": args.block_length}
    settings["mask_id"] = model.config.mask_token_id

    def run(mode: str, ids: torch.Tensor, attention: torch.Tensor) -> SampleOutput:
        threshold = args.threshold if mode == "dual_parallel" else None
        return generate_llada(
            model, ids, attention_mask=attention, parallel_threshold=threshold, **MODES[mode], **settings
        )

    ids, attention, _ = batches[0]
    seconds, results = time_alternating({mode: lambda m=mode: run(m, ids, attention) for mode in MODES}, args.rounds)
    report = {}
    for mode in MODES:
        tokens = count_tokens(results[mode].sequences, args.gen_length, end_ids)
        report[mode] = {"tokens_per_sec": tokens / seconds[mode], "nfe": results[mode].nfe}
        if score is not None:
            correct = sum(score(run(mode, b_ids, b_att), b_ids, refs) for b_ids, b_att, refs in batches)
            report[mode]["accuracy"] = correct / sum(len(refs) for *_, refs in batches)
    exact = report["exact"]
    print(f"fast modes, {args.prompts} prompts x {args.gen_length} tokens, block {args.block_length}:")
    for mode, figures in report.items():
        accuracy = f", accuracy {figures['accuracy']:.3f}" if "accuracy" in figures else ""
        print(
            f"  {mode:14s} {figures['tokens_per_sec']:9.1f} tokens/s ({figures['tokens_per_sec'] / exact['tokens_per_sec']:.2f}x), "
            f"NFE per answer {figures['nfe']}{accuracy}"
        )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--official-gen-length", type=int, default=64, help="part 1's new tokens")
    parser.add_argument("--small-vocab", type=int, default=1024)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--demo-model", type=Path, default=None, help="the demo's trained tiny-llada folder")
    parser.add_argument("--problems", type=int, default=64, help="held-out problems scored per mode (demo model)")
    parser.add_argument("--rounds", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.prompts < 8:
        parser.error("--prompts must be at least 8")

    ratio_32k, identical_32k = against_official(32768, args)
    ratio_small, identical_small = against_official(args.small_vocab, args)
    report = fast_modes(args)
    speed = {mode: report[mode]["tokens_per_sec"] / report["exact"]["tokens_per_sec"] for mode in MODES}
    print(
        json.dumps(
            {
                "speedup_prefix": round(speed["prefix"], 3),
                "speedup_dual": round(speed["dual"], 3),
                "speedup_dual_parallel": round(speed["dual_parallel"], 3),
                "nfe_ratio_dual_parallel": round(report["dual_parallel"]["nfe"] / report["exact"]["nfe"], 3),
                "outputs_identical_exact": identical_32k and identical_small,
                "official_ratio_vocab_32k": round(ratio_32k, 3),
                "official_ratio_small_vocab": round(ratio_small, 3),
                **{f"accuracy_{mode}": report[mode].get("accuracy") for mode in MODES},
            }
        )
    )


if __name__ == "__main__":
    main()
