"""ELBO-DPO training of masked diffusion LMs (VRPO, LLaDA 1.5): `DPOConfig` in, a trained adapter or model out.

`run_dpo(config, train_examples, validation_examples, reporter)` loads the model (LoRA/QLoRA or full), encodes the
preference pairs (`dlm.preference_data`; read from rows by `plugin_sdk.preferences`), trains with `DiffusionDPOTrainer` and
returns the result for `dlm.trainers.outputs.save_outputs`. The loss and its estimator are in `dlm.preference_loss`.

Choices the trainer makes:
- Masks come from per-example generators seeded by (seed, example id, chosen/rejected, epoch): a resumed run, a
  different batch order or another process draws the same masks for the same example. With antithetic sharing the
  reference is scored on the policy's masks. `precomputed` reference ELBOs are computed once before training on
  the masks of epoch 0, and the policy then keeps those masks in every epoch so that sharing holds.
- Padding is hidden by an attention mask and never scored, so an ELBO does not depend on its batch.
- Reference forward passes run in eval mode (no dropout), the policy's in train mode. lora_dropout defaults to 0:
  dropout would make the policy's passes differ from the reference's on shared masks (more variance), and the
  gradient pass of `per_sample_backward` differ from its estimate pass (a noisy, no longer exact gradient).
- `frozen_copy` loads the checkpoint a second time; `disabled_adapters` runs the same model with its LoRA
  adapters switched off (no second copy).
- The SFT term is `sft_weight` times the MDLM loss of the chosen responses, per response length, averaged over
  pairs (its masks come from the global RNG, which checkpoints restore).
- `memory_mode=auto` is `per_sample_backward` for mc_samples >= 4 (the kept graphs would cost n times the
  activations of one sample; it costs one extra forward pass without gradients), else `keep_graphs`; always
  `keep_graphs` under DeepSpeed, which expects one backward pass per micro-batch.
- Metrics use TRL's names: the Trainer logs `rewards/chosen`, ..., `logps/rejected` for training and
  `eval_rewards/chosen`, ... for validation, which `dlm.callbacks.ReporterCallback` reports as `train/rewards/chosen`
  and `val/rewards/chosen` (beside `train/loss`, `train/lr`, `train/grad_norm`, `train/memory_gb`, `val/loss`,
  `train/sft_loss`). Rewards are beta * (B_theta - B_ref) and `logps/*` the policy's ELBOs (sums over tokens).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments

from dlm.block_diffusion import model_block_size
from dlm.callbacks import Reporter, ReporterCallback
from dlm.errors import ModelError
from dlm.loading import LoadedModel
from dlm.losses import LossConfig, LossOutput, diffusion_loss, draw_mask
from dlm.preference_data import encode_preferences
from dlm.preference_loss import ElboDPOSettings, PreferenceOutput, draw_pair_masks, elbo_dpo_loss, response_elbos
from dlm.trainers.arguments import common_training_arguments, step_interval
from dlm.trainers.dpo_config import DPOConfig, DPOError
from dlm.trainers.eval_masks import FixedEvalMasks
from dlm.trainers.logs import last_logged, memory_in_use_gb
from dlm.trainers.model import load_for_training, trainable_model
from dlm.trainers.outputs import TrainResult
from dlm.trainers.reference import has_adapters, reference_model
from dlm.trainers.resuming import train_or_resume

PER_SAMPLE_FROM = 4  # memory_mode=auto back-propagates sample by sample from this many Monte-Carlo samples on
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


@dataclass
class DPOResult(TrainResult):
    """What `dlm.trainers.outputs.save_outputs` needs, plus the last validation metrics (empty without validation data)."""

    validation_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class PreferenceCollator:
    """Rows of `encode_preferences` into a batch of 2B sequences: prompt + chosen (rows 0..B-1), then prompt +
    rejected (rows B..2B-1), right-padded with `pad_id`; `response_mask` marks the response tokens,
    `attention_mask` the real ones, `example_ids` (a list of str) seeds the masks, and `reference_logps` [2B]
    is present once the reference ELBOs were precomputed."""

    pad_id: int

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        parts = [(r["prompt_ids"], r["chosen_ids"]) for r in rows] + [
            (r["prompt_ids"], r["rejected_ids"]) for r in rows
        ]
        for row in rows:
            if not row["chosen_ids"] or not row["rejected_ids"]:
                raise DPOError(f"preference pair {row['id']} has an empty response: it cannot be scored")
        width = max(len(prompt) + len(response) for prompt, response in parts)
        input_ids = torch.full((len(parts), width), self.pad_id, dtype=torch.long)
        response_mask = torch.zeros((len(parts), width), dtype=torch.bool)
        attention_mask = torch.zeros((len(parts), width), dtype=torch.long)
        for i, (prompt, response) in enumerate(parts):
            end = len(prompt) + len(response)
            input_ids[i, :end] = torch.tensor([*prompt, *response])
            response_mask[i, len(prompt) : end] = True
            attention_mask[i, :end] = 1
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "response_mask": response_mask,
            "attention_mask": attention_mask,
            "example_ids": [str(r["id"]) for r in rows],
        }
        if all("reference_logps" in r for r in rows):
            chosen, rejected = zip(*(r["reference_logps"] for r in rows), strict=True)
            batch["reference_logps"] = torch.tensor([*chosen, *rejected], dtype=torch.float64)
        return batch


class DiffusionDPOTrainer(FixedEvalMasks, Trainer):
    """Trains `model` with ELBO-DPO (see `dlm.preference_loss`) plus `sft_weight` times the MDLM loss of the chosen
    responses (`sft_config`). The DPO settings come from `config` (the estimator's through `settings`, built from it
    by `elbo_settings`). The reference is `ref_model` (frozen_copy), the model with its LoRA adapters disabled, or
    ELBOs precomputed here at construction (precomputed)."""

    def __init__(
        self,
        *args: Any,
        config: DPOConfig,
        settings: ElboDPOSettings,
        sft_config: LossConfig,
        ref_model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.settings = settings
        self.sft_config = sft_config
        self.loss_is_scaled_for_ga = True  # each micro-batch divides by the pairs of the whole optimizer step
        mode = self.reference_mode = config.reference_mode
        if mode == "frozen_copy" and ref_model is None:
            raise DPOError("reference=frozen_copy needs a reference model (ref_model)")
        if mode == "disabled_adapters" and not has_adapters(self.accelerator.unwrap_model(self.model)):
            raise DPOError("reference=disabled_adapters needs a model with LoRA adapters (a peft model)")
        self.memory_mode = config.memory_mode
        if self.memory_mode == "auto":
            per_sample = config.mc_samples >= PER_SAMPLE_FROM and not self.is_deepspeed_enabled
            self.memory_mode = "per_sample_backward" if per_sample else "keep_graphs"
        if self.memory_mode == "per_sample_backward" and self.is_deepspeed_enabled:
            # DeepSpeed counts backward passes as accumulation steps: one per micro-batch only
            raise DPOError("memory_mode=per_sample_backward does not work under DeepSpeed: use keep_graphs or auto")
        self.ref_model = ref_model.eval().requires_grad_(False) if mode == "frozen_copy" else None
        if self.ref_model is not None and not getattr(self.ref_model, "hf_device_map", None):
            self.ref_model.to(self.args.device)
        self._sums: dict[str, torch.Tensor] = {}
        if mode == "precomputed":
            self.train_dataset = self.precompute_reference(self.train_dataset, "train")
            if self.eval_dataset is not None:
                self.eval_dataset = self.precompute_reference(self.eval_dataset, "eval")

    # ---- masks and the reference -------------------------------------------------------------------------------
    def _draw(self, mode: str) -> tuple[int, str]:
        """(seed, draw name) of the masks: fixed for validation; per epoch in training, except that precomputed
        reference ELBOs keep the masks of epoch 0."""
        if mode == "eval":
            return self.eval_mask_seed, "eval"
        epoch = 0 if self.reference_mode == "precomputed" else math.floor(self.state.epoch or 0)
        return self.args.seed, f"train{epoch}"

    def _masks(self, inputs: Mapping[str, Any], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy masks, reference masks): the same tensor with antithetic sharing, independent draws without."""
        seed, draw = self._draw(mode)
        block_size = self.settings.block_size
        policy = draw_pair_masks(inputs, self.config.mc_samples, seed, draw, block_size)
        if self.config.antithetic:
            return policy, policy
        return policy, draw_pair_masks(inputs, self.config.mc_samples, seed, draw + ":reference", block_size)

    def _reference_logps(self, inputs: Mapping[str, Any], masks: torch.Tensor) -> torch.Tensor:
        if "reference_logps" in inputs:
            return inputs["reference_logps"]
        with torch.no_grad(), reference_model(self.model, self.ref_model, self.accelerator) as reference:
            return response_elbos(reference, inputs, masks, self.settings)

    def precompute_reference(self, rows: Sequence[Mapping[str, Any]], mode: str) -> list[dict[str, Any]]:
        """`rows` with `reference_logps` (chosen, rejected) computed now, on the masks the policy will use.
        Each process scores its share of the rows; the results are gathered."""
        rows = list(rows)
        world, rank = self.args.world_size, self.args.process_index
        mine = list(range(rank, len(rows), world))
        found: list[tuple[int, float, float]] = []
        size = self.args.per_device_eval_batch_size
        for start in range(0, len(mine), size):
            index = mine[start : start + size]
            inputs = self._prepare_inputs(self.data_collator([rows[i] for i in index]))
            _, masks = self._masks(inputs, mode)
            logps = self._reference_logps(inputs, masks).tolist()
            found.extend((i, logps[k], logps[k + len(index)]) for k, i in enumerate(index))
        if world > 1:
            from accelerate.utils import gather_object

            found = gather_object(found)
        values = {i: (chosen, rejected) for i, chosen, rejected in found}
        return [{**row, "reference_logps": values[i]} for i, row in enumerate(rows)]

    # ---- loss ----------------------------------------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        """Pairs in one optimizer step, over its micro-batches and processes: every micro-batch divides by it."""
        pairs = torch.tensor(sum(len(b["example_ids"]) for b in batch_samples), device=device)
        if self.args.world_size > 1:
            pairs = self.accelerator.gather(pairs.reshape(1)).sum()
        return pairs

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        loss = self._loss(model, inputs, "train" if model.training else "eval", num_items_in_batch, None)
        return (loss, None) if return_outputs else loss

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.memory_mode != "per_sample_backward":
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)

        def backward(unit: Any, last: bool) -> None:
            # Gradients are synchronised across processes once, with the micro-batch's last backward pass.
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                self.accelerator.backward(unit())

        with self.compute_loss_context_manager():
            loss = self._loss(model, inputs, "train", num_items_in_batch, backward)
        return loss.detach()

    def _loss(
        self,
        model: torch.nn.Module,
        inputs: Mapping[str, Any],
        mode: str,
        num_items_in_batch: torch.Tensor | None,
        backward: Any,
    ) -> torch.Tensor:
        pairs = len(inputs["example_ids"])
        normaliser: float | torch.Tensor = pairs
        if mode == "train" and num_items_in_batch is not None:
            # DDP averages gradients over processes; the step's pair count already covers all of them.
            normaliser = num_items_in_batch / self.accelerator.num_processes
        policy_masks, reference_masks = self._masks(inputs, mode)
        reference_logps = self._reference_logps(inputs, reference_masks)
        sft: LossOutput | None = None
        sft_term: torch.Tensor | float = 0.0
        sft_weight = self.config.sft_weight
        if sft_weight > 0:

            def sft_unit() -> torch.Tensor:
                nonlocal sft
                sft = self._sft_loss(model, inputs, mode, normaliser)
                return sft_weight * sft.loss

            if backward is None:
                sft_term = sft_unit()
            else:
                backward(sft_unit, False)
                sft_term = sft_weight * sft.loss.detach()
        out = elbo_dpo_loss(
            model, inputs, policy_masks, reference_logps, self.settings, normaliser=normaliser, backward=backward
        )
        loss = out.loss.float() + sft_term
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"the DPO loss became {loss.item()} at step {self.state.global_step + 1}; training stopped and the "
                "last good checkpoint was kept (try a lower learning_rate or beta, or float32)"
            )
        self._accumulate(mode, out, sft, normaliser)
        return loss

    def _sft_loss(
        self, model: torch.nn.Module, inputs: Mapping[str, Any], mode: str, normaliser: float | torch.Tensor
    ) -> LossOutput:
        """The MDLM loss of the chosen responses, per response length and divided by `normaliser` (pairs)."""
        half = len(inputs["example_ids"])
        attention = inputs["attention_mask"][:half]
        width = int(attention.sum(-1).max())
        ids = inputs["input_ids"][:half, :width]
        batch = {
            "input_ids": ids,
            "labels": ids.masked_fill(~inputs["response_mask"][:half, :width], -100),
            "attention_mask": attention[:, :width],
        }
        t, masked = draw_mask(batch, self.sft_config, self._eval_generator if mode == "eval" else None)
        return diffusion_loss(model, batch, masked=masked, t=t, config=self.sft_config, num_items_in_batch=normaliser)

    def _accumulate(
        self, mode: str, out: PreferenceOutput, sft: LossOutput | None, normaliser: float | torch.Tensor
    ) -> None:
        """Sums over pairs of the logged metrics, in one tensor (so that processes can add theirs up)."""
        chosen, rejected = out.chosen_rewards, out.rejected_rewards
        half = len(chosen)
        scored = sft is not None and not sft.empty  # an SFT batch with nothing masked has no loss to average in
        sft_sum = sft.loss.detach().double() * normaliser if scored else torch.zeros_like(chosen.sum())
        values = torch.stack(
            [
                torch.full_like(chosen.sum(), half),
                chosen.sum(),
                rejected.sum(),
                (chosen > rejected).double().sum(),
                (chosen - rejected).sum(),
                out.policy_logps[:half].sum(),
                out.policy_logps[half:].sum(),
                sft_sum.reshape(()),
                torch.full_like(chosen.sum(), half if scored else 0),
            ]
        )
        self._sums[mode] = self._sums[mode] + values if mode in self._sums else values

    # ---- evaluation (fixed masks: `FixedEvalMasks`) --------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self._loss(model, inputs, "eval", None, None)
        return loss.detach(), None, None

    # ---- logging -----------------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        sums = self._sums.pop(mode, None)
        if sums is not None:
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            prefix = "eval_" if mode == "eval" else ""
            count = max(float(sums[0]), 1.0)
            for name, total in zip(METRICS, sums[1:7].tolist(), strict=True):
                logs[prefix + name] = total / count
            if self.config.sft_weight > 0 and float(sums[8]) > 0:  # over the pairs whose SFT batch scored a token
                logs[prefix + "sft_loss"] = float(sums[7]) / float(sums[8])
            if mode == "train":
                logs["memory_gb"] = memory_in_use_gb()
        super().log(logs, start_time)


