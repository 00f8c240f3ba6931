"""Sampler speed on one device: dlm's batched LLaDA sampler, exact and in its fast modes.

Part 1, exact: ours against the official LLaDA `generate.py` loop run batched (8 prompts per call, as the official
code does), written below as plainly as the original, on random-weight LLaDAs of tiny-llada's size at a 32k and at a
small vocabulary (prompts of different lengths, left-padded with an attention mask on both sides): tokens/s and
whether every output token matches.

Part 2, long answers: the counting model (`demo/counting.py`: "Count from 118 to 0" answered with 100-240 numbers,
a tiny LLaDA trained on canvases of 256 and 1,024 answer positions, built once and cached in the workspace) answers
`--problems` held-out problems in batches of `--batch`, at 256 and 1,024 new tokens, blocks of 32, one step per
token, in each mode of `MODES`. For each mode and length: the speed-up over the exact sampler (wall time for the
same problems), task accuracy (every number right) and its drop against exact, NFE per prompt (each row's own
forward passes, `SampleOutput.row_nfe`). Batch efficiency: NFE per prompt at batch `--batch` over NFE per prompt
with each problem alone, for the best mode.

Which modes are exact: `exact` is the official sampler (token ids equal, part 1); `stop` (stop each row once its
answer has ended) leaves every answer as `exact` gives it; the caches (Fast-dLLM's prefix and dual, the elastic
cache after Elastic-Cache, at its default refresh similarity), the threshold and the suffix window (DPad) are
approximate, and their accuracy cost is what part 2 measures. NFE counts an elastic-cache refresh as one more
forward pass. Thresholds: Fast-dLLM's 0.9, and 0.99 (`parallel99`), which keeps every answer on the counting model
at 1,024 tokens where 0.9 loses 3 of 16 without a cache or with the dual cache.

Part 3, what the elastic cache's refreshes buy: at the longest length, with threshold 0.99 and `stop_at_end`, for
each refresh similarity in `SIMILARITIES` and for the dual cache, every pass is also run without a cache on the same
canvas: the mean total variation between the two block distributions, how often their argmaxes agree, passes per
answer (refreshes counted) and accuracy (``variation_from_uncached_<similarity or "dual">``,
``agreement_with_uncached_<...>``, ``nfe_refresh_<...>``, ``accuracy_refresh_<...>``).

The last line printed is one JSON object: ``speedup_<length>_<mode>``, ``accuracy_<length>_<mode>``,
``nfe_<length>_<mode>``; ``speedup_1024_best`` (the fastest mode whose accuracy is within one point of exact at
1,024), ``best_mode``, ``accuracy_drop_best``, ``batch8_nfe_ratio`` (that mode's NFE per prompt at batch 8 over
batch 1, at 1,024), ``outputs_identical_exact`` (ours = official batched at both vocabularies) and
``official_ratio_vocab_32k``/``official_ratio_small_vocab`` (ours exact over official batched, tokens/s).

Run: ``python bench/sample.py`` (``--help`` for sizes; the first run trains the counting model: about 21 minutes on
one CPU thread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from common import add_threads_argument

import dlm  # noqa: F401  (registers LLaDA with the Auto classes)
from demo.counting import TEST_SIZE, TrainSettings, build_task, chat, counting_model, is_correct
from dlm.forward import logits_at_positions
from dlm.generation import decode_answers, encode_prompts
from dlm.loading import LoadedModel, load_model_and_tokenizer
from dlm.models import LLaDAConfig, LLaDAModelLM
from dlm.samplers.common import BlockLogits
from dlm.samplers.elastic import ElasticLogits
from dlm.samplers.llada import generate_llada

BLOCK_LENGTH = 32
THRESHOLD = 0.9  # Fast-dLLM's
HIGH_THRESHOLD = 0.99  # at 1,024 tokens the counting model is confidently wrong at 0.9 on 3 problems of 16
WINDOW = 32  # suffix positions kept in view after the block (DPad)
MAX_ACCURACY_DROP = 0.01
SIMILARITIES = (0.0, 0.9, 0.95, 1.0)  # the elastic cache's refresh similarities compared in part 3
MODES = {
    "exact": {},
    "prefix": {"cache": "prefix"},
    "dual": {"cache": "dual"},
    "stop": {"stop_at_end": True},
    "dual_parallel": {"cache": "dual", "parallel_threshold": THRESHOLD},
    "dual_parallel_stop": {"cache": "dual", "parallel_threshold": THRESHOLD, "stop_at_end": True},
    "parallel_stop_window": {"parallel_threshold": THRESHOLD, "stop_at_end": True, "suffix_window": WINDOW},
    "dual_parallel_stop_window": {
        "cache": "dual",
        "parallel_threshold": THRESHOLD,
        "stop_at_end": True,
        "suffix_window": WINDOW,
    },
    "parallel99_stop": {"parallel_threshold": HIGH_THRESHOLD, "stop_at_end": True},
    "prefix_parallel99_stop": {"cache": "prefix", "parallel_threshold": HIGH_THRESHOLD, "stop_at_end": True},
    "dual_parallel99_stop": {"cache": "dual", "parallel_threshold": HIGH_THRESHOLD, "stop_at_end": True},
    "elastic": {"cache": "elastic"},
    "elastic_parallel_stop": {"cache": "elastic", "parallel_threshold": THRESHOLD, "stop_at_end": True},
    "elastic_parallel99_stop": {"cache": "elastic", "parallel_threshold": HIGH_THRESHOLD, "stop_at_end": True},
}


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


@dataclass
class ModeRun:
    seconds: float
    accuracy: float
    nfe_per_prompt: float


def counting_problems(args: argparse.Namespace) -> tuple[LoadedModel, list[dict[str, str]]]:
    """The counting model (trained on first use) and `--problems` of its held-out test problems."""
    settings = TrainSettings() if args.train_steps is None else TrainSettings(steps=args.train_steps)
    loaded = load_model_and_tokenizer(counting_model(args.workspace, settings, threads=args.threads))
    return loaded, build_task(seed=settings.seed).rows["test"][: args.problems]


def decode_problems(
    loaded: LoadedModel, rows: list[dict[str, str]], options: dict, gen_length: int, batch: int
) -> tuple[ModeRun, list[str]]:
    """Answer `rows` in batches of `batch` with the LLaDA sampler: wall time, accuracy, NFE per prompt; answers."""
    settings = {"steps": gen_length, "gen_length": gen_length, "block_length": min(BLOCK_LENGTH, gen_length)}
    special = loaded.special_ids
    answers, nfe, seconds = [], 0, 0.0
    for first in range(0, len(rows), batch):
        chunk = rows[first : first + batch]
        ids, attention = encode_prompts(loaded.tokenizer, [chat(row["instruction"]) for row in chunk], special.pad)
        start = time.perf_counter()
        out = generate_llada(
            loaded.model,
            ids,
            attention_mask=attention,
            mask_id=special.mask,
            eos_id=special.eos,
            eot_id=special.eot,
            **settings,
            **options,
        )
        seconds += time.perf_counter() - start
        nfe += int(out.row_nfe.sum())
        answers += decode_answers(loaded.tokenizer, special, out.sequences, ids.shape[1])
    correct = sum(is_correct(answer, row["output"]) for answer, row in zip(answers, rows, strict=True))
    return ModeRun(seconds, correct / len(rows), nfe / len(rows)), answers


def long_answers(args: argparse.Namespace) -> tuple[dict[int, dict[str, ModeRun]], str, float]:
    """Part 2: every mode at each length; the best mode at 1,024 and its batch efficiency."""
    loaded, rows = counting_problems(args)
    loaded.model.eval()
    decode_problems(loaded, rows[: args.batch], MODES["dual_parallel_stop_window"], args.lengths[0], args.batch)
    report: dict[int, dict[str, ModeRun]] = {}
    for length in args.lengths:
        report[length] = {}
        for mode, options in MODES.items():
            report[length][mode], _ = decode_problems(loaded, rows, options, length, args.batch)
            run = report[length][mode]
            exact = report[length]["exact"]
            print(
                f"{length:5d} tokens  {mode:28s} {exact.seconds / run.seconds:7.2f}x  accuracy {run.accuracy:.3f} "
                f"(drop {exact.accuracy - run.accuracy:+.3f})  NFE per prompt {run.nfe_per_prompt:7.1f}",
                flush=True,
            )
    at_1024 = report[args.lengths[-1]]
    safe = [mode for mode, run in at_1024.items() if at_1024["exact"].accuracy - run.accuracy <= MAX_ACCURACY_DROP]
    best = max(safe, key=lambda mode: at_1024["exact"].seconds / at_1024[mode].seconds)
    alone, _ = decode_problems(loaded, rows, MODES[best], args.lengths[-1], 1)
    ratio = at_1024[best].nfe_per_prompt / alone.nfe_per_prompt
    print(f"best mode at {args.lengths[-1]}: {best}; NFE per prompt at batch {args.batch} over batch 1: {ratio:.3f}")
    return report, best, ratio


@contextmanager
def against_uncached(model: torch.nn.Module, cache: type) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While active, every pass of the cache (`ElasticLogits` or `BlockLogits`) is also run without a cache on the
    same canvas; the dict collects, per block position, the total variation between the two distributions and
    whether their argmaxes agree."""
    seen: dict[str, list[torch.Tensor]] = {"variation": [], "agreement": []}
    cached_call = cache.__call__

    def compared(self, x, rows, starts, refresh):
        logits = cached_call(self, x, rows, starts, refresh)
        columns = starts[:, None] + torch.arange(self.block_length, device=x.device)
        where = torch.zeros(len(rows), x.shape[1], dtype=torch.bool, device=x.device).scatter(1, columns, True)
        mask = None if self.attention_mask is None else self.attention_mask[rows]
        exact = logits_at_positions(model, x[rows], mask, where).float().view_as(logits).softmax(-1)
        cached = logits.softmax(-1)
        seen["variation"].append(0.5 * (exact - cached).abs().sum(-1).flatten())
        seen["agreement"].append((exact.argmax(-1) == cached.argmax(-1)).float().flatten())
        return logits

    cache.__call__ = compared
    try:
        yield seen
    finally:
        cache.__call__ = cached_call


