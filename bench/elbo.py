"""ELBO throughput: dlm's batched estimator (`dlm.elbo.elbo_terms`: many Monte-Carlo samples x rows per forward,
output head at masked positions only) vs one sample per forward pass, written below as plainly as LLaDA's
`get_log_likelihood.py` scores a sample (full logits, log-softmax, sum over the masked positions).

Same tiny checkpoint (LLaDA, and Dream with its shifted logits), same sequences (prompts and responses of different
lengths, right-padded, padding never scored) and the very same masks (`mc_num` per sequence) on both sides, so the
estimates must agree to float32 rounding. Runs alternate (order flipped each round) after a warm-up, on one thread
unless `--threads` says otherwise; times are medians.

The last line printed is ``{"throughput_ratio": batched / one-per-forward sequences per second (the smaller of the two
families), "max_abs_diff": the largest |difference| between the two ELBO estimates of a sequence}``.
Run: ``python bench/elbo.py`` (well under a minute on 2 CPU cores; ``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import add_threads_argument
from transformers import AutoModelForMaskedLM

import dlm  # noqa: F401  (registers LLaDA and Dream with the Auto classes)
from dlm.elbo import draw_elbo_masks, elbo_terms

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden"


@torch.no_grad()
def one_sample_per_forward(model, input_ids, response_mask, masks, mask_id, shift):
    """ELBO terms [n, B], one forward pass per (sample, sequence), full logits."""
    terms = torch.zeros(masks.shape[:2], dtype=torch.float64)
    for row in range(input_ids.shape[0]):
        clean = input_ids[row : row + 1]
        length = int(response_mask[row].sum())
        for sample in range(masks.shape[0]):
            mask = masks[sample, row : row + 1]
            logits = model(clean.masked_fill(mask, mask_id)).logits
            if shift:
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, clean.unsqueeze(-1)).squeeze(-1)
            terms[sample, row] = log_probs[mask].double().sum() * length / int(mask.sum())
    return terms


def run_family(name: str, args: argparse.Namespace) -> tuple[float, float]:
    model = AutoModelForMaskedLM.from_pretrained(FIXTURES / name).eval()
    mask_id, shift = model.config.mask_token_id, name.startswith("dream")
    generator = torch.Generator().manual_seed(0)
    prompt_lengths = torch.randint(8, 17, (args.sequences,), generator=generator).tolist()
    response_lengths = torch.randint(16, 33, (args.sequences,), generator=generator).tolist()
    width = max(p + r for p, r in zip(prompt_lengths, response_lengths, strict=True))
    input_ids = torch.full((args.sequences, width), model.config.eos_token_id, dtype=torch.long)
    response_mask = torch.zeros(args.sequences, width, dtype=torch.bool)
    for row, (prompt, response) in enumerate(zip(prompt_lengths, response_lengths, strict=True)):
        input_ids[row, : prompt + response] = torch.randint(5, 60, (prompt + response,), generator=generator)
        response_mask[row, prompt : prompt + response] = True
    masks = draw_elbo_masks(response_mask, args.mc_num, generator)

    def batched() -> torch.Tensor:
        with torch.no_grad():
            return elbo_terms(
                model, input_ids, response_mask, masks, mask_id=mask_id, shift=shift, batch_size=args.batch_size
            )

    def single() -> torch.Tensor:
        return one_sample_per_forward(model, input_ids, response_mask, masks, mask_id, shift)

    runs = {"batched": batched, "one per forward": single}
    batched(), one_sample_per_forward(model, input_ids[:1], response_mask[:1], masks[:4, :1], mask_id, shift)
    times: dict[str, list[float]] = {label: [] for label in runs}
    results: dict[str, torch.Tensor] = {}
    for round_ in range(args.rounds):
        for label in list(runs) if round_ % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            results[label] = runs[label]()
            times[label].append(time.perf_counter() - start)
    rates = {label: args.sequences / statistics.median(values) for label, values in times.items()}
    ratio = rates["batched"] / rates["one per forward"]
    diff = (results["batched"].mean(0) - results["one per forward"].mean(0)).abs().max().item()
    scale = results["batched"].mean(0).abs().max().item()
    print(f"{name}: {args.sequences} sequences, mc_num {args.mc_num}, batch {args.batch_size} samples per forward")
    for label, rate in rates.items():
        print(f"  {label:16s} {rate:8.2f} sequences/s  (median {statistics.median(times[label]):.3f} s)")
    print(f"  ratio {ratio:.2f}x, max |ELBO difference| {diff:.2e} (ELBOs up to {scale:.1f} in magnitude)")
    return ratio, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--mc-num", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128, help="(sample, sequence) pairs per forward pass")
    parser.add_argument("--rounds", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [run_family(name, args) for name in ("llada-tiny", "dream-tiny")]
    print(
        json.dumps(
            {
                "throughput_ratio": round(min(ratio for ratio, _ in results), 3),
                "max_abs_diff": max(diff for _, diff in results),
            }
        )
    )


if __name__ == "__main__":
    main()
