"""ELBO throughput: dlm's estimator (`dlm.elbo.elbo_terms`: Monte-Carlo samples of several sequences packed into
one forward pass, output head at masked positions only) vs LLaDA's official `get_log_likelihood.py`, which scores
one prompt/answer pair at a time with `batch_size` (16 or 32) Monte-Carlo samples of it per forward pass, full
logits, cross-entropy at the masked positions divided by the mask ratio.

Both sides run the same random LLaDA (`bench/common.py`), on the same `--prompts` prompt/answer pairs (8 by
default, of different lengths; dlm right-pads them, the official code needs no padding as it scores one pair at a
time) with the very same masks (`mc_num` per pair), and as many sequences per forward pass on each side, so the
estimates must agree to float32 rounding. It runs at a vocabulary of 32k (a real checkpoint's regime, where the
output head dominates) and at a small one (where it does not, and packing padded rows can cost more than it saves).
Runs alternate (order flipped each round) after a warm-up, on one thread unless `--threads` says otherwise; times
are medians.

The last line printed is a JSON object: `throughput_ratio_v{vocab}_b{samples per forward}` (dlm / official pairs
per second) for each vocabulary and batch size, `throughput_ratio` (the smallest of them) and `max_rel_diff` (the
largest |difference| between the two ELBO estimates of a pair, relative to the ELBO).
Run: ``python bench/elbo.py`` (about a minute on 2 CPU cores; ``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import add_model_arguments, add_threads_argument, random_llada

from dlm.elbo import draw_elbo_masks, elbo_terms

MASK_ID, EOS_ID = 3, 2


@torch.no_grad()
def official_elbo_terms(model, input_ids, response_mask, masks, samples_per_forward):
    """ELBO terms [n, B] as `get_log_likelihood.py` computes them: per pair, its samples `samples_per_forward` at a
    time through the model (the pair alone, unpadded), full logits, cross-entropy / mask ratio summed over masks."""
    terms = torch.zeros(masks.shape[:2], dtype=torch.float64)
    for row in range(input_ids.shape[0]):
        length = int(response_mask[row].nonzero().max()) + 1  # the pair without its padding
        seq = input_ids[row, :length]
        answer = int(response_mask[row].sum())
        for first in range(0, masks.shape[0], samples_per_forward):
            mask = masks[first : first + samples_per_forward, row, :length]
            logits = model(seq.expand(len(mask), -1).masked_fill(mask, MASK_ID)).logits
            p_mask = (mask.sum(-1, keepdim=True) / answer).expand_as(mask)
            loss = F.cross_entropy(logits[mask], seq.expand(len(mask), -1)[mask], reduction="none") / p_mask[mask]
            owner = mask.nonzero()[:, 0]
            per_sample = torch.zeros(len(mask), dtype=torch.float64).index_add(0, owner, loss.double())
            terms[first : first + len(mask), row] = -per_sample
    return terms


def make_pairs(args: argparse.Namespace, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt/answer pairs [P, T] and their answer positions (the padding is never attended to)."""
    prompts = torch.randint(8, 17, (args.prompts,), generator=generator).tolist()
    answers = torch.randint(16, 33, (args.prompts,), generator=generator).tolist()
    width = max(p + a for p, a in zip(prompts, answers, strict=True))
    input_ids = torch.full((args.prompts, width), EOS_ID, dtype=torch.long)
    response_mask = torch.zeros(args.prompts, width, dtype=torch.bool)
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        input_ids[row, : prompt + answer] = torch.randint(10, args.vocab, (prompt + answer,), generator=generator)
        response_mask[row, prompt : prompt + answer] = True
    return input_ids, response_mask


def alternate(runs: dict[str, Callable[[], torch.Tensor]], rounds: int) -> tuple[dict, dict]:
    """Median seconds and the last result of each run, alternating the order every round after a warm-up."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {label: [] for label in runs}
    results: dict[str, torch.Tensor] = {}
    for round_ in range(rounds):
        for label in list(runs) if round_ % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            results[label] = runs[label]()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}, results


def run_vocab(vocab: int, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    args.vocab = vocab
    model = random_llada(args, 128, mask_token_id=MASK_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID).eval()
    generator = torch.Generator().manual_seed(args.seed)
    input_ids, response_mask = make_pairs(args, generator)
    input_ids, response_mask = input_ids.to(args.device), response_mask.to(args.device)
    masks = draw_elbo_masks(response_mask, args.mc_num, generator)
    ends = response_mask.long().argmax(-1, keepdim=True) + response_mask.sum(-1, keepdim=True)  # answers end pairs
    # each pair's own tokens only: attending to padding would change LLaDA's (bidirectional) outputs
    attention = (torch.arange(input_ids.shape[1], device=args.device) < ends).long()
    ratios, worst = {}, 0.0
    for per_forward in args.samples_per_forward:

        def ours(per_forward: int = per_forward) -> torch.Tensor:
            with torch.no_grad():
                return elbo_terms(
                    model,
                    input_ids,
                    response_mask,
                    masks,
                    mask_id=MASK_ID,
                    shift=False,
                    attention_mask=attention,
                    batch_size=per_forward,
                )

        def official(per_forward: int = per_forward) -> torch.Tensor:
            return official_elbo_terms(model, input_ids, response_mask, masks, per_forward)

        seconds, results = alternate({"dlm": ours, "official": official}, args.rounds)
        ratio = seconds["official"] / seconds["dlm"]
        estimates = {label: values.cpu().mean(0) for label, values in results.items()}
        diff = ((estimates["dlm"] - estimates["official"]).abs() / estimates["official"].abs()).max().item()
        worst = max(worst, diff)
        ratios[f"throughput_ratio_v{vocab}_b{per_forward}"] = round(ratio, 3)
        print(
            f"vocab {vocab}, {args.prompts} pairs, mc_num {args.mc_num}, {per_forward} sequences per forward: "
            f"dlm {args.prompts / seconds['dlm']:.2f} pairs/s, official {args.prompts / seconds['official']:.2f} "
            f"pairs/s, ratio {ratio:.2f}x, max relative ELBO difference {diff:.1e}",
            flush=True,
        )
    return ratios, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--small-vocab", type=int, default=512, help="the small vocabulary, beside --vocab")
    parser.add_argument("--prompts", type=int, default=8, help="prompt/answer pairs scored")
    parser.add_argument("--mc-num", type=int, default=64, help="Monte-Carlo samples per pair")
    parser.add_argument(
        "--samples-per-forward", type=int, nargs="+", default=[16, 32], help="sequences per forward pass, each side"
    )
    parser.add_argument("--rounds", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.d_model = args.d_model or (1024 if args.device.startswith("cuda") else 128)
    result: dict[str, float] = {}
    worst = 0.0
    for vocab in (args.vocab, args.small_vocab):
        ratios, diff = run_vocab(vocab, args)
        result.update(ratios)
        worst = max(worst, diff)
    print(json.dumps({**result, "throughput_ratio": min(result.values()), "max_rel_diff": worst}))


if __name__ == "__main__":
    main()
