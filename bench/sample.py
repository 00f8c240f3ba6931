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
(prompts: its held-out test problems; task accuracy per mode over `--problems` of them, at the demo's own answer
length, as that model answers nothing on longer canvases), else the small-vocabulary random model of part 1.
Prints answer positions decoded per second (the demo model's long answers are mostly end-of-text, so counting
non-EOS tokens would say nothing), NFE (forward passes) per answer and speed-ups.

Runs alternate (order flipped each round) after a warm-up, on one thread unless `--threads` says otherwise; times
are medians. Part 1's tokens per second count generated tokens other than EOS.

The last line printed is one JSON object: ``speedup_prefix``, ``speedup_dual``, ``speedup_dual_parallel`` (speed
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
from demo.run import SIZES
from demo.task import MAX_DIGITS, build_task, is_correct
from dlm.generation import decode_answers, encode_prompts
from dlm.loading import load_model_and_tokenizer
from dlm.models import LLaDAConfig, LLaDAModelLM
from dlm.samplers.common import SampleOutput
from dlm.samplers.llada import generate_llada

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


def demo_problems(args: argparse.Namespace) -> tuple[LLaDAModelLM, Callable[[dict], float], tuple[torch.Tensor, ...]]:
    """The demo's trained model, the prompts of its first `--prompts` held-out test problems (ids, attention), and
    the task accuracy of sampler options on `--problems` held-out test problems
    at the answer shape the demo trains and evaluates with (one token per digit and end of turn, two blocks): the
    demo model never saw a longer canvas, and given one it answers nothing."""
    loaded = load_model_and_tokenizer(args.demo_model)
    size = SIZES["small"]  # the small demo's splits: the held-out test problems it evaluates on
    rows = build_task(size.train, size.validation, size.test).rows["test"][: args.problems]
    messages = [[{"role": "user", "content": row["instruction"]}] for row in rows]
    ids, attention = encode_prompts(loaded.tokenizer, messages, loaded.special_ids.pad)
    shape = {"steps": MAX_DIGITS + 1, "gen_length": MAX_DIGITS + 1, "block_length": (MAX_DIGITS + 1) // 2}

    def accuracy(options: dict) -> float:
        out = generate_llada(
            loaded.model, ids, attention_mask=attention, mask_id=loaded.special_ids.mask, **shape, **options
        )
        answers = decode_answers(loaded.tokenizer, loaded.special_ids, out.sequences, ids.shape[1])
        return sum(is_correct(a, row["output"]) for a, row in zip(answers, rows, strict=True)) / len(rows)

    return loaded.model.eval(), accuracy, (ids[: args.prompts], attention[: args.prompts])


def fast_modes(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Part 2: decoded positions per second, NFE per answer and (with the demo model) task accuracy per mode."""
    if args.demo_model:
        model, accuracy, (ids, attention) = demo_problems(args)
    else:
        model, accuracy = random_llada(args.small_vocab), None
        ids, attention = random_prompts(args.prompts, args.small_vocab, model.config.eos_token_id)
    settings = {"steps": args.gen_length, "gen_length": args.gen_length, "block_length": args.block_length}
    options = {
        mode: {**cache, **({"parallel_threshold": args.threshold} if mode == "dual_parallel" else {})}
        for mode, cache in MODES.items()
    }

    def run(mode: str) -> SampleOutput:
        mask_id = model.config.mask_token_id
        return generate_llada(model, ids, attention_mask=attention, mask_id=mask_id, **options[mode], **settings)

    seconds, results = time_alternating({mode: lambda m=mode: run(m) for mode in MODES}, args.rounds)
    positions = args.prompts * args.gen_length
    report = {mode: {"tokens_per_sec": positions / seconds[mode], "nfe": results[mode].nfe} for mode in MODES}
    if accuracy is not None:
        for mode in MODES:
            report[mode]["accuracy"] = accuracy(options[mode])
    print(f"fast modes, {args.prompts} prompts x {args.gen_length} positions, block {args.block_length}:")
    for mode, figures in report.items():
        speedup = figures["tokens_per_sec"] / report["exact"]["tokens_per_sec"]
        accuracy_text = f", task accuracy {figures['accuracy']:.3f}" if "accuracy" in figures else ""
        print(
            f"  {mode:14s} {figures['tokens_per_sec']:9.1f} positions/s ({speedup:.2f}x), "
            f"NFE per answer {figures['nfe']}{accuracy_text}"
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
