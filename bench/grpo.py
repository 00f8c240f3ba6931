"""One diffusion GRPO step (rollouts, then the update) against dllm's diffu-GRPO trainer, side by side in one process.

dllm's `DiffuGRPOTrainer` (https://github.com/ZHZisZZ/dllm, `dllm/pipelines/rl/grpo/trainer.py`) subclasses TRL's
`GRPOTrainer` with overrides that fit TRL 0.19 only (from 0.20 on TRL's loss calls `_get_per_token_logps_and_
entropies`, not dllm's `_get_per_token_logps`: causal log-probabilities would silently replace the diffusion ones).
So it runs on TRL 0.19.1, kept out of the project's environment in a folder on PYTHONPATH:

    pip install --no-deps --target /tmp/trl-0.19.1 trl==0.19.1  # or plain pip install trl==0.19.1: it moves no pin
    git -C <dllm mirror> archive HEAD dllm | tar -x -C /tmp/dllm      # or any dllm checkout
    PYTHONPATH=$PWD:/tmp/trl-0.19.1 DLLM_DIR=/tmp/dllm python bench/grpo.py                # CPU: a few minutes
    PYTHONPATH=$PWD:/tmp/trl-0.19.1 DLLM_DIR=/tmp/dllm python bench/grpo.py --device cuda  # bigger defaults

Two shims let TRL 0.19 run under transformers 5 without changing what it computes: its optional-package flags (a
(found, version) pair under transformers 5, which it reads as a bool) become bools, and the model gets the
`warnings_issued` dict of transformers 4 models. dllm's package `__init__` files are skipped, as in bench/bd3lm.py.

Both sides train LoRA adapters (rank `--lora-r`, alpha 2r, no dropout, the LLaDA family's default targets, a plain
`PeftModel` as `dlm.lora` makes: our LLaDA class has no `generate` for the causal-LM wrapper of dllm's example) on
their own copy of one random tiny LLaDA (`dlm.models`), with the same weights and adapters (lora_B non-zero, as after
some training). d1's recipe: `--group` completions per prompt, `--num-iterations` updates per rollout batch, KL
`--beta` to the reference (adapters disabled), the one-step estimator (`--p-mask-prompt`), advantages not divided by
the group's std, the `bnpo` loss, AdamW at a constant rate, gradients clipped to norm 1. The reward, one function on
both sides, is the share of a completion's words with an even id. Same prompts (`--prompts` per step, cycling over
`--batches` sets), sampled at `--temperature` in blocks of `--block-length` with `--diffusion-steps` steps.
- dllm: `DiffuGRPOTrainer` as its LLaDA example builds it (its `MDLMSampler`), fed what its dataloader gives.
- ours: `dlm.trainers.grpo_trainer.DiffusionGRPOTrainer` as `run_grpo` builds it, fed what its collator gives;
  rollouts batched over the group with the cached settings (`--cache` dual, `--parallel-threshold` 0.9; `--cache none
  --parallel-threshold 0` times the exact sampler instead).

A GRPO step is `--num-iterations` optimizer steps on one rollout batch, each what `transformers.Trainer`'s loop does
(`training_step`: `_prepare_inputs`, which samples and scores the rollouts at the first, then loss and backward;
clipping; optimizer and scheduler steps). Rollout time is the sampler's call alone (dllm's `MDLMSampler.sample`, our
sampler's `answer`); the rest is the update. Peak memory of a step is measured as bench/common.py describes, in a
step of its own. Steps alternate, order flipped each round, after the checked steps; times are medians.

Same loss: the sides' rollouts differ, so dllm's are fed to our loss. In the first `--check-steps` steps, whenever
dllm's `_compute_loss` runs, `dlm.logprob_estimators.one_step_logps` scores its completions on the same model with the
prompt positions its forward process masked (its seed, its draw), adapters on and off, and `dlm.grpo_loss.grpo_loss`
takes its advantages (and rollout-policy log-probabilities). dllm's model attends the prompt and completion masks,
ours every position (as LLaDA trains): prompts all have `--prompt-length` words and the end and mask tokens are never
sampled (output bias -1e4), so both see the same.

The last line is a JSON object: ratios ours / dllm `step_time_ratio`, `rollout_time_ratio`, `update_time_ratio`,
`memory_ratio`; `max_loss_diff`, the largest relative difference of the two losses, and `max_loss_abs_diff` (the
losses are small: completions all have the full length, so at ratio 1 the clipped term sums to 0 over a group).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import add_threads_argument, peak_bytes, random_llada, synchronize

from dlm.families import get_family
from dlm.families.special_ids import resolve_special_ids
from dlm.grpo_loss import grpo_loss
from dlm.loading import LoadedModel
from dlm.logprob_estimators import Rollouts, one_step_logps
from dlm.lora import apply_lora, lora_targets
from dlm.rewards.registry import RewardSpec
from dlm.rewards.weighted import WeightedRewards
from dlm.trainers.grpo_config import GRPOConfig
from dlm.trainers.grpo_data import PromptCollator, encode_prompt_rows
from dlm.trainers.grpo_trainer import DiffusionGRPOTrainer, training_arguments
from plugin_sdk.prompts import PromptExample

EOS_TOKEN, MASK_TOKEN = "<|endoftext|>", "<|mdm_mask|>"  # ids 0 and vocab - 1; EOS pads too
NEVER_SAMPLED_BIAS = -1e4  # output bias of the end and mask tokens
EPSILON = 0.2
LEARNING_RATE = 1e-4
TRL_VERSION = "0.19.1"


# ---- dllm and TRL --------------------------------------------------------------------------------------------------
def import_dllm(dllm_dir: Path | None) -> types.ModuleType:
    """dllm's GRPO trainer module, on TRL 0.19 (module docstring); exits with what to install when a piece is
    missing."""
    if dllm_dir is None or not (dllm_dir / "dllm" / "pipelines" / "rl" / "grpo" / "trainer.py").is_file():
        raise SystemExit(
            f"no dllm checkout at {dllm_dir} (it must hold dllm/pipelines/rl/grpo/trainer.py): name one with "
            "--dllm-dir or the environment variable DLLM_DIR"
        )
    try:
        trl_imports = importlib.import_module("trl.import_utils")
    except ImportError:
        raise SystemExit(
            f"dllm's GRPO trainer needs TRL {TRL_VERSION}: pip install --no-deps --target /tmp/trl-{TRL_VERSION} "
            f"trl=={TRL_VERSION}, then add that folder to PYTHONPATH"
        ) from None
    for name, value in list(vars(trl_imports).items()):  # (found, version) pairs under transformers 5 -> found
        if name.startswith("_") and name.endswith("_available") and isinstance(value, tuple):
            setattr(trl_imports, name, bool(value[0]))
    grpo = importlib.import_module("trl.trainer.grpo_trainer").GRPOTrainer
    if not (hasattr(grpo, "_get_per_token_logps") and hasattr(grpo, "_calculate_rewards")):
        raise SystemExit(
            f"TRL {importlib.import_module('trl').__version__} is not the TRL dllm's trainer overrides (its loss "
            f"would not call dllm's diffusion log-probabilities): use TRL {TRL_VERSION}"
        )
    root = dllm_dir / "dllm"
    for package in ("dllm", "dllm.core", "dllm.pipelines", "dllm.pipelines.rl", "dllm.pipelines.rl.grpo"):
        module = types.ModuleType(package)
        module.__path__ = [str(root.parent / package.replace(".", "/"))]
        sys.modules[package] = module
    return importlib.import_module("dllm.pipelines.rl.grpo.trainer")


# ---- the shared model, tokenizer, prompts and reward ---------------------------------------------------------------
def word_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer of `vocab` tokens: the end token (id 0), words `w1`..`w{vocab-2}`, the mask token
    last; its chat template is the messages' text, so both trainers encode a prompt to the same ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [EOS_TOKEN, *(f"w{i}" for i in range(1, vocab - 1)), MASK_TOKEN]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token=EOS_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, mask_token=MASK_TOKEN
    )
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    return tokenizer


def random_policy(args: argparse.Namespace) -> torch.nn.Module:
    """The random LLaDA (`random_llada`) whose output head never picks the end or the mask token."""
    model = random_llada(
        args, args.prompt_length + args.completion_length, mask_token_id=args.vocab - 1, eos_token_id=0, pad_token_id=0
    )
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True, device=head.weight.device)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[[0, args.vocab - 1]] = NEVER_SAMPLED_BIAS
    model.set_output_embeddings(biased)
    return model


def prompt_batches(args: argparse.Namespace) -> list[list[str]]:
    """`args.batches` sets of `args.prompts` prompts of `args.prompt_length` random words."""
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(1, args.vocab - 1, (args.batches, args.prompts, args.prompt_length), generator=generator)
    return [[" ".join(f"w{i}" for i in row) for row in batch] for batch in ids.tolist()]


def even_share(prompts: list, completions: list, **columns: Any) -> list[float]:
    """The share of each completion's words with an even id."""
    return [sum(int(w[1:]) % 2 == 0 for w in text.split()) / max(len(text.split()), 1) for text in completions]


