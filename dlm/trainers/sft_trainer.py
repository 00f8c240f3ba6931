"""Masked-diffusion SFT and pre-training: `SFTConfig` in, a trained adapter or model out.

`run_sft(config, train_rows, validation_rows, reporter)` loads the model (any family, LoRA/QLoRA), encodes the
data, trains with `DiffusionTrainer` and returns the result for `dlm.trainers.outputs.save_outputs`. Rows are chat
conversations (lists of messages whose last one is the assistant's answer) in SFT mode, or plain texts in
pre-training mode.

`DiffusionTrainer` is a `transformers.Trainer` that trains with the masked-diffusion loss (or the AR baseline).
What it adds to the stock Trainer:
- the loss of `dlm.losses` with logits only at masked positions, masks drawn from the global RNG (so a resumed
  run draws the same masks as an uninterrupted one);
- exact gradient accumulation: every micro-batch divides by the denominator of the whole optimizer step
  (maskable tokens or sequences, summed over micro-batches and processes), and the Trainer is told the loss is
  already scaled;
- validation with fixed masks (the same seed at every evaluation, so val/loss curves compare like with like);
- metrics beside the loss: accuracy over the answer tokens (masked tokens for diffusion, next tokens for causal
  models), with the end-of-text padding's accuracy and share of the masked tokens apart; the perplexity bound
  exp(NLL bound per token), mask ratio,
  tokens per second and memory;
- a batch with no token to score (nothing masked) has no loss: the logged train/loss is the mean over the logged
  optimizer steps that scored a token, perplexity and accuracy are over the micro-batches that did, eval/loss over
  the validation batches that did, and a logging window without any scored token logs neither (never 0 and 1.0);
- a NaN or infinite loss stops training with the step named, before any checkpoint of the bad state is written;
- a mixture-of-experts model whose config sets `output_router_logits` trains with its router's load-balancing loss
  added (`router_aux_loss_coef * aux_loss`, averaged over the step's micro-batches), logged as `aux_loss`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from dlm.block_diffusion import model_block_size
from dlm.callbacks import Reporter, ReporterCallback, SampleCallback
from dlm.corpus import TokenWindows
from dlm.data import (
    DROP_NO_RESPONSE,
    DROP_PROMPT_TOO_LONG,
    DROP_TOO_LONG,
    DiffusionCollator,
    EncodedData,
    encode_conversations,
    pack_texts,
)
from dlm.errors import ConfigError, ModelError
from dlm.families import FAMILIES
from dlm.generation import SamplerSettings, answer, build_sampler
from dlm.loading import LoadedModel
from dlm.losses import LossConfig, LossOutput, ar_loss, count_items, diffusion_loss, draw_mask
from dlm.masking import random_length
from dlm.trainers.arguments import common_training_arguments, step_interval
from dlm.trainers.eval_masks import FixedEvalMasks
from dlm.trainers.logs import last_logged, memory_in_use_gb
from dlm.trainers.model import load_for_training, trainable_model
from dlm.trainers.outputs import TrainResult
from dlm.trainers.resuming import train_or_resume
from dlm.trainers.router_loss import caught_aux_losses, router_aux_loss_coef
from dlm.trainers.sft_config import SFTConfig


class DiffusionTrainer(FixedEvalMasks, Trainer):
    """Trains `model` with `loss_config` (masked diffusion, built from `config` by `_loss_config`) or, when it is
    None, the next-token AR loss; the other training settings are read from `config`."""

    def __init__(self, *args: Any, config: SFTConfig, loss_config: LossConfig | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.loss_config = loss_config
        # Our losses divide by the whole step's denominator themselves: the Trainer must not divide again.
        self.loss_is_scaled_for_ga = True
        self._sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._log_clock = time.perf_counter()
        self.skipped_empty_batches = 0
        # Optimizer steps since the last logged train/loss, and those of them that scored a token (see `_scored_loss`)
        self._window_steps: set[int] = set()
        self._scored_steps: set[int] = set()
        self._last_batch_empty = False
        self.router_aux_loss_coef = router_aux_loss_coef(self.model)

    # ---- loss ----------------------------------------------------------------------------------------------
    @property
    def _next_token(self) -> bool:
        return self.loss_config is None

    def _norm_type(self) -> str:
        return self.config.loss_norm_type

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """The loss denominator of one optimizer step: summed over its micro-batches and over processes."""
        items = sum(count_items(batch, self._norm_type(), self._next_token).to(device) for batch in batch_samples)
        if self.args.world_size > 1:
            items = self.accelerator.gather(items.reshape(1)).sum()
        return items

    def _maybe_shorten(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """LLaDA pre-training: now and then train on a random shorter length."""
        ratio = self.config.random_length_ratio
        if self.config.train_mode != "pretrain" or ratio <= 0 or not self.model.training:
            return inputs
        length = inputs["input_ids"].shape[1]
        keep = random_length(length, ratio)
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
        with caught_aux_losses(model) as aux_losses:
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
        if mode == "train" and self.router_aux_loss_coef and aux_losses:
            loss = loss + self._router_loss(aux_losses[-1])
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"the loss became {loss.item()} at step {self.state.global_step + 1}; training stopped and the last "
                "good checkpoint was kept (try a lower learning_rate, float32, or gradient clipping)"
            )
        self._accumulate(mode, out, inputs)
        if mode == "train":
            self._window_steps.add(self.state.global_step)
            if not out.empty:
                self._scored_steps.add(self.state.global_step)
        return (loss, None) if return_outputs else loss

    def _router_loss(self, aux_loss: torch.Tensor) -> torch.Tensor:
        """The micro-batch's share of the step's router loss: the coefficient times its mean over the micro-batches
        (a per-process mean, which DDP then averages)."""
        sums = self._sums["train"]
        sums["aux_loss"] += float(aux_loss.detach())
        sums["aux_batches"] += 1
        return self.router_aux_loss_coef * aux_loss / self.args.gradient_accumulation_steps

    def _accumulate(self, mode: str, out: LossOutput, inputs: dict[str, torch.Tensor]) -> None:
        sums = self._sums[mode]
        self._last_batch_empty = out.empty
        sums["all_maskable"] += float(out.num_maskable)  # the mask ratio's denominator: every batch
        if out.empty:  # nothing scored: no NLL, no accuracy (its 0 would read as a perfect perplexity of 1.0)
            self.skipped_empty_batches += 1
            sums["empty_batches"] += 1
            return
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
        if self._last_batch_empty:  # no token to score: NaN, which the Trainer leaves out of eval_loss's mean
            return torch.full_like(loss.detach(), float("nan")), None, None
        return loss.detach(), None, None

    # ---- logging -------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        sums = self._sums[mode]
        if "loss" in logs:
            self._scored_loss(logs)
        if not math.isfinite(logs.get("eval_loss", 0.0)):
            del logs["eval_loss"]  # every validation batch was empty: no value rather than a NaN
        if sums.get("all_maskable"):
            prefix = "eval_" if mode == "eval" else ""
            if sums.get("num_masked"):
                logs.update(_accuracies(sums, prefix))
                logs[f"{prefix}perplexity"] = math.exp(min(sums["nll_sum"] / sums["num_maskable"], 50.0))
            logs[f"{prefix}mask_ratio"] = sums.get("num_masked", 0.0) / sums["all_maskable"]
            if mode == "train":
                now = time.perf_counter()
                logs["tokens_per_sec"] = sums["tokens"] / max(now - self._log_clock, 1e-9)
                self._log_clock = now
                logs["memory_gb"] = memory_in_use_gb()
                if sums.get("empty_batches"):
                    logs["skipped_empty_batches"] = sums["empty_batches"]
                if sums.get("aux_batches"):
                    logs["aux_loss"] = sums["aux_loss"] / sums["aux_batches"]
        self._sums[mode] = defaultdict(float)
        super().log(logs, start_time)

    def _scored_loss(self, logs: dict[str, float]) -> None:
        """The Trainer's `loss` is the sum of the window's step losses over all its steps; a step that scored no
        token (on any process) added exactly 0, so the mean over the scored steps is that sum over their number.
        No scored step: no `loss` at all."""
        steps = sorted(self._window_steps)
        flags = torch.tensor([step in self._scored_steps for step in steps], dtype=torch.float32)
        if self.args.world_size > 1:
            gathered = self.accelerator.gather(flags.to(self.args.device))
            flags = gathered.reshape(self.args.world_size, -1).amax(dim=0).cpu()
        scored = int(flags.sum())
        self._window_steps, self._scored_steps = set(), set()
        if scored == 0:
            del logs["loss"]
        elif scored < len(steps):
            logs["loss"] = logs["loss"] * len(steps) / scored


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


def _check_method(config: SFTConfig, loaded: LoadedModel) -> str:
    """The training method: `auto` is the model's own family; a mismatch is an error naming both."""
    method = config.training_method
    family = loaded.family.name
    if method in ("auto", family):
        return family
    if method == loaded.family.converted_from:
        raise ModelError(f"{config.model_name} is a converted diffusion model; {method} needs a causal checkpoint")
    raise ModelError(
        f"training_method={method} does not match the model {config.model_name}, which is a {family} model "
        f"({', '.join(loaded.family.architectures)}); use training_method=auto or {family}"
    )


