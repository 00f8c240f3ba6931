"""`DiffusionTrainer`: a `transformers.Trainer` that trains with the masked-diffusion loss (or the AR baseline).

What it adds to the stock Trainer:
- the loss of `dlm.losses` with logits only at masked positions, masks drawn from the global RNG (so a resumed
  run draws the same masks as an uninterrupted one);
- exact gradient accumulation: every micro-batch divides by the denominator of the whole optimizer step
  (maskable tokens or sequences, summed over micro-batches and processes), and the Trainer is told the loss is
  already scaled;
- validation with fixed masks (the same seed at every evaluation, so val/loss curves compare like with like);
- metrics beside the loss: accuracy over the answer tokens (masked tokens for diffusion, next tokens for causal
  models), with the end-of-text padding's accuracy and share of the masked tokens apart; the perplexity bound exp(NLL bound per token), mask ratio,
  tokens per second and memory;
- a NaN or infinite loss stops training with the step named, before any checkpoint of the bad state is written.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from dlm.losses import LossConfig, LossOutput, ar_loss, count_items, diffusion_loss, draw_mask
from dlm.masking import random_length


@dataclass
class DiffusionTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the diffusion loss settings (see `dlm.losses.LossConfig`)."""

    loss_norm_type: str = field(default="token", metadata={"help": "token, sequence or batch normalisation"})
    random_length_ratio: float = field(default=0.0, metadata={"help": "pre-training: chance of a shorter length"})
    eval_mask_seed: int = field(default=1234, metadata={"help": "seed of the fixed validation masks"})


class FixedEvalMasks:
    """`Trainer` mixin: every evaluation draws its masks from `_eval_generator`, seeded anew with
    `args.eval_mask_seed`, so validation losses compare like with like; it is None outside evaluation."""

    _eval_generator: torch.Generator | None = None

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        self._eval_generator = torch.Generator(device=self.args.device).manual_seed(self.args.eval_mask_seed)
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._eval_generator = None


class DiffusionTrainer(FixedEvalMasks, Trainer):
    """Trains `model` with `loss_config` (masked diffusion) or, when it is None, the next-token AR loss."""

    def __init__(self, *args: Any, loss_config: LossConfig | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        # Our losses divide by the whole step's denominator themselves: the Trainer must not divide again.
        self.loss_is_scaled_for_ga = True
        self._sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._log_clock = time.perf_counter()
        self.skipped_empty_batches = 0

    # ---- loss ----------------------------------------------------------------------------------------------
    @property
    def _next_token(self) -> bool:
        return self.loss_config is None

    def _norm_type(self) -> str:
        return self.args.loss_norm_type

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """The loss denominator of one optimizer step: summed over its micro-batches and over processes."""
        items = sum(count_items(batch, self._norm_type(), self._next_token).to(device) for batch in batch_samples)
        if self.args.world_size > 1:
            items = self.accelerator.gather(items.reshape(1)).sum()
        return items

    def _maybe_shorten(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """LLaDA pre-training: now and then train on a random shorter length."""
        if self.args.random_length_ratio <= 0 or not self.model.training:
            return inputs
        length = inputs["input_ids"].shape[1]
        keep = random_length(length, self.args.random_length_ratio)
        return inputs if keep >= length else {k: v[:, :keep] for k, v in inputs.items()}

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        mode = "train" if model.training else "eval"
        inputs = self._maybe_shorten(inputs)
        if self.loss_config is None:
            out = ar_loss(model, inputs, loss_norm_type=self._norm_type(), num_items_in_batch=num_items_in_batch)
        else:
            t, masked = draw_mask(inputs, self.loss_config, self._eval_generator if mode == "eval" else None)
            out = diffusion_loss(
                model, inputs, masked=masked, t=t, config=self.loss_config, num_items_in_batch=num_items_in_batch
            )
        loss = out.loss
        if mode == "train" and num_items_in_batch is not None:
            # DDP averages gradients over processes; the denominator already covers all of them.
            loss = loss * self.accelerator.num_processes
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"the loss became {loss.item()} at step {self.state.global_step + 1}; training stopped and the last "
                "good checkpoint was kept (try a lower learning_rate, float32, or gradient clipping)"
            )
        self._accumulate(mode, out, inputs)
        return (loss, None) if return_outputs else loss

    def _accumulate(self, mode: str, out: LossOutput, inputs: dict[str, torch.Tensor]) -> None:
        sums = self._sums[mode]
        if out.empty:
            self.skipped_empty_batches += 1
            sums["empty_batches"] += 1
        for name in ("num_maskable", "num_masked", "num_correct", "nll_sum"):
            sums[name] += float(getattr(out, name))
        sums["tokens"] += float(inputs["input_ids"].numel())
        padding = inputs.get("padding_mask")
        if padding is not None and out.masked is not None:  # end-of-text padding, counted apart from the answer
            sums["padding_masked"] += float((out.masked & padding).sum())
            sums["padding_correct"] += float((out.correct & padding).sum())

    # ---- evaluation (fixed masks: `FixedEvalMasks`) ----------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---- logging -------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        sums = self._sums[mode]
        if sums.get("num_maskable"):
            prefix = "eval_" if mode == "eval" else ""
            logs.update(_accuracies(sums, prefix))
            logs[f"{prefix}perplexity"] = math.exp(min(sums["nll_sum"] / sums["num_maskable"], 50.0))
            logs[f"{prefix}mask_ratio"] = sums["num_masked"] / sums["num_maskable"]
            if mode == "train":
                now = time.perf_counter()
                logs["tokens_per_sec"] = sums["tokens"] / max(now - self._log_clock, 1e-9)
                self._log_clock = now
                logs["memory_gb"] = memory_in_use_gb()
                if sums.get("empty_batches"):
                    logs["skipped_empty_batches"] = sums["empty_batches"]
        self._sums[mode] = defaultdict(float)
        super().log(logs, start_time)


def _accuracies(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """Accuracy over the answer tokens (masked ones for diffusion, next tokens for causal models), and apart from
    it, when the model trains on it, over the end-of-text padding the collator added (easy to predict: counted
    in, it inflates the accuracy of a model trained on short answers)."""
    pad_masked, pad_correct = sums.get("padding_masked", 0.0), sums.get("padding_correct", 0.0)
    answer_masked = sums["num_masked"] - pad_masked
    logs = {f"{prefix}accuracy": (sums["num_correct"] - pad_correct) / max(answer_masked, 1.0)}
    if pad_masked:
        logs[f"{prefix}padding_accuracy"] = pad_correct / pad_masked
        logs[f"{prefix}padding_share"] = pad_masked / sums["num_masked"]
    return logs


def memory_in_use_gb() -> float:
    """Peak accelerator memory when on CUDA, else the process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20