def lora_config(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    """The adapters of both sides, as `dlm.lora.apply_lora` makes them for the LLaDA family."""
    return {
        "r": args.lora_r,
        "lora_alpha": 2 * args.lora_r,
        "lora_dropout": 0.0,
        "target_modules": lora_targets(model, "llada", "default"),
        "exclude_modules": [get_family("llada").output_head],
    }


# ---- the two trainers ----------------------------------------------------------------------------------------------
def shared_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings both configs name alike (TRL's names), d1's recipe."""
    return {
        "num_generations": args.group,
        "num_iterations": args.num_iterations,
        "beta": args.beta,
        "epsilon": EPSILON,
        "scale_rewards": False,
        "loss_type": "bnpo",
        "p_mask_prompt": args.p_mask_prompt,
        "max_prompt_length": args.prompt_length,
        "max_completion_length": args.completion_length,
        "steps": args.diffusion_steps,
        "temperature": args.temperature,
        "learning_rate": LEARNING_RATE,
        "seed": args.seed,
    }


def our_trainer(args: argparse.Namespace, tokenizer: Any, out: Path) -> tuple[Any, list[dict]]:
    """Our GRPO trainer as `run_grpo` builds it, and a batch per prompt set (what its collator gives)."""
    config = GRPOConfig(
        **shared_settings(args),
        model_name="random-llada",
        output_dir=str(out),
        num_train_epochs=0,
        train_steps=1000,
        batch_size=args.prompts,
        logp_estimator="one_step",
        max_length=args.prompt_length + args.completion_length,
        block_length=args.block_length,
        cache=args.cache,
        parallel_threshold=args.parallel_threshold,
        lora=True,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
        train_device="cpu" if args.device == "cpu" else "cuda",
        dtype="float32",
    )
    model = random_policy(args)
    family = get_family("llada")
    loaded = LoadedModel(model, tokenizer, family, resolve_special_ids(family, model.config, tokenizer), "")
    policy = apply_lora(model, family, r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0)
    with torch.no_grad():  # non-zero adapters, as after some training; copied to dllm's side
        generator = torch.Generator().manual_seed(args.seed)
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
    rewards = WeightedRewards(("even_share",), (1.0,), specs=(RewardSpec("even_share", even_share),))
    batches, rows = [], []
    for texts in prompt_batches(args):
        examples = [PromptExample(str(len(rows) + i), [{"role": "user", "content": t}]) for i, t in enumerate(texts)]
        encoded = encode_prompt_rows(examples, loaded, config.max_prompt_length).rows
        rows += encoded
        batches.append(PromptCollator(loaded.special_ids.pad)(encoded))
    trainer = DiffusionGRPOTrainer(
        model=policy,
        args=training_arguments(config, out),
        train_dataset=rows,
        data_collator=PromptCollator(loaded.special_ids.pad),
        config=config,
        loaded=loaded,
        rewards=rewards,
    )
    return trainer, batches


def dllm_trainer(
    args: argparse.Namespace, dllm: types.ModuleType, tokenizer: Any, adapters: dict[str, torch.Tensor], out: Path
) -> tuple[Any, list[list[dict]]]:
    """dllm's `DiffuGRPOTrainer` as its LLaDA example builds it (with our side's adapter weights), and a batch per
    prompt set (what its dataloader gives: each prompt `args.group` times)."""
    from datasets import Dataset
    from peft import LoraConfig

    model = random_policy(args)
    model.warnings_issued = {}  # transformers 4 models had it; TRL 0.19 writes to it
    texts = prompt_batches(args)
    config = dllm.DiffuGRPOConfig(
        **shared_settings(args),
        output_dir=str(out),
        per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1,
        block_size=args.block_length,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        use_cpu=args.device == "cpu",
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    trainer = dllm.DiffuGRPOTrainer(
        model=model,
        reward_funcs=[even_share],
        args=config,
        train_dataset=Dataset.from_list([{"prompt": t} for batch in texts for t in batch]),
        processing_class=tokenizer,
        peft_config=LoraConfig(**lora_config(args, model)),
    )
    own = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for name, value in adapters.items():
            own[name].copy_(value)
    batches = [[{"prompt": t} for t in batch for _ in range(args.group)] for batch in texts]
    return trainer, batches


# ---- a step, its rollout time, and the loss check ------------------------------------------------------------------
class RolloutClock:
    """Seconds spent in one method of a sampler (replaced on the instance by a timed call)."""

    def __init__(self, sampler: Any, method: str, device: str) -> None:
        self.seconds = 0.0
        call = getattr(sampler, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            synchronize(device)
            start = time.perf_counter()
            out = call(*args, **kwargs)
            synchronize(device)
            self.seconds += time.perf_counter() - start
            return out

        object.__setattr__(sampler, method, timed)  # our samplers are frozen dataclasses


def optimizer_step(trainer: Any, batch: Any) -> torch.Tensor:
    """What `transformers.Trainer`'s loop does for one optimizer step (one micro-batch)."""
    model = trainer.model
    loss = trainer.training_step(model, batch)
    trainer._clip_grad_norm(model)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad()
    trainer.state.global_step += 1
    return loss.detach()


class LossCheck:
    """Wraps dllm's `_compute_loss`: while `on`, our loss is computed beside it on the same model, rollouts and
    masks (module docstring); `pairs` holds (dllm's loss, ours)."""

    def __init__(self, trainer: Any, args: argparse.Namespace) -> None:
        self.on, self.pairs, self.args = False, [], args
        compute = trainer._compute_loss

        def checked(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
            loss = compute(model, inputs)
            if self.on:  # the seed and the rollout policy's log-probabilities dllm's call just used
                olds = inputs.get("diffu_old_logps_all")
                old = None if olds is None else olds[:, (trainer._diffu_iter_idx - 1) % args.num_iterations]
                with torch.no_grad():
                    ours = self.our_loss(model, inputs, trainer._current_mask_seed, old)
                self.pairs.append((loss.item(), ours))
            return loss

        trainer._compute_loss = checked

    def our_loss(self, model: Any, inputs: dict, seed: int, old_logps: torch.Tensor | None) -> float:
        from accelerate.utils import set_seed

        args = self.args
        fields = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
        rollouts = Rollouts(*(inputs[name].bool() if "mask" in name else inputs[name] for name in fields))
        if not bool(rollouts.completion_mask.all() and rollouts.prompt_mask.all()):
            raise SystemExit("a padded prompt or an ended completion: the two attention masks would differ")
        set_seed(seed)  # dllm's forward process: this draw, on the device, read on the prompt columns
        draws = torch.rand(rollouts.input_ids.shape, device=rollouts.input_ids.device)
        prompt_masked = draws[:, : rollouts.prompt_ids.shape[1]] < args.p_mask_prompt
        family, mask_id = get_family("llada"), args.vocab - 1
        logps = one_step_logps(model, rollouts, prompt_masked, family=family, mask_id=mask_id)
        ref = None
        if args.beta:
            with model.disable_adapter():
                ref = one_step_logps(model, rollouts, prompt_masked, family=family, mask_id=mask_id)
        scored = (logps, old_logps, ref, inputs["advantages"], rollouts.completion_mask)
        loss = grpo_loss(*scored, epsilon_low=EPSILON, epsilon_high=EPSILON, beta=args.beta, loss_type="bnpo")
        return loss.loss.item()


@dataclass
class Side:
    """One trainer, its batch per prompt set and the clock of its sampler."""

    trainer: Any
    batches: list
    clock: RolloutClock


def build_sides(args: argparse.Namespace, dllm: types.ModuleType, out: Path) -> tuple[dict[str, Side], LossCheck]:
    """Both trainers, set up as `Trainer.train` sets them up before its loop, and the check on dllm's loss."""
    tokenizer = word_tokenizer(args.vocab)
    ours, our_batches = our_trainer(args, tokenizer, out / "ours")
    adapters = {name: p.detach() for name, p in ours.model.named_parameters() if "lora_" in name}
    theirs, their_batches = dllm_trainer(args, dllm, tokenizer, adapters, out / "dllm")
    sides = {
        "ours": Side(ours, our_batches, RolloutClock(ours.sampler, "answer", args.device)),
        "dllm": Side(theirs, their_batches, RolloutClock(theirs.sampler, "sample", args.device)),
    }
    for side in sides.values():
        side.trainer.create_optimizer_and_scheduler(num_training_steps=1000)
        side.trainer.current_gradient_accumulation_steps = 1
    return sides, LossCheck(theirs, args)


def grpo_step(args: argparse.Namespace, side: Side, round_: int) -> tuple[float, float]:
    """(seconds, rollout seconds) of one GRPO step on prompt set `round_`: `num_iterations` optimizer steps, the
    first of which samples the rollouts they all update on."""
    side.clock.seconds = 0.0
    synchronize(args.device)
    start = time.perf_counter()
    for _ in range(args.num_iterations):
        optimizer_step(side.trainer, side.batches[round_ % len(side.batches)])
    synchronize(args.device)
    return time.perf_counter() - start, side.clock.seconds


def measure(args: argparse.Namespace, sides: dict[str, Side], check: LossCheck) -> tuple[dict, dict]:
    """(seconds and rollout seconds of the timed steps, peak bytes of a step) per side: the checked steps first,
    then a step measured for memory, then the timed steps, alternating."""
    check.on = True
    for round_ in range(args.check_steps):
        for side in sides.values():
            grpo_step(args, side, round_)
    check.on = False
    peaks = {name: peak_bytes(lambda side=side: grpo_step(args, side, 0), args.device) for name, side in sides.items()}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for round_ in range(args.iters):
        for name in list(sides) if round_ % 2 == 0 else list(reversed(sides)):
            times[name].append(grpo_step(args, sides[name], round_))
    return times, peaks


def report(times: dict, peaks: dict, pairs: list[tuple[float, float]]) -> dict[str, float]:
    """Prints each side's median times and peak memory; the result line's figures."""
    total = {name: statistics.median(t for t, _ in values) for name, values in times.items()}
    rollout = {name: statistics.median(r for _, r in values) for name, values in times.items()}
    update = {name: statistics.median(t - r for t, r in values) for name, values in times.items()}
    for name in times:
        print(
            f"{name:>6}: step {total[name]:8.3f} s  (rollout {rollout[name]:8.3f} s, update {update[name]:8.3f} s)"
            f"  peak {peaks[name] / 2**20:9.1f} MiB",
            flush=True,
        )
    print(f"losses on dllm's rollouts (dllm, ours): {pairs}", flush=True)
    return {
        "step_time_ratio": round(total["ours"] / total["dllm"], 3),
        "rollout_time_ratio": round(rollout["ours"] / rollout["dllm"], 3),
        "update_time_ratio": round(update["ours"] / update["dllm"], 3),
        "memory_ratio": round(peaks["ours"] / peaks["dllm"], 3),
        "max_loss_diff": max(abs(theirs - ours) / max(abs(theirs), 1e-12) for theirs, ours in pairs),
        "max_loss_abs_diff": max(abs(theirs - ours) for theirs, ours in pairs),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    dllm = import_dllm(args.dllm_dir)
    print(
        f"GRPO step: device={args.device} vocab={args.vocab} d_model={args.d_model} layers={args.layers} "
        f"{args.prompts} prompts x {args.group} completions, prompt {args.prompt_length} + completion "
        f"{args.completion_length} tokens, {args.diffusion_steps} steps in blocks of {args.block_length}, "
        f"{args.num_iterations} update(s) per rollout; ours: cache {args.cache}, threshold {args.parallel_threshold}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as out:
        sides, check = build_sides(args, dllm, Path(out))
        times, peaks = measure(args, sides, check)
    print(json.dumps(report(times, peaks, check.pairs)), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dllm-dir", type=Path, default=os.environ.get("DLLM_DIR"), help="default: env DLLM_DIR")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--d-model", type=int, default=None, help="default: 128 on CPU, 1024 on CUDA")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--group", type=int, default=None, help="completions per prompt (default 4 CPU, 8 CUDA)")
    parser.add_argument("--batches", type=int, default=3, help="distinct prompt sets, cycled")
    parser.add_argument("--prompt-length", type=int, default=None, help="prompt words (default 16 CPU, 128 CUDA)")
    parser.add_argument(
        "--completion-length", type=int, default=None, help="completion tokens (default 32 CPU, 256 CUDA)"
    )
    parser.add_argument("--block-length", type=int, default=None, help="rollout blocks (default 16 CPU; d1: 32)")
    parser.add_argument("--diffusion-steps", type=int, default=None, help="default: half the completion length")
    parser.add_argument("--temperature", type=float, default=0.9, help="rollout temperature (d1: 0.9)")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (d1: 0.04)")
    parser.add_argument(
        "--num-iterations", type=int, default=1, help="updates per rollout batch (d1's mu; a step runs them all)"
    )
    parser.add_argument("--p-mask-prompt", type=float, default=0.3, help="one-step estimator's prompt masking")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--cache", default="dual", help="our rollouts' cache: none, prefix or dual")
    parser.add_argument("--parallel-threshold", type=float, default=0.9, help="our rollouts' threshold (0: off)")
    parser.add_argument("--check-steps", type=int, default=2, help="first steps, untimed, whose losses are compared")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per side (default 3 CPU, 10 CUDA)")
    add_threads_argument(parser)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.d_model = args.d_model or (1024 if cuda else 128)
    args.group = args.group or (8 if cuda else 4)
    args.prompt_length = args.prompt_length or (128 if cuda else 16)
    args.completion_length = args.completion_length or (256 if cuda else 32)
    args.block_length = args.block_length or (32 if cuda else 16)
    args.diffusion_steps = args.diffusion_steps or args.completion_length // 2
    args.iters = args.iters or (10 if cuda else 3)
    if args.completion_length % args.block_length:
        parser.error("--completion-length must be a multiple of --block-length")
    if args.check_steps < 1:
        parser.error("--check-steps must be at least 1: the losses are compared on those steps")
    return args


if __name__ == "__main__":
    main()