def _loss_config(config: SFTConfig, loaded: LoadedModel) -> LossConfig | None:
    if not loaded.family.is_diffusion:
        return None
    overrides: dict[str, Any] = {
        "noise_schedule": config.noise_schedule,
        "time_epsilon": config.time_epsilon,
        "loss_norm_type": config.loss_norm_type,
    }
    if config.loss_weight_type not in ("", "auto"):
        overrides["loss_weight_type"] = config.loss_weight_type
    if loaded.family.block_size is not None:
        overrides.update(block_size=training_block_size(config, loaded), block_time=config.block_time)
    return LossConfig.for_family(loaded.family, loaded.special_ids.mask, **overrides)


def training_block_size(config: SFTConfig, loaded: LoadedModel) -> int | None:
    """The block size of block diffusion training: the setting, else the checkpoint's `block_size`, else the
    family's; None for a full-sequence family (where a block_size setting is an error)."""
    if loaded.family.block_size is None:
        if config.block_size:
            raise ConfigError(
                f"block_size={config.block_size} applies to block diffusion models; {config.model_name} is a "
                f"{loaded.family.name} model: set block_size to 0, or convert a causal model with "
                "dlm.convert.convert_causal_to_diffusion(kind='bd3lm')"
            )
        return None
    return config.block_size or model_block_size(loaded.family, loaded.model)


