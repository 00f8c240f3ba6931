"""Block diffusion (BD3LM) against dllm's own code, side by side in one process: a training step of our loss
against dllm's `BD3LMTrainer.compute_loss`, and our block sampler against dllm's `BD3LMSampler`.

dllm (https://github.com/ZHZisZZ/dllm) is imported from the checkout that `--dllm-dir` (default: env `DLLM_DIR`)
names, without its package `__init__` files (they import every pipeline and heavy optional dependencies): the
packages above the modules used are registered as empty packages rooted in that folder, and three modules the
trainer imports but that do not touch the loss are stubbed (`dllm.utils.configs`: its TrainingArguments base;
`dllm.utils.data`: `prepend_bos`, only used with right-shifted logits; `dllm.core.trainers.utils`: the metric
meter, which only logs). Its trainer and sampler run unchanged under our transformers, on transformers'
`Qwen3ForCausalLM` with `is_causal=False` and SDPA attention (what our bd3lm family loads; dllm's a2d Qwen3 is the
same network). The trainer is made without `Trainer.__init__`, with the attributes `compute_loss` reads.

Training: each side trains its own copy of one random tiny Qwen3 (same initial weights) with its own AdamW (a
trainer's whole step: backward, gradient clipping to norm 1, AdamW step), on the same SFT-shaped batches (prompt
not maskable; response and EOS padding to a whole number of blocks maskable, as dllm's `AppendEOSBlockWrapper`
pads), steps alternating. dllm's step is `compute_loss` as it is: it draws t and the masked positions itself
(torch's global generator, seeded per batch before each step), runs the model over `x_t ⊕ x_0` with full logits
[B, 2L, V] and takes cross-entropy over the whole noisy half. Ours is `dlm.losses.diffusion_loss` with
`LossConfig(block_size=...)` (logits only at the masked positions), given the t and masked positions dllm draws
for that batch (recorded once beforehand); so both models go through the same updates and their per-step losses
must agree. Like bench/sft.py it runs at a 32k vocabulary and at a small one. Peak memory of a step is measured as
bench/common.py describes, in a pass apart from the timed steps; it holds what both sides share (the gradients,
AdamW's temporaries), so at small sizes it says more about those than about the loss.

Sampling: the same prompts (different lengths; ours left-padded with an attention mask, dllm's given as lists, as its
API takes them) at temperature 0 with low-confidence remasking, one token per step, blocks of `--block-size`, on a
random Qwen3 whose output head is scaled up so that top-1 choices are not near ties. dllm recomputes the whole prefix
(full logits) at the start of every block and deep-copies its key/value cache for every denoising step; ours keeps an
exact block-causal cache. Both are timed as they are, at both vocabularies; tokens/s counts generated tokens. dllm's
output carries extra left padding (its prompts are padded to a whole number of blocks); the rest must be identical token
for token.

Runs alternate (order flipped each round) after a warm-up, on `--threads` torch threads; times are medians.

The last line printed is a JSON object with the ratios ours / dllm at `--vocab`: `train_throughput_ratio` (tokens
per second of the training step), `train_memory_ratio` (its peak memory) and `sample_speed_ratio` (generated tokens
per second); the same at each vocabulary (`..._v{vocab}`); `max_loss_rel_diff` (largest relative difference of the
per-step losses); `sample_outputs_identical` (sampled token ids equal at both vocabularies); and
`outputs_identical`: sampled token ids equal and every loss within 1e-5 relative.

    DLLM_DIR=/path/to/dllm python bench/bd3lm.py                # CPU: a few minutes on 2 cores
    DLLM_DIR=/path/to/dllm python bench/bd3lm.py --device cuda  # bigger defaults on a GPU
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from common import add_threads_argument, peak_step_bytes, synchronize, time_alternating

from dlm.losses import LossConfig, diffusion_loss
from dlm.samplers.bd3lm import BD3LMSampler

PAD_ID, EOS_ID = 0, 2  # the mask id is the last of the vocabulary
TIME_EPSILON = 1e-3
LOSS_TOLERANCE = 1e-5  # relative, as the golden fixtures' losses


class _Meter:
    """Stands in for dllm's metric meter, which only logs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


