"""Training-step benchmark: our diffusion loss (logits at masked positions only) vs the straightforward formulation.

The straightforward step is what the reference trainers do: full logits [B, L, V] for every position, cross-entropy
everywhere, then keep the masked positions. Both steps run on the same tiny LLaDA-shaped model with a large
vocabulary (the regime of real checkpoints, where the output head dominates activation memory), on the same SFT-shaped
batches (prompt not maskable, response and EOS padding maskable) with the same masks and times, alternating.

Peak memory is the peak of live tensor bytes during one step above what was live before it (activations, logits,
gradients), measured as bench/common.py describes, in a pass apart from the timed iterations.

The last line printed is a JSON object with the ratios ours / straightforward: throughput (tokens per second of the
training step), peak memory, and the largest loss difference between the two formulations.

    python bench/sft.py                # CPU: under 2 minutes on 2 cores
    python bench/sft.py --device cuda  # bigger defaults on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import add_model_arguments, peak_step_bytes, random_llada, time_alternating

from dlm.losses import LossConfig, diffusion_loss, draw_mask, token_weights
from dlm.models import LLaDAModelLM

MASK_ID, EOS_ID = 3, 2
Step = Callable[[dict, torch.Tensor, torch.Tensor], torch.Tensor]


def build_model(args: argparse.Namespace) -> LLaDAModelLM:
    model = random_llada(args, args.length, mask_token_id=MASK_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
    return model.train()


def make_batches(args: argparse.Namespace, config: LossConfig) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
    """SFT-shaped rows: a prompt of 1/4 to 1/2 of the length (label -100), a response, EOS padding (maskable)."""
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(10, args.vocab, (args.batch, args.length), generator=generator)
        labels = ids.clone()
        for row in range(args.batch):
            prompt = int(torch.randint(args.length // 4, args.length // 2, (1,), generator=generator))
            end = int(torch.randint(prompt + 1, args.length + 1, (1,), generator=generator))
            ids[row, end:] = labels[row, end:] = EOS_ID
            labels[row, :prompt] = -100
        batch = {"input_ids": ids.to(args.device), "labels": labels.to(args.device)}
        t, masked = draw_mask(batch, config, generator)
        batches.append((batch, t.to(args.device), masked.to(args.device)))
    return batches


def ours(model: LLaDAModelLM, config: LossConfig) -> Step:
    def step(batch: dict, t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        loss = diffusion_loss(model, batch, masked=masked, t=t, config=config).loss
        loss.backward()
        return loss.detach()

    return step


def straightforward(model: LLaDAModelLM, config: LossConfig) -> Step:
    def step(batch: dict, t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        ids = batch["input_ids"]
        logits = model(input_ids=ids.masked_fill(masked, config.mask_token_id)).logits
        token_nll = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        token_nll = token_nll * token_weights(config, t, masked) * masked
        loss = token_nll.sum() / (batch["labels"] != -100).sum().clamp_min(1)
        loss.backward()
        return loss.detach()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, 8 on CUDA")
    parser.add_argument("--length", type=int, default=None, help="default: 256 on CPU, 512 on CUDA")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per variant (default 4 CPU, 20 CUDA)")
    parser.add_argument("--batches", type=int, default=3, help="distinct batches, cycled")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.d_model = args.d_model or (1024 if cuda else 128)
    args.batch = args.batch or (8 if cuda else 4)
    args.length = args.length or (512 if cuda else 256)
    args.iters = args.iters or (20 if cuda else 4)

    model = build_model(args)
    config = LossConfig.for_family("llada", MASK_ID)
    batches = make_batches(args, config)
    steps = {"ours": ours(model, config), "straightforward": straightforward(model, config)}
    masked_share = statistics.mean(m.float().mean().item() for _, _, m in batches)
    print(
        f"device={args.device} vocab={args.vocab} d_model={args.d_model} layers={args.layers} "
        f"batch={args.batch} length={args.length} masked positions={masked_share:.1%}",
        flush=True,
    )

    peaks = {name: peak_step_bytes(model, step, batches[0], args.device) for name, step in steps.items()}
    times, losses = time_alternating(model, steps, batches, args.iters, args.device)
    max_loss_diff = max([0.0, *(abs(loss["ours"] - loss["straightforward"]) for loss in losses)])

    tokens = args.batch * args.length
    throughput = {name: tokens / statistics.median(values) for name, values in times.items()}
    for name in steps:
        print(f"{name:>16}: {throughput[name]:10.0f} tokens/s   peak {peaks[name] / 2**20:8.1f} MiB", flush=True)
    result = {
        "throughput_ratio": round(throughput["ours"] / throughput["straightforward"], 3),
        "memory_ratio": round(peaks["ours"] / peaks["straightforward"], 3),
        "max_loss_diff": max_loss_diff,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