def _encode(config: DPOConfig, loaded: LoadedModel, examples: Sequence[Any], what: str, reporter: Reporter) -> list:
    data = encode_preferences(
        examples, loaded.tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length
    )
    reporter.log(f"{what}: {data.summary()}")
    return data.rows


def _check_masked_diffusion(config: DPOConfig, loaded: LoadedModel) -> None:
    if not loaded.family.is_diffusion or loaded.special_ids.mask is None:
        raise ModelError(
            f"{config.model_name} is a {loaded.family.name} model without a mask token; ELBO-DPO scores responses "
            "by masking them, so it needs a masked diffusion model (LLaDA, Dream, BERT, or a causal LM converted "
            "with dlm.convert)"
        )


def training_arguments(config: DPOConfig, checkpoint_dir: Path, has_validation: bool) -> TrainingArguments:
    """What `transformers.Trainer` needs; the DPO settings stay in `config`, where the trainer reads them."""
    return TrainingArguments(
        **common_training_arguments(config, checkpoint_dir),
        warmup_steps=config.warmup,
        adam_beta2=config.adam_beta2,
        eval_strategy="steps" if has_validation and config.eval_steps > 0 else "no",
        eval_steps=step_interval(config.eval_steps) if has_validation and config.eval_steps > 0 else None,
    )