def refresh_fidelity(args: argparse.Namespace) -> dict[str, float]:
    """Part 3: what the elastic cache's refreshes buy, at each of `SIMILARITIES`, with the dual cache for reference
    (threshold 0.99, stop at the end, the longest length): each pass's block distribution against the uncached
    model's on the same canvas (mean total variation, argmax agreement), passes per answer (refreshes counted) and
    accuracy."""
    loaded, rows = counting_problems(args)
    loaded.model.eval()
    runs = {"dual": (BlockLogits, {"cache": "dual"})}
    runs |= {str(s): (ElasticLogits, {"cache": "elastic", "refresh_similarity": s}) for s in SIMILARITIES}
    figures = {}
    for name, (cache, options) in runs.items():
        options |= {"parallel_threshold": HIGH_THRESHOLD, "stop_at_end": True}
        with against_uncached(loaded.model, cache) as seen:
            run, _ = decode_problems(loaded, rows, options, args.lengths[-1], args.batch)
        variation, agreement = torch.cat(seen["variation"]).mean(), torch.cat(seen["agreement"]).mean()
        print(
            f"{'dual cache' if name == 'dual' else f'elastic cache, refresh similarity {name}'}: total variation from uncached "
            f"{variation:.4f}, argmax agreement {agreement:.4f}, passes per answer {run.nfe_per_prompt:.1f}, "
            f"accuracy {run.accuracy:.3f}",
            flush=True,
        )
        figures |= {
            f"variation_from_uncached_{name}": round(float(variation), 5),
            f"agreement_with_uncached_{name}": round(float(agreement), 5),
            f"nfe_refresh_{name}": round(run.nfe_per_prompt, 2),
            f"accuracy_refresh_{name}": round(run.accuracy, 4),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="part 1's prompts")
    parser.add_argument("--block-length", type=int, default=32, help="part 1's block length")
    parser.add_argument("--official-gen-length", type=int, default=64, help="part 1's new tokens")
    parser.add_argument("--small-vocab", type=int, default=1024)
    parser.add_argument("--problems", type=int, default=16, help="held-out counting problems per mode (part 2)")
    parser.add_argument("--batch", type=int, default=8, help="part 2's batch size")
    parser.add_argument("--workspace", type=Path, default=None, help="where the counting model is cached")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024], help="part 2's new tokens")
    parser.add_argument("--train-steps", type=int, default=None, help="the counting model's (default: its own)")
    parser.add_argument("--rounds", type=int, default=3, help="part 1's timed rounds")
    add_threads_argument(parser)
    args = parser.parse_args()
    if not 1 <= args.problems <= TEST_SIZE:
        parser.error(f"--problems must be 1..{TEST_SIZE} (the held-out test problems), got {args.problems}")
    torch.set_num_threads(args.threads)

    ratio_32k, identical_32k = against_official(32768, args)
    ratio_small, identical_small = against_official(args.small_vocab, args)
    report, best, batch_ratio = long_answers(args)
    fidelity = refresh_fidelity(args)
    figures = {}
    for length, runs in report.items():
        for mode, run in runs.items():
            figures[f"speedup_{length}_{mode}"] = round(runs["exact"].seconds / run.seconds, 3)
            figures[f"accuracy_{length}_{mode}"] = round(run.accuracy, 4)
            figures[f"nfe_{length}_{mode}"] = round(run.nfe_per_prompt, 2)
    at_1024 = report[args.lengths[-1]]
    print(
        json.dumps(
            {
                "speedup_1024_best": figures[f"speedup_{args.lengths[-1]}_{best}"],
                "best_mode": best,
                "accuracy_drop_best": round(at_1024["exact"].accuracy - at_1024[best].accuracy, 4),
                "batch8_nfe_ratio": round(batch_ratio, 3),
                "outputs_identical_exact": identical_32k and identical_small,
                "official_ratio_vocab_32k": round(ratio_32k, 3),
                "official_ratio_small_vocab": round(ratio_small, 3),
                **figures,
                **fidelity,
            }
        )
    )


if __name__ == "__main__":
    main()
