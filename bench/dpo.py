"""ELBO-DPO training-step benchmark: dlm's estimator (`dlm.preference_loss`) against the straightforward one.

Both train the same LoRA adapters of the same LLaDA-shaped model with a large vocabulary (the regime of real
checkpoints, where the output head dominates), on the same preference pairs (prompts and responses of different
lengths, right-padded), with the same n = 8 masks per response shared by policy and reference, so their losses
must agree to float rounding.

- ours, the trainer's default path: the reference is the same model with its LoRA adapters disabled (no second
  copy), logits only at the masked positions, and `per_sample_backward` (the default for n >= 4): ELBOs estimated
  without gradients, then one sample back-propagated at a time with the fixed d loss / d ELBO;
- ours with `keep_graphs`: the same, keeping the graphs of all n samples;
- straightforward: a frozen copy of the model as the reference, full logits [n x 2B, L, V] at every position,
  log-softmax, the masked positions kept, all graphs kept, one backward pass.

Peak memory of a step is the weights the method holds (the model with its adapters, plus the reference copy when
there is one) plus the peak of the tensor bytes created during the step (activations, logits, gradients), measured
as bench/common.py describes, in a pass of its own. Times are medians of alternating runs after a warm-up, on one
CPU thread unless `--threads` says otherwise. The SFT term of the trainer is left out: it is the same for every
method.

The last line printed is a JSON object with ratios ours / straightforward: `step_time_ratio` and `memory_ratio` of
the default path, `memory_ratio_per_sample_backward` (the same mode as the default at n = 8),
`step_time_ratio_keep_graphs` and `memory_ratio_keep_graphs`, and `max_loss_diff` over all methods and steps.

    python bench/dpo.py                # CPU: about a minute on one thread
    python bench/dpo.py --device cuda  # bigger defaults on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable

import torch
from common import add_model_arguments, add_threads_argument, peak_step_bytes, random_llada, time_alternating

from dlm.lora import apply_lora
from dlm.preference_loss import (
    ElboDPOSettings,
    draw_pair_masks,
    elbo_dpo_loss,
    pair_losses,
    pair_scores,
    response_elbos,
)
from dlm.trainers.dpo_trainer import PreferenceCollator

BOS_ID, EOS_ID, MASK_ID = 1, 2, 3
Step = Callable[[dict, torch.Tensor], torch.Tensor]


def build_models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(policy: the model with LoRA adapters, reference: a frozen copy of the model without them)."""
    base = random_llada(
        args,
        args.prompt * 2 + args.response * 2,
        mask_token_id=MASK_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        bos_token_id=BOS_ID,
    )
    reference = copy.deepcopy(base).eval().requires_grad_(False)
    policy = apply_lora(base, "llada", r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0).train()
    # Non-zero adapters, as after some training: the policy differs from the reference and the loss from ln 2.
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return policy, reference


