"""Sampler speed: dlm's batched LLaDA and Dream samplers vs a straightforward one-prompt-at-a-time loop of the
official algorithms (LLaDA `generate.py`, Dream `diffusion_generate`), written below as plainly as the originals.

Same tiny checkpoint, same prompts (different lengths; ours left-pads them into one batch with an attention mask),
temperature 0 and the same number of forward passes per prompt. The reference runs the full model (logits at every
position) once per step and prompt; ours runs one forward per step for the whole batch and applies the output head
only where tokens can be revealed. Runs alternate (order flipped each round) after a warm-up, on one thread unless
`--threads` says otherwise; times are medians. Tokens per second count generated tokens other than EOS, identical on
both sides when the outputs are.

The last line printed is ``{"tokens_per_sec_ratio": ours / reference (the smaller of LLaDA and Dream),
"outputs_identical": true if every output token matched}``.
Run: ``python bench/sample.py`` (well under a minute on 2 CPU cores; ``--help`` for sizes).
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
from transformers import AutoModelForMaskedLM

import dlm  # noqa: F401  (registers LLaDA and Dream with the Auto classes)
from dlm.samplers import generate_dream, generate_llada

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden"


@torch.no_grad()
def reference_llada(model, prompt, steps, gen_length, block_length, mask_id):
    """Official LLaDA sampling for one prompt [1, P] at temperature 0 with low-confidence remasking."""
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for block in range(num_blocks):
        start = prompt.shape[1] + block * block_length
        masks_in_block = int((x[:, start : start + block_length] == mask_id).sum())
        schedule = [
            masks_in_block // steps_per_block + (i < masks_in_block % steps_per_block) for i in range(steps_per_block)
        ]
        for count in schedule:
            mask_index = x == mask_id
            logits = model(x).logits
            x0 = logits.argmax(-1)
            p = F.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, start + block_length :] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            _, chosen = torch.topk(confidence[0], k=count)
            x[0, chosen] = x0[0, chosen]
    return x


@torch.no_grad()
def reference_dream(model, prompt, steps, max_new_tokens, alg, mask_id, eps=1e-3):
    """Official Dream sampling for one prompt [1, P] at temperature 0 (no top-p/top-k, alg_temp 0)."""
    x = F.pad(prompt, (0, max_new_tokens), value=mask_id)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits = model(x).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        probs = torch.softmax(logits[mask_index], dim=-1)
        confidence, x0 = probs.max(dim=-1)
        if alg == "topk_margin":
            top = probs.sort(dim=-1, descending=True).values
            confidence = top[:, 0] - top[:, 1]
        elif alg == "entropy":
            confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
        t, s = timesteps[i], timesteps[i + 1]
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        count = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full_confidence[mask_index] = confidence
        if count > 0:
            _, chosen = torch.topk(full_confidence, count)
            candidate = torch.full_like(x, mask_id)
            candidate[mask_index] = x0
            x[0, chosen[0]] = candidate[0, chosen[0]]
    return x


def left_pad(prompts: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        attention[row, width - len(prompt) :] = 1
    return ids, attention


def compare(
    name: str,
    ours: Callable[[], tuple],
    reference_one: Callable[[torch.Tensor], torch.Tensor],
    prompts: list[torch.Tensor],
    eos_id: int,
    rounds: int,
    reference_nfe: int,
) -> tuple[float, bool]:
    """Time both alternately; print tokens/s of each and whether their outputs agree; return (ratio, identical)."""
    runs = {"ours": ours, "reference": lambda: [reference_one(p.unsqueeze(0)) for p in prompts]}
    ours(), reference_one(prompts[0].unsqueeze(0))  # warm-up
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    results: dict[str, object] = {}
    for round_ in range(rounds):
        for label in ("ours", "reference") if round_ % 2 == 0 else ("reference", "ours"):
            start = time.perf_counter()
            results[label] = runs[label]()
            times[label].append(time.perf_counter() - start)
    (sequences, nfe_ours), outputs = results["ours"], results["reference"]
    width = sequences.shape[1] - max(len(p) for p in prompts)  # generated length
    identical = all(
        sequences[row, sequences.shape[1] - len(p) - width :].tolist() == outputs[row][0].tolist()
        for row, p in enumerate(prompts)
    )
    tokens = int((sequences[:, -width:] != eos_id).sum())
    rates = {label: tokens / statistics.median(values) for label, values in times.items()}
    ratio = rates["ours"] / rates["reference"]
    print(
        f"{name}: {len(prompts)} prompts, {tokens} generated non-EOS tokens, "
        f"NFE per prompt: ours {nfe_ours}, reference {reference_nfe}"
    )
    print(f"  ours (batched):        {rates['ours']:9.1f} tokens/s  (median {statistics.median(times['ours']):.3f} s)")
    print(
        f"  reference (per prompt): {rates['reference']:8.1f} tokens/s  "
        f"(median {statistics.median(times['reference']):.3f} s)"
    )
    print(f"  ratio {ratio:.2f}x, outputs identical: {identical}")
    return ratio, identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--block-length", type=int, default=8)
    parser.add_argument("--dream-steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.prompts < 8:
        parser.error("--prompts must be at least 8")
    torch.manual_seed(0)
    lengths = torch.randint(4, 25, (args.prompts,)).tolist()
    prompts = [torch.randint(5, 60, (length,)) for length in lengths]

    llada = AutoModelForMaskedLM.from_pretrained(FIXTURES / "llada-tiny").eval()
    mask_id, eos_id = llada.config.mask_token_id, llada.config.eos_token_id
    ids, attention = left_pad(prompts, eos_id)
    settings = {"steps": args.gen_length, "gen_length": args.gen_length, "block_length": args.block_length}

    def ours_llada() -> tuple:
        out = generate_llada(llada, ids, attention_mask=attention, mask_id=mask_id, eos_id=eos_id, **settings)
        return out.sequences, out.nfe

    def reference_llada_one(prompt: torch.Tensor) -> torch.Tensor:
        return reference_llada(llada, prompt, mask_id=mask_id, **settings)

    llada_ratio, llada_same = compare(
        "LLaDA", ours_llada, reference_llada_one, prompts, eos_id, args.rounds, settings["steps"]
    )

    dream = AutoModelForMaskedLM.from_pretrained(FIXTURES / "dream-tiny").eval()
    mask_id, eos_id = dream.config.mask_token_id, dream.config.eos_token_id
    ids, attention = left_pad(prompts, eos_id)
    dream_settings = {"steps": args.dream_steps, "max_new_tokens": args.gen_length, "alg": "entropy"}

    def ours_dream() -> tuple:
        out = generate_dream(dream, ids, attention_mask=attention, mask_id=mask_id, eos_id=eos_id, **dream_settings)
        return out.sequences, out.nfe

    def reference_dream_one(prompt: torch.Tensor) -> torch.Tensor:
        return reference_dream(dream, prompt, mask_id=mask_id, **dream_settings)

    dream_ratio, dream_same = compare(
        "Dream (entropy)", ours_dream, reference_dream_one, prompts, eos_id, args.rounds, args.dream_steps
    )
    print(
        json.dumps(
            {
                "tokens_per_sec_ratio": round(min(llada_ratio, dream_ratio), 3),
                "outputs_identical": llada_same and dream_same,
            }
        )
    )


if __name__ == "__main__":
    main()
