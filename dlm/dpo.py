"""ELBO-DPO training of masked diffusion LMs (VRPO, LLaDA 1.5): `DPOConfig` in, a trained adapter or model out.

`run_dpo(config, train_examples, validation_examples, reporter)` loads the model (LoRA/QLoRA or full), encodes the
preference pairs (`dlm.preference_data`), trains with `DiffusionDPOTrainer` and returns the result for
`dlm.sft.save_outputs`. The loss and its estimator are in `dlm.preference_loss`.

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments

from dlm.callbacks import Reporter, ReporterCallback
from dlm.checkpoints import disk_full_named
from dlm.config import TrainerConfig
from dlm.errors import DlmError, ModelError
from dlm.loading import LoadedModel, load_model_and_tokenizer
from dlm.losses import LossConfig, LossOutput, diffusion_loss, draw_mask
from dlm.preference_loss import (
    LOSS_TYPES,
    ElboDPOSettings,
    PreferenceOutput,
    draw_pair_masks,
    elbo_dpo_loss,
    response_elbos,
)
from dlm.sft import (
    SFTResult,
    common_training_arguments,
    last_logged,
    resume_path,
    step_interval,
    trainable_model,
)
from dlm.trainer import FixedEvalMasks, memory_in_use_gb

REFERENCE_MODES = ("auto", "frozen_copy", "disabled_adapters", "precomputed")
MEMORY_MODES = ("auto", "keep_graphs", "per_sample_backward")
PER_SAMPLE_FROM = 4  # memory_mode=auto back-propagates sample by sample from this many Monte-Carlo samples on
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


class DPOError(DlmError):
    """DPO settings that cannot work together."""


@dataclass
class DPOConfig(TrainerConfig):
    """Everything a DPO run needs; built from the plugin's parameters (same names). Defaults: the LLaDA 1.5 recipe
    (shared settings declared again here where its default differs from SFT's)."""

    dataset_split: str = "train"
    random_sample_size: int = 0
    max_length: int = 1024
    max_prompt_length: int = 512
    learning_rate: float = 5e-7
    warmup_steps: int = 15
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    adam_beta2: float = 0.95
    beta: float = 0.2
    loss_type: str = "sigmoid"
    sft_weight: float = 0.05
    mc_samples: int = 8
    antithetic: bool = True
    reference: str = "auto"
    memory_mode: str = "auto"
    lora_dropout: float = 0.0
    logging_steps: int = 1
    eval_steps: float = 0.25
    adaptor_name: str = "diffusion_dpo_adaptor"

    def check(self) -> None:
        """Raise DPOError naming the setting when the settings cannot work (before anything is loaded)."""
        super().check()
        choices = {"loss_type": LOSS_TYPES, "reference": REFERENCE_MODES, "memory_mode": MEMORY_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DPOError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.mc_samples < 1:
            raise DPOError(f"mc_samples must be at least 1 (Monte-Carlo samples per ELBO), got {self.mc_samples}")
        if not self.beta > 0:
            raise DPOError(f"beta must be positive, got {self.beta}")
        if self.sft_weight < 0:
            raise DPOError(f"sft_weight must be 0 or more, got {self.sft_weight}")
        if self.reference == "disabled_adapters" and not self.lora:
            raise DPOError(
                "reference=disabled_adapters uses the base model under the LoRA adapters as the reference, but "
                "lora is off: turn lora on, or use reference=frozen_copy or precomputed"
            )
        if (self.load_in_4bit or self.load_in_8bit) and not self.lora:
            raise DPOError("load_in_4bit/load_in_8bit train only LoRA adapters: turn lora on (QLoRA)")

    @property
    def reference_mode(self) -> str:
        if self.reference != "auto":
            return self.reference
        return "disabled_adapters" if self.lora else "frozen_copy"


@dataclass
class DPOResult(SFTResult):
    """What `dlm.sft.save_outputs` needs, plus the last validation metrics (empty without validation data)."""

    validation_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class DPOTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the ELBO-DPO settings (`reference` resolved: no `auto`)."""

    beta: float = field(default=0.2, metadata={"help": "scale of the ELBO log-ratios in the score s"})
    loss_type: str = field(default="sigmoid", metadata={"help": "sigmoid (DPO) or ipo"})
    sft_weight: float = field(default=0.05, metadata={"help": "weight of the MDLM loss of the chosen response"})
    mc_samples: int = field(default=8, metadata={"help": "Monte-Carlo samples per ELBO estimate"})
    antithetic: bool = field(default=True, metadata={"help": "score the reference on the policy's masks"})
    reference: str = field(
        default="disabled_adapters", metadata={"help": "frozen_copy, disabled_adapters, precomputed"}
    )
    memory_mode: str = field(default="auto", metadata={"help": "auto, keep_graphs or per_sample_backward"})
    eval_mask_seed: int = field(default=1234, metadata={"help": "seed of the fixed validation masks"})


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
    responses (`sft_config`). The reference is `ref_model` (frozen_copy), the model with its LoRA adapters
    disabled, or ELBOs precomputed here at construction (precomputed)."""

    args: DPOTrainingArguments

    def __init__(
        self,
        *args: Any,
        settings: ElboDPOSettings,
        sft_config: LossConfig,
        ref_model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.sft_config = sft_config
        self.loss_is_scaled_for_ga = True  # each micro-batch divides by the pairs of the whole optimizer step
        mode = self.args.reference
        if mode == "frozen_copy" and ref_model is None:
            raise DPOError("reference=frozen_copy needs a reference model (ref_model)")
        if mode == "disabled_adapters" and not _has_adapters(self.accelerator.unwrap_model(self.model)):
            raise DPOError("reference=disabled_adapters needs a model with LoRA adapters (a peft model)")
        self.memory_mode = self.args.memory_mode
        if self.memory_mode == "auto":
            per_sample = settings.mc_samples >= PER_SAMPLE_FROM and not self.is_deepspeed_enabled
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
            return self.args.eval_mask_seed, "eval"
        epoch = 0 if self.args.reference == "precomputed" else math.floor(self.state.epoch or 0)
        return self.args.seed, f"train{epoch}"

    def _masks(self, inputs: Mapping[str, Any], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy masks, reference masks): the same tensor with antithetic sharing, independent draws without."""
        seed, draw = self._draw(mode)
        policy = draw_pair_masks(inputs, self.settings.mc_samples, seed, draw)
        if self.args.antithetic:
            return policy, policy
        return policy, draw_pair_masks(inputs, self.settings.mc_samples, seed, draw + ":reference")

    @contextlib.contextmanager
    def _reference(self) -> Iterator[torch.nn.Module]:
        """The reference model in eval mode, under the same autocast as the policy's prepared forward."""
        if self.ref_model is not None:
            with self.accelerator.autocast():
                yield self.ref_model
            return
        model = self.model
        # the adapters are switched off on the peft model; the forward still goes through any wrapper around it
        peft_model = self.accelerator.unwrap_model(model)
        was_training = model.training
        model.eval()
        try:
            adapters = peft_model.disable_adapter() if _has_adapters(peft_model) else contextlib.nullcontext()
            with adapters, self.accelerator.autocast():
                yield model
        finally:
            model.train(was_training)

    def _reference_logps(self, inputs: Mapping[str, Any], masks: torch.Tensor) -> torch.Tensor:
        if "reference_logps" in inputs:
            return inputs["reference_logps"]
        with torch.no_grad(), self._reference() as reference:
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
        if self.args.sft_weight > 0:

            def sft_unit() -> torch.Tensor:
                nonlocal sft
                sft = self._sft_loss(model, inputs, mode, normaliser)
                return self.args.sft_weight * sft.loss

            if backward is None:
                sft_term = sft_unit()
            else:
                backward(sft_unit, False)
                sft_term = self.args.sft_weight * sft.loss.detach()
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
        sft_sum = sft.loss.detach().double() * normaliser if sft is not None else torch.zeros_like(chosen.sum())
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
            if self.args.sft_weight > 0:
                logs[prefix + "sft_loss"] = float(sums[7]) / count
            if mode == "train":
                logs["memory_gb"] = memory_in_use_gb()
        super().log(logs, start_time)


def _has_adapters(model: torch.nn.Module) -> bool:
    return callable(getattr(model, "disable_adapter", None))


def _encode(config: DPOConfig, loaded: LoadedModel, examples: Sequence[Any], what: str, reporter: Reporter) -> list:
    from dlm.preference_data import encode_preferences

    data = encode_preferences(
        examples, loaded.tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length
    )
    reporter.log(f"{what}: {data.summary()}")
    return data.rows


def _load(config: DPOConfig) -> LoadedModel:
    quantized = config.load_in_4bit or config.load_in_8bit
    return load_model_and_tokenizer(
        config.model_name,
        dtype=config.dtype,
        load_in_4bit=config.load_in_4bit,
        load_in_8bit=config.load_in_8bit,
        trust_remote_code=config.trust_remote_code,
        workspace=config.workspace,
        device_map={"": 0} if quantized and torch.cuda.is_available() else None,
    )


def training_arguments(config: DPOConfig, checkpoint_dir: Path, has_validation: bool) -> DPOTrainingArguments:
    return DPOTrainingArguments(
        **common_training_arguments(config, checkpoint_dir),
        # warmup_steps below 1 is a fraction of training
        warmup_steps=config.warmup_steps if config.warmup_steps > 0 else min(config.warmup_ratio, 0.999),
        adam_beta2=config.adam_beta2,
        eval_strategy="steps" if has_validation and config.eval_steps > 0 else "no",
        eval_steps=step_interval(config.eval_steps) if has_validation and config.eval_steps > 0 else None,
        beta=config.beta,
        loss_type=config.loss_type,
        sft_weight=config.sft_weight,
        mc_samples=config.mc_samples,
        antithetic=config.antithetic,
        reference=config.reference_mode,
        memory_mode=config.memory_mode,
        eval_mask_seed=config.seed + 1,
    )


def run_dpo(
    config: DPOConfig,
    train_examples: Sequence[Any],
    validation_examples: Sequence[Any] | None,
    reporter: Reporter,
) -> DPOResult:
    """Train on `PreferenceExample`s (`dlm.preference_data`); the returned model is the trained one (a PeftModel
    with LoRA). With validation examples, validation runs every `eval_steps` and after the last step."""
    config.check()
    torch.manual_seed(config.seed)
    loaded = _load(config)
    if not loaded.family.is_diffusion or loaded.special_ids.mask is None:
        raise ModelError(
            f"{config.model_name} is a {loaded.family.name} model without a mask token; ELBO-DPO scores responses "
            "by masking them, so it needs a masked diffusion model (LLaDA, Dream, BERT, or a causal LM converted "
            "with dlm.convert)"
        )
    ref_model = _load(config).model if config.reference_mode == "frozen_copy" else None
    model = trainable_model(config, loaded, reporter)
    train = _encode(config, loaded, train_examples, "training pairs", reporter)
    validation = (
        _encode(config, loaded, validation_examples, "validation pairs", reporter) if validation_examples else None
    )
    checkpoint_dir = Path(config.output_dir)
    progress = ReporterCallback(reporter)
    trainer = DiffusionDPOTrainer(
        model=model,
        args=training_arguments(config, checkpoint_dir, bool(validation)),
        train_dataset=train,
        eval_dataset=validation,
        data_collator=PreferenceCollator(loaded.special_ids.pad),
        callbacks=[progress],
        settings=ElboDPOSettings(
            mask_id=loaded.special_ids.mask,
            shift=loaded.family.shift_logits,
            beta=config.beta,
            loss_type=config.loss_type,
            mc_samples=config.mc_samples,
        ),
        sft_config=LossConfig.for_family(loaded.family, loaded.special_ids.mask, loss_norm_type="sequence"),
        ref_model=ref_model,
    )
    trainer.remove_callback(PrinterCallback)  # metrics reach the job log through the reporter instead
    reporter.log(
        f"ELBO-DPO: {config.mc_samples} Monte-Carlo samples per response"
        f"{' shared by policy and reference' if config.antithetic else ''}, reference {config.reference_mode}, "
        f"memory_mode {trainer.memory_mode}, beta {config.beta}, loss {config.loss_type}, sft_weight {config.sft_weight}"
    )
    if config.reference_mode == "precomputed":
        reporter.log(
            f"reference ELBOs precomputed for {len(train)} training and {len(validation or [])} validation pairs"
        )
    resume = resume_path(config, checkpoint_dir, reporter.log)
    if resume:
        reporter.log(f"resuming from {resume}")
    with disk_full_named(checkpoint_dir):
        trainer.train(resume_from_checkpoint=resume)
    metrics: dict[str, float] = {}
    if validation and not progress.stopped:
        evaluated = [e for e in trainer.state.log_history if "eval_loss" in e]
        if not evaluated or evaluated[-1]["step"] != trainer.state.global_step:
            trainer.evaluate()
            evaluated = [e for e in trainer.state.log_history if "eval_loss" in e]
        metrics = dict(evaluated[-1])
    model.eval()  # training is over: whoever uses the result next must not see dropout
    summary = (
        f"DPO-trained {loaded.family.name} model {config.model_name} for {trainer.state.global_step} steps; "
        f"final train/loss {last_logged(trainer, 'loss')}, train/rewards/accuracies {last_logged(trainer, 'rewards/accuracies')}"
    )
    if metrics:
        summary += f", val/rewards/accuracies {metrics.get('eval_rewards/accuracies', float('nan')):.4g}"
    return DPOResult(
        model=model,
        tokenizer=loaded.tokenizer,
        loaded=loaded,
        global_step=trainer.state.global_step,
        stopped=progress.stopped,
        summary=summary,
        checkpoint_dir=str(checkpoint_dir),
        validation_metrics=metrics,
    )