def _encode(config: SFTConfig, loaded: LoadedModel, rows: Sequence[Any], what: str, reporter: Reporter) -> Any:
    if isinstance(rows, TokenWindows):  # a tokenized corpus (dlm.corpus): already windows of max_length
        return rows
    if config.train_mode == "pretrain":
        encoded = pack_texts(
            rows,
            loaded.tokenizer,
            max_length=config.max_length,
            eos_id=loaded.special_ids.eos,
            num_proc=config.num_proc,
        )
        reporter.log(f"{what}: {len(rows)} texts packed into {len(encoded)} chunks of up to {config.max_length} tokens")
        return encoded
    data = encode_conversations(
        rows,
        loaded.tokenizer,
        max_length=config.max_length,
        mask_prompt_loss=config.mask_prompt_loss,
        truncation=config.truncation,
        num_proc=config.num_proc,
    )
    reporter.log(f"{what}: {data.summary()}")
    if rows and not data.rows:
        raise ModelError(f"all {len(rows)} {what} examples were dropped ({data.summary()}); {_advice(config, data)}")
    return data.rows


def _advice(config: SFTConfig, data: EncodedData) -> str:
    """What would keep the examples, for each reason they were dropped."""
    advice = {
        DROP_PROMPT_TOO_LONG: f"raise max_length (now {config.max_length}) above the prompts' length",
        DROP_TOO_LONG: f"raise max_length (now {config.max_length}) or use truncation=right to clip them",
        DROP_NO_RESPONSE: "give each row an answer: its last message must be the assistant's",
    }
    return "; ".join(advice[why] for why in data.dropped if why in advice)


def training_arguments(config: SFTConfig, checkpoint_dir: Path, has_validation: bool) -> TrainingArguments:
    """What `transformers.Trainer` needs; the loss settings stay in `config`, where the trainer reads them."""
    return TrainingArguments(
        **common_training_arguments(config, checkpoint_dir),
        warmup_steps=config.warmup,
        eval_strategy=config.eval_strategy if has_validation else "no",
        eval_steps=step_interval(config.eval_steps) if config.eval_strategy == "steps" else None,
    )