def elbo_settings(config: DPOConfig, loaded: LoadedModel) -> ElboDPOSettings:
    """The estimator's settings: the model's mask id and logit shift, and beta and the loss from `config`."""
    return ElboDPOSettings(
        mask_id=loaded.special_ids.mask,
        shift=loaded.family.shift_logits,
        beta=config.beta,
        block_size=model_block_size(loaded.family, loaded.model),
        loss_type=config.loss_type,
    )


def _build_trainer(
    config: DPOConfig,
    loaded: LoadedModel,
    model: Any,
    train: list,
    validation: list | None,
    ref_model: torch.nn.Module | None,
    progress: ReporterCallback,
) -> DiffusionDPOTrainer:
    trainer = DiffusionDPOTrainer(
        model=model,
        args=training_arguments(config, Path(config.output_dir), bool(validation)),
        train_dataset=train,
        eval_dataset=validation,
        data_collator=PreferenceCollator(loaded.special_ids.pad),
        callbacks=[progress],
        config=config,
        settings=elbo_settings(config, loaded),
        sft_config=LossConfig.for_family(loaded.family, loaded.special_ids.mask, loss_norm_type="sequence"),
        ref_model=ref_model,
    )
    trainer.remove_callback(PrinterCallback)  # metrics reach the job log through the reporter instead
    return trainer


