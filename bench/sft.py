"""Training-step benchmark: a full SFT step (forward, backward, gradient clipping, AdamW step) with our diffusion
loss (logits at masked positions only) vs the same step with the loss as the reference trainers write it (dllm's
MDLM trainer, LLaDA's SFT guidelines): full logits [B, L, V] at every position, cross-entropy everywhere, then keep
the masked positions.

Each side trains its own copy of one tiny LLaDA-shaped model (same initial weights) with its own AdamW, on the same
SFT-shaped batches (prompt not maskable, response and EOS padding maskable) with the same masks and times, steps
alternating; so both models go through the same updates and their losses must agree. It runs at a vocabulary of
32k (a real checkpoint's regime, where the output head dominates activation memory) and at a small one.

Peak memory is the peak of live tensor bytes during one step above what was live before it (activations, logits,
gradients; the optimizer's state exists from the warm-up step on), measured as bench/common.py describes, in a
pass apart from the timed iterations.

The last line printed is a JSON object with the ratios ours / reference at each vocabulary
(`throughput_ratio_v{vocab}`, `memory_ratio_v{vocab}`; tokens per second of the step, peak memory),
`throughput_ratio` and `memory_ratio` at `--vocab`, and the largest loss difference between the two sides.

    python bench/sft.py                # CPU: a few minutes on 2 cores
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


def full_step(model: LLaDAModelLM, loss_of: Callable[[dict, torch.Tensor, torch.Tensor], torch.Tensor]) -> Step:
    """A trainer's whole step around `loss_of`: backward, clip to norm 1, AdamW step, gradients cleared."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: dict, t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        loss = loss_of(batch, t, masked)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def ours(model: LLaDAModelLM, config: LossConfig) -> Step:
    return full_step(
        model, lambda batch, t, masked: diffusion_loss(model, batch, masked=masked, t=t, config=config).loss
    )


def reference(model: LLaDAModelLM, config: LossConfig) -> Step:
    def loss_of(batch: dict, t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        ids = batch["input_ids"]
        logits = model(input_ids=ids.masked_fill(masked, config.mask_token_id)).logits.float()
        token_nll = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        token_nll = token_nll * token_weights(config, t, masked) * masked
        return token_nll.sum() / (batch["labels"] != -100).sum().clamp_min(1)

    return full_step(model, loss_of)


def compare(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float], float]:
    """Throughput and peak memory of each side at `args.vocab`, and the largest loss difference."""
    models = {"ours": build_model(args), "reference": build_model(args)}  # same seed: same initial weights
    config = LossConfig.for_family("llada", MASK_ID)
    batches = make_batches(args, config)
    steps = {"ours": ours(models["ours"], config), "reference": reference(models["reference"], config)}
    masked_share = statistics.mean(m.float().mean().item() for _, _, m in batches)
    print(
        f"device={args.device} vocab={args.vocab} d_model={args.d_model} layers={args.layers} "
        f"batch={args.batch} length={args.length} masked positions={masked_share:.1%}",
        flush=True,
    )
    for step in steps.values():  # the optimizer's state exists before memory is measured
        step(*batches[0])
    peaks = {name: peak_step_bytes(models[name], step, batches[0], args.device) for name, step in steps.items()}
    times, losses = time_alternating(models["ours"], steps, batches, args.iters, args.device)
    max_loss_diff = max([0.0, *(abs(loss["ours"] - loss["reference"]) for loss in losses)])
    tokens = args.batch * args.length
    throughput = {name: tokens / statistics.median(values) for name, values in times.items()}
    for name in steps:
        print(f"{name:>16}: {throughput[name]:10.0f} tokens/s   peak {peaks[name] / 2**20:8.1f} MiB", flush=True)
    return throughput, peaks, max_loss_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--small-vocab", type=int, default=512, help="the small vocabulary, beside --vocab")
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

    result: dict[str, float] = {}
    worst = 0.0
    main_vocab = args.vocab
    for vocab in (main_vocab, args.small_vocab):
        args.vocab = vocab
        throughput, peaks, diff = compare(args)
        result[f"throughput_ratio_v{vocab}"] = round(throughput["ours"] / throughput["reference"], 3)
        result[f"memory_ratio_v{vocab}"] = round(peaks["ours"] / peaks["reference"], 3)
        worst = max(worst, diff)
    result["throughput_ratio"] = result[f"throughput_ratio_v{main_vocab}"]
    result["memory_ratio"] = result[f"memory_ratio_v{main_vocab}"]
    print(json.dumps({**result, "max_loss_diff": worst}), flush=True)


if __name__ == "__main__":
    main()