def import_dllm(dllm_dir: Path) -> types.SimpleNamespace:
    """dllm's BD3LM trainer module, its BD3LM sampler and config classes, and its linear scheduler."""
    root = dllm_dir / "dllm"
    if not (root / "core" / "trainers" / "bd3lm.py").is_file():
        raise SystemExit(f"no dllm checkout at {dllm_dir} (it must hold dllm/core/trainers/bd3lm.py)")
    for package in ("dllm", "dllm.core", "dllm.core.trainers", "dllm.core.samplers", "dllm.utils"):
        module = types.ModuleType(package)
        module.__path__ = [str(root.parent / package.replace(".", "/"))]
        sys.modules[package] = module
    stubs = {
        "dllm.utils.configs": {"TrainingArguments": transformers.TrainingArguments},
        "dllm.utils.data": {"prepend_bos": None},
        "dllm.core.trainers.utils": {"NLLMetric": _Meter, "PPLMetric": _Meter, "OnEvaluateMetricsCallback": _Meter},
    }
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
    sampler = importlib.import_module("dllm.core.samplers.bd3lm")
    return types.SimpleNamespace(
        trainers=importlib.import_module("dllm.core.trainers.bd3lm"),
        Sampler=sampler.BD3LMSampler,
        SamplerConfig=sampler.BD3LMSamplerConfig,
        LinearAlphaScheduler=importlib.import_module("dllm.core.schedulers").LinearAlphaScheduler,
    )


def dllm_trainer(dllm: types.SimpleNamespace, mask_id: int, block_size: int, record: dict | None = None) -> Any:
    """A `BD3LMTrainer` with what `compute_loss` reads (token-normalised, scheduler-weighted loss, as dllm's
    defaults); with `record`, it stores the t and masked positions it draws there."""
    cls = dllm.trainers.BD3LMTrainer
    trainer = cls.__new__(cls)
    trainer.processing_class = types.SimpleNamespace(
        padding_side="right", mask_token_id=mask_id, eos_token_id=EOS_ID, bos_token_id=None
    )
    trainer.accelerator = types.SimpleNamespace(unwrap_model=lambda model: model)
    trainer.scheduler = dllm.LinearAlphaScheduler()
    trainer.time_epsilon, trainer.loss_weight_type, trainer.loss_norm_type = TIME_EPSILON, "scheduler", "token"
    trainer.right_shift_logits, trainer.block_size, trainer.meter = False, block_size, _Meter()
    if record is not None:

        def recording_weights(t: torch.Tensor, inputs: dict, masked_mask: torch.Tensor, **kwargs: Any) -> Any:
            record.update(t=t.clone(), masked=masked_mask.clone())
            return cls._compute_loss_weights(trainer, t=t, inputs=inputs, masked_mask=masked_mask, **kwargs)

        trainer._compute_loss_weights = recording_weights
    return trainer