def make_batches(args: argparse.Namespace, settings: ElboDPOSettings) -> list[tuple[dict, torch.Tensor]]:
    """Preference batches (prompts of prompt/2..prompt tokens, responses of response/2..response tokens) and their
    masks."""
    generator = torch.Generator().manual_seed(args.seed)

    def ids(low: int, high: int) -> list[int]:
        length = int(torch.randint(low, high + 1, (1,), generator=generator))
        return torch.randint(10, args.vocab, (length,), generator=generator).tolist()

    collate = PreferenceCollator(EOS_ID)
    batches = []
    for b in range(args.batches):
        rows = [
            {
                "id": f"{b}-{i}",
                "prompt_ids": ids(args.prompt // 2, args.prompt),
                "chosen_ids": ids(args.response // 2, args.response),
                "rejected_ids": ids(args.response // 2, args.response),
            }
            for i in range(args.pairs)
        ]
        batch = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in collate(rows).items()}
        batches.append((batch, draw_pair_masks(batch, args.mc_samples, args.seed, "bench")))
    return batches


def ours(policy: torch.nn.Module, settings: ElboDPOSettings, per_sample: bool) -> Step:
    def backward(unit: Callable[[], torch.Tensor], last: bool) -> None:
        unit().backward()

    def step(batch: dict, masks: torch.Tensor) -> torch.Tensor:
        policy.eval()  # the trainer scores the reference in eval mode
        with torch.no_grad(), policy.disable_adapter():
            reference = response_elbos(policy, batch, masks, settings)
        policy.train()
        pairs = len(batch["example_ids"])
        out = elbo_dpo_loss(
            policy, batch, masks, reference, settings, normaliser=pairs, backward=backward if per_sample else None
        )
        if not per_sample:
            out.loss.backward()
        return out.loss.detach()

    return step


def full_logits_elbos(model: torch.nn.Module, batch: dict, masks: torch.Tensor) -> torch.Tensor:
    """ELBOs [2B] from full logits of all n x 2B masked sequences in one forward pass."""
    n = masks.shape[0]
    ids, response = batch["input_ids"], batch["response_mask"]
    noisy = ids.masked_fill(masks, MASK_ID).flatten(0, 1)
    logits = model(input_ids=noisy, attention_mask=batch["attention_mask"].repeat(n, 1)).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.repeat(n, 1).unsqueeze(-1)).squeeze(-1)
    masked = masks.flatten(0, 1)
    terms = (log_probs * masked).double().sum(-1) * response.sum(-1).repeat(n) / masked.sum(-1)
    return terms.reshape(n, -1).mean(0)


def straightforward(policy: torch.nn.Module, reference: torch.nn.Module, settings: ElboDPOSettings) -> Step:
    def step(batch: dict, masks: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            reference_logps = full_logits_elbos(reference, batch, masks)
        scores = pair_scores(full_logits_elbos(policy, batch, masks), reference_logps, settings.beta)
        loss = pair_losses(scores, settings.beta, settings.loss_type).mean()
        loss.backward()
        return loss.detach()

    return step


def resident_bytes(*models: torch.nn.Module) -> int:
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for m in models for t in m.state_dict().values()
    }
    return sum(storages.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--pairs", type=int, default=None, help="pairs per batch; default: 2 on CPU, 4 on CUDA")
    parser.add_argument("--prompt", type=int, default=None, help="longest prompt; default: 32 on CPU, 128 on CUDA")
    parser.add_argument("--response", type=int, default=None, help="longest response; default 64 CPU, 256 CUDA")
    parser.add_argument("--mc-samples", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per method (default 3 CPU, 10 CUDA)")
    parser.add_argument("--batches", type=int, default=2, help="distinct batches, cycled")
    add_threads_argument(parser)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.d_model = args.d_model or (1024 if cuda else 128)
    args.pairs = args.pairs or (4 if cuda else 2)
    args.prompt = args.prompt or (128 if cuda else 32)
    args.response = args.response or (256 if cuda else 64)
    args.iters = args.iters or (10 if cuda else 3)
    if not cuda:
        torch.set_num_threads(args.threads)

    policy, reference = build_models(args)
    settings = ElboDPOSettings(mask_id=MASK_ID, shift=False, beta=0.2, loss_type="sigmoid", block_size=None)
    batches = make_batches(args, settings)
    steps = {
        "ours (per_sample_backward)": ours(policy, settings, per_sample=True),
        "ours (keep_graphs)": ours(policy, settings, per_sample=False),
        "straightforward": straightforward(policy, reference, settings),
    }
    held = {name: resident_bytes(policy) for name in steps}
    held["straightforward"] = resident_bytes(policy, reference)
    masked_share = statistics.mean(m.float().mean().item() for _, m in batches)
    print(
        f"device={args.device} vocab={args.vocab} d_model={args.d_model} layers={args.layers} pairs={args.pairs} "
        f"length<={batches[0][0]['input_ids'].shape[1]} n={args.mc_samples} masked positions={masked_share:.1%}",
        flush=True,
    )

    peaks = {name: held[name] + peak_step_bytes(policy, step, batches[0], args.device) for name, step in steps.items()}
    times, losses = time_alternating(policy, steps, batches, args.iters, args.device)
    last_loss = losses[-1]
    max_loss_diff = max(abs(loss - round_["straightforward"]) for round_ in losses for loss in round_.values())

    median = {name: statistics.median(values) for name, values in times.items()}
    base = "straightforward"
    for name in steps:
        print(
            f"{name:>28}: step {median[name] * 1e3:9.1f} ms ({median[name] / median[base]:.3f}x)   "
            f"peak {peaks[name] / 2**20:9.1f} MiB ({peaks[name] / peaks[base]:.3f}x)   loss {last_loss[name]:.6f}",
            flush=True,
        )
    default, kept = "ours (per_sample_backward)", "ours (keep_graphs)"
    result = {
        "step_time_ratio": round(median[default] / median[base], 3),
        "memory_ratio": round(peaks[default] / peaks[base], 3),
        "memory_ratio_per_sample_backward": round(peaks[default] / peaks[base], 3),
        "step_time_ratio_keep_graphs": round(median[kept] / median[base], 3),
        "memory_ratio_keep_graphs": round(peaks[kept] / peaks[base], 3),
        "max_loss_diff": max_loss_diff,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