def _sample_callback(
    config: SFTConfig, model: Any, loaded: LoadedModel, validation_rows: Sequence[Any], reporter: Reporter
) -> TrainerCallback:
    """Every `sample_every_steps` steps, the answers the model gives to the first validation prompts go to the log."""
    prompts = [list(conv[:-1]) for conv in list(validation_rows)[: config.num_samples]]
    settings = SamplerSettings(
        steps=32,
        max_new_tokens=32,
        block_length=32,
        cache=config.sample_cache,
        parallel_threshold=config.sample_parallel_threshold or None,
    )
    build_sampler(loaded.family, settings)  # checks the settings: fail before training, not at the first sample

    def sample() -> list[tuple[str, str]]:
        answers = answer(model, loaded.tokenizer, loaded.family, loaded.special_ids, prompts, settings)
        return [(p[-1]["content"], a) for p, a in zip(prompts, answers, strict=True)]

    return SampleCallback(reporter, sample, config.sample_every_steps)


def _build_trainer(
    config: SFTConfig,
    loaded: LoadedModel,
    model: Any,
    train: list,
    validation: list | None,
    callbacks: list[TrainerCallback],
) -> DiffusionTrainer:
    trainer = DiffusionTrainer(
        model=model,
        args=training_arguments(config, Path(config.output_dir), bool(validation)),
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DiffusionCollator(
            loaded.family,
            loaded.special_ids,
            perbatch_cutoff=config.perbatch_cutoff,
            resp_cutoff_ratio=config.resp_cutoff_ratio,
            pad_to=config.pad_to,
            max_length=config.max_length,
            pad_to_multiple_of=training_block_size(config, loaded) or 1,
        ),
        callbacks=callbacks,
        config=config,
        loss_config=_loss_config(config, loaded),
    )
    trainer.remove_callback(PrinterCallback)  # metrics reach the job log through the reporter instead
    return trainer


def run_sft(
    config: SFTConfig, train_rows: Sequence[Any], validation_rows: Sequence[Any] | None, reporter: Reporter
) -> TrainResult:
    """Train; the returned model is the trained one (a PeftModel with LoRA)."""
    if config.eval_strategy != "no" and not validation_rows:
        raise ModelError(
            f"eval_strategy={config.eval_strategy} needs validation data, and there is none: add a "
            "validation split to the dataset, or set validation_fraction above 0"
        )
    if config.sample_every_steps > 0 and not validation_rows:
        raise ConfigError(
            f"sample_every_steps={config.sample_every_steps} samples answers to validation prompts, and there is no "
            "validation data: set validation_fraction above 0 (or add a validation split), or sample_every_steps to 0"
        )
    torch.manual_seed(config.seed)
    reporter.report_status(f"loading model {config.model_name}")
    # a converted family is loaded as itself, so that an unconverted checkpoint is an error saying how to convert it
    method = FAMILIES.get(config.training_method)
    loaded = load_for_training(config, family=method.name if method is not None and method.converted_from else None)
    _check_method(config, loaded)
    model = trainable_model(config, loaded, reporter)
    reporter.report_status("encoding data")
    train = _encode(config, loaded, train_rows, "training data", reporter)
    validation = _encode(config, loaded, validation_rows, "validation data", reporter) if validation_rows else None
    progress = ReporterCallback(reporter)
    callbacks: list[TrainerCallback] = [progress]
    if config.sample_every_steps:
        callbacks.append(_sample_callback(config, model, loaded, validation_rows, reporter))
    trainer = _build_trainer(config, loaded, model, train, validation, callbacks)
    train_or_resume(trainer, config, reporter)
    model.eval()  # training is over: whoever uses the result next (samples, evaluation) must not see dropout
    if trainer.skipped_empty_batches:
        reporter.log(f"{trainer.skipped_empty_batches} batches had no trainable token and contributed nothing")
    summary = (
        f"trained {loaded.family.name} model {config.model_name} for {trainer.state.global_step} steps; "
        f"final train/loss {last_logged(trainer, 'loss')}"
    )
    return TrainResult(
        model=model,
        tokenizer=loaded.tokenizer,
        loaded=loaded,
        global_step=trainer.state.global_step,
        stopped=progress.stopped,
        summary=summary,
        checkpoint_dir=str(Path(config.output_dir)),
    )