def random_qwen3(args: argparse.Namespace, vocab: int, head_scale: float = 1.0) -> transformers.Qwen3ForCausalLM:
    """A random Qwen3 of `args.d_model` (64-dimensional heads, MLP twice as wide) and `args.layers`, bidirectional
    (`is_causal=False`, SDPA), seeded by `args.seed`; `head_scale` multiplies the output head."""
    torch.manual_seed(args.seed)
    config = transformers.Qwen3Config(
        vocab_size=vocab,
        hidden_size=args.d_model,
        intermediate_size=2 * args.d_model,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.d_model // 64),
        num_key_value_heads=max(1, args.d_model // 64),
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        is_causal=False,
        attn_implementation="sdpa",
    )
    model = transformers.Qwen3ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
        model.lm_head.weight[vocab - 1] = 0.0  # the mask is never a likely prediction
    return model.to(args.device)


def sft_batches(args: argparse.Namespace, vocab: int) -> list[dict[str, torch.Tensor]]:
    """Rows of `args.length` (a whole number of blocks): a prompt of 1/4 to 1/2 of it (label -100), a response,
    EOS padding with EOS labels (maskable, as dllm's `AppendEOSBlockWrapper` pads)."""
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(3, vocab - 1, (args.batch, args.length), generator=generator)
        labels = ids.clone()
        for row in range(args.batch):
            prompt = int(torch.randint(args.length // 4, args.length // 2, (1,), generator=generator))
            end = int(torch.randint(prompt + 1, args.length + 1, (1,), generator=generator))
            ids[row, end:] = labels[row, end:] = EOS_ID
            labels[row, :prompt] = -100
        batches.append({"input_ids": ids.to(args.device), "labels": labels.to(args.device)})
    return batches


Step = Callable[[dict, torch.Tensor, torch.Tensor, int], torch.Tensor]


def full_step(model: torch.nn.Module, loss_of: Step) -> Step:
    """A trainer's whole step around `loss_of`: backward, clip to norm 1, AdamW step, gradients cleared."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: dict, t: torch.Tensor, masked: torch.Tensor, seed: int) -> torch.Tensor:
        loss = loss_of(batch, t, masked, seed)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def compare_training(args: argparse.Namespace, dllm: types.SimpleNamespace, vocab: int) -> dict[str, float]:
    """Throughput and peak memory of each side's step at `vocab`, and the largest relative loss difference."""
    models = {"ours": random_qwen3(args, vocab).train(), "dllm": random_qwen3(args, vocab).train()}
    mask_id = vocab - 1
    config = LossConfig(mask_token_id=mask_id, block_size=args.block_size, time_epsilon=TIME_EPSILON)
    trainer = dllm_trainer(dllm, mask_id, args.block_size)
    batches = []
    for i, batch in enumerate(sft_batches(args, vocab)):  # the t and masks dllm draws for each batch, by its seed
        drawn: dict[str, torch.Tensor] = {}
        torch.manual_seed(args.seed + 1000 + i)
        with torch.no_grad():
            dllm_trainer(dllm, mask_id, args.block_size, record=drawn).compute_loss(models["dllm"], dict(batch))
        batches.append((batch, drawn["t"], drawn["masked"], args.seed + 1000 + i))

    def dllm_loss(batch: dict, t: torch.Tensor, masked: torch.Tensor, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return trainer.compute_loss(models["dllm"], dict(batch))

    def our_loss(batch: dict, t: torch.Tensor, masked: torch.Tensor, seed: int) -> torch.Tensor:
        return diffusion_loss(models["ours"], batch, masked=masked, t=t, config=config).loss

    steps = {"ours": full_step(models["ours"], our_loss), "dllm": full_step(models["dllm"], dllm_loss)}
    masked_share = statistics.mean(masked.float().mean().item() for _, _, masked, _ in batches)
    print(
        f"training: device={args.device} vocab={vocab} d_model={args.d_model} layers={args.layers} "
        f"batch={args.batch} length={args.length} block={args.block_size} masked positions={masked_share:.1%}",
        flush=True,
    )
    # One step each first (the optimizers' state exists before memory is measured); the losses of this step count.
    first = {name: step(*batches[0]).item() for name, step in steps.items()}
    peaks = {name: peak_step_bytes(models[name], step, batches[0], args.device) for name, step in steps.items()}
    times, losses = time_alternating(models["ours"], steps, batches, args.iters, args.device)
    rel_diff = max(abs(r["ours"] - r["dllm"]) / max(abs(r["dllm"]), 1e-12) for r in [first, *losses])
    tokens = args.batch * args.length
    throughput = {name: tokens / statistics.median(values) for name, values in times.items()}
    for name in steps:
        print(f"{name:>16}: {throughput[name]:10.0f} tokens/s   peak {peaks[name] / 2**20:8.1f} MiB", flush=True)
    print(f"{'':>16}  largest relative loss difference {rel_diff:.2e}", flush=True)
    return {
        "throughput_ratio": throughput["ours"] / throughput["dllm"],
        "memory_ratio": peaks["ours"] / peaks["dllm"],
        "loss_rel_diff": rel_diff,
    }


def time_runs_alternating(runs: dict[str, Callable[[], torch.Tensor]], rounds: int) -> tuple[dict, dict]:
    """Median seconds and last result of each run: a warm-up, then `rounds` rounds, order flipped each round."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, torch.Tensor] = {}
    for round_ in range(rounds):
        for name in list(runs) if round_ % 2 == 0 else list(reversed(runs)):
            start = time.perf_counter()
            results[name] = runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, results


def prompts(args: argparse.Namespace, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.prompt_length // 2, args.prompt_length + 1, (args.prompts,), generator=generator)
    return [torch.randint(3, vocab - 1, (int(n),), generator=generator).tolist() for n in lengths]


def compare_sampling(args: argparse.Namespace, dllm: types.SimpleNamespace, vocab: int) -> tuple[float, bool]:
    """(tokens/s ours / dllm, outputs identical) of the block samplers at `vocab`."""
    model = random_qwen3(args, vocab, head_scale=args.head_scale).eval()
    mask_id = vocab - 1
    rows = prompts(args, vocab)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for row, prompt in enumerate(rows):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention[row, width - len(prompt) :] = 1
    ids, attention = ids.to(args.device), attention.to(args.device)
    # dllm's layout (the answer starts a block), for its token ids; our default decodes in the training layout
    ours = BD3LMSampler(
        steps=args.gen_length, gen_length=args.gen_length, block_length=args.block_size, block_alignment="prompt_end"
    )
    tokenizer = types.SimpleNamespace(mask_token_id=mask_id, pad_token_id=PAD_ID, eos_token_id=None, bos_token_id=None)
    theirs = dllm.Sampler(model=model, tokenizer=tokenizer)
    theirs_config = dllm.SamplerConfig(
        max_new_tokens=args.gen_length, steps=args.gen_length, block_size=args.block_size, temperature=0.0
    )

    def timed(run: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """`run`, finished on the device before its time is read."""

        def synchronized() -> torch.Tensor:
            out = run()
            synchronize(args.device)
            return out

        return synchronized

    runs = {
        "ours": timed(
            lambda: ours.sample(model, ids, mask_id=mask_id, attention_mask=attention, pad_id=PAD_ID).sequences
        ),
        "dllm": timed(lambda: theirs.sample([list(p) for p in rows], theirs_config)),
    }
    seconds, results = time_runs_alternating(runs, args.rounds)
    extra_padding = -width % args.block_size  # dllm pads the prompts to a whole number of blocks
    identical = torch.equal(results["ours"], results["dllm"][:, extra_padding:])
    tokens = len(rows) * args.gen_length
    rates = {name: tokens / seconds[name] for name in runs}
    print(
        f"sampling: {len(rows)} prompts x {args.gen_length} tokens, block {args.block_size}, vocab "
        f"{vocab}: ours {rates['ours']:.1f} tokens/s, dllm {rates['dllm']:.1f} tokens/s, ratio "
        f"{rates['ours'] / rates['dllm']:.2f}x, outputs identical: {identical}",
        flush=True,
    )
    return rates["ours"] / rates["dllm"], identical


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dllm-dir", type=Path, default=os.environ.get("DLLM_DIR"), help="default: env DLLM_DIR")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--small-vocab", type=int, default=512, help="the small vocabulary, beside --vocab")
    parser.add_argument("--d-model", type=int, default=None, help="default: 128 on CPU, 1024 on CUDA")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, 8 on CUDA")
    parser.add_argument(
        "--length", type=int, default=None, help="a multiple of --block-size (default 256 CPU, 512 CUDA)"
    )
    parser.add_argument(
        "--block-size", type=int, default=32, help="block size of training and sampling (dllm's a2d recipe: 32)"
    )
    parser.add_argument("--iters", type=int, default=None, help="timed steps per side (default 4 CPU, 20 CUDA)")
    parser.add_argument("--batches", type=int, default=3, help="distinct batches, cycled")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=None, help="longest prompt (default 48 CPU, 256 CUDA)")
    parser.add_argument("--gen-length", type=int, default=None, help="new tokens (default 128 CPU, 256 CUDA)")
    parser.add_argument("--head-scale", type=float, default=20.0, help="output head scale of the sampling model")
    parser.add_argument("--rounds", type=int, default=3, help="timed sampling runs per side")
    add_threads_argument(parser)
    args = parser.parse_args()
    if args.dllm_dir is None:
        parser.error("name a dllm checkout with --dllm-dir or the environment variable DLLM_DIR")
    cuda = args.device.startswith("cuda")
    args.d_model = args.d_model or (1024 if cuda else 128)
    args.batch = args.batch or (8 if cuda else 4)
    args.length = args.length or (512 if cuda else 256)
    args.iters = args.iters or (20 if cuda else 4)
    args.prompt_length = args.prompt_length or (256 if cuda else 48)
    args.gen_length = args.gen_length or (256 if cuda else 128)
    if args.length % args.block_size:
        parser.error("--length must be a multiple of --block-size (rows are padded to whole blocks)")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    dllm = import_dllm(args.dllm_dir)
    result: dict[str, float | bool] = {}
    worst = 0.0
    for vocab in (args.vocab, args.small_vocab):
        figures = compare_training(args, dllm, vocab)
        result[f"train_throughput_ratio_v{vocab}"] = round(figures["throughput_ratio"], 3)
        result[f"train_memory_ratio_v{vocab}"] = round(figures["memory_ratio"], 3)
        worst = max(worst, figures["loss_rel_diff"])
    identical = True
    for vocab in (args.vocab, args.small_vocab):
        speed_ratio, identical_here = compare_sampling(args, dllm, vocab)
        result[f"sample_speed_ratio_v{vocab}"] = round(speed_ratio, 3)
        identical = identical and identical_here
    result = {
        "train_throughput_ratio": result[f"train_throughput_ratio_v{args.vocab}"],
        "train_memory_ratio": result[f"train_memory_ratio_v{args.vocab}"],
        "sample_speed_ratio": result[f"sample_speed_ratio_v{args.vocab}"],
        "outputs_identical": identical and worst <= LOSS_TOLERANCE,
        "sample_outputs_identical": identical,
        "max_loss_rel_diff": worst,
        **result,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