def _log_settings(config: DPOConfig, trainer: DiffusionDPOTrainer, reporter: Reporter) -> None:
    reporter.log(
        f"ELBO-DPO: {config.mc_samples} Monte-Carlo samples per response"
        f"{' shared by policy and reference' if config.antithetic else ''}, reference {config.reference_mode}, "
        f"memory_mode {trainer.memory_mode}, beta {config.beta}, loss {config.loss_type}, sft_weight {config.sft_weight}"
    )
    if config.reference_mode == "precomputed":
        validation = trainer.eval_dataset
        reporter.log(
            f"reference ELBOs precomputed for {len(trainer.train_dataset)} training and {len(validation or [])} "
            "validation pairs"
        )


def _final_validation(trainer: DiffusionDPOTrainer) -> dict[str, float]:
    """The validation metrics of the last step, evaluating once more unless the last evaluation was at that step."""
    evaluated = [e for e in trainer.state.log_history if "eval_loss" in e]
    if not evaluated or evaluated[-1]["step"] != trainer.state.global_step:
        trainer.evaluate()
        evaluated = [e for e in trainer.state.log_history if "eval_loss" in e]
    return dict(evaluated[-1])


def _summary(config: DPOConfig, loaded: LoadedModel, trainer: DiffusionDPOTrainer, metrics: dict[str, float]) -> str:
    summary = (
        f"DPO-trained {loaded.family.name} model {config.model_name} for {trainer.state.global_step} steps; "
        f"final train/loss {last_logged(trainer, 'loss')}, train/rewards/accuracies {last_logged(trainer, 'rewards/accuracies')}"
    )
    if metrics:
        summary += f", val/rewards/accuracies {metrics.get('eval_rewards/accuracies', float('nan')):.4g}"
    return summary


def run_dpo(
    config: DPOConfig,
    train_examples: Sequence[Any],
    validation_examples: Sequence[Any] | None,
    reporter: Reporter,
) -> DPOResult:
    """Train on preference pairs (`dlm.preference_data.PreferencePair`); the returned model is the trained one (a PeftModel
    with LoRA). With validation examples, validation runs every `eval_steps` and after the last step. `config` was
    checked when it was built."""
    torch.manual_seed(config.seed)
    reporter.report_status(f"loading model {config.model_name}")
    loaded = load_for_training(config)
    _check_masked_diffusion(config, loaded)
    ref_model = load_for_training(config).model if config.reference_mode == "frozen_copy" else None
    model = trainable_model(config, loaded, reporter)
    reporter.report_status("encoding data")
    train = _encode(config, loaded, train_examples, "training pairs", reporter)
    validation = (
        _encode(config, loaded, validation_examples, "validation pairs", reporter) if validation_examples else None
    )
    progress = ReporterCallback(reporter)
    trainer = _build_trainer(config, loaded, model, train, validation, ref_model, progress)
    _log_settings(config, trainer, reporter)
    train_or_resume(trainer, config, reporter)
    metrics = _final_validation(trainer) if validation and not progress.stopped else {}
    model.eval()  # training is over: whoever uses the result next must not see dropout
    return DPOResult(
        model=model,
        tokenizer=loaded.tokenizer,
        loaded=loaded,
        global_step=trainer.state.global_step,
        stopped=progress.stopped,
        summary=_summary(config, loaded, trainer, metrics),
        checkpoint_dir=str(Path(config.output_dir)),
        validation_metrics=metrics,
    )
