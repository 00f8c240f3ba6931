"""Masked-diffusion SFT and pre-training: `SFTConfig` in, a trained adapter or model out.

`run_sft(config, train_rows, validation_rows, reporter)` loads the model (any family, LoRA/QLoRA), encodes the
data, trains with `DiffusionTrainer` and saves the result. Rows are chat conversations (lists of messages whose
last one is the assistant's answer) in SFT mode, or plain texts in pre-training mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from dlm.callbacks import Reporter, ReporterCallback, SampleCallback
from dlm.config import TrainerConfig
from dlm.data import DiffusionCollator, encode_conversations, pack_texts
from dlm.errors import ModelError
from dlm.generation import SamplerSettings, answer
from dlm.loading import LoadedModel, load_model_and_tokenizer
from dlm.lora import apply_lora
from dlm.losses import LossConfig
from dlm.trainer import DiffusionTrainer, DiffusionTrainingArguments

TRAINING_METHODS = ("auto", "bert", "dream", "llada", "a2d", "ar")


@dataclass
class SFTConfig(TrainerConfig):
    """Everything a training run needs; built from the plugin's parameters (same names)."""

    training_method: str = "auto"
    train_mode: str = "sft"
    truncation: str = "right"
    mask_prompt_loss: bool = True
    loss_weight_type: str = "auto"
    loss_norm_type: str = "token"
    noise_schedule: str = "linear"
    time_epsilon: float = 1e-3
    random_length_ratio: float = 0.01
    perbatch_cutoff: bool = False
    resp_cutoff_ratio: float = 0.0
    pad_to: str = "batch"  # how far batches are padded with EOS (dlm.data.PAD_TO)
    eval_strategy: str = "no"
    sample_every_steps: int = 0
    num_samples: int = 2
    num_proc: int = 1


@dataclass
class SFTResult:
    model: Any
    tokenizer: Any
    loaded: LoadedModel
    global_step: int
    stopped: bool
    summary: str
    checkpoint_dir: str


def _check_method(config: SFTConfig, loaded: LoadedModel) -> str:
    """The training method: `auto` is the model's own family; a mismatch is an error naming both."""
    method = config.training_method
    if method not in TRAINING_METHODS:
        raise ModelError(f"training_method {method!r} is not one of {', '.join(TRAINING_METHODS)}")
    family = loaded.family.name
    if method in ("auto", family):
        return family
    if method == "ar" and family == "a2d":
        raise ModelError(f"{config.model_name} is a converted diffusion model; ar needs a causal checkpoint")
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
    return LossConfig.for_family(loaded.family, loaded.special_ids.mask, **overrides)


def _encode(config: SFTConfig, loaded: LoadedModel, rows: Sequence[Any], what: str, reporter: Reporter) -> list:
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
        raise ModelError(
            f"all {len(rows)} {what} examples were dropped ({data.summary()}); raise max_length "
            f"(now {config.max_length}) or use truncation=right"
        )
    return data.rows


def trainable_model(config: TrainerConfig, loaded: LoadedModel, reporter: Reporter) -> Any:
    """The loaded model, under new LoRA adapters when `config.lora` is on; its size goes to the log."""
    reporter.log(
        f"model {config.model_name}: family {loaded.family.name}, "
        f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.2f}M parameters"
    )
    if not config.lora:
        return loaded.model
    return apply_lora(
        loaded.model,
        loaded.family,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
    )


def _latest_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint of this run, else of the earlier runs whose checkpoint folders sit beside it (a job
    resumed from the workbench is a new job, with its own, still empty folder)."""
    own = get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
    if own is not None:
        return own
    states = checkpoint_dir.parent.glob("*/checkpoint-*/trainer_state.json") if checkpoint_dir.parent.is_dir() else []
    newest = max(states, key=lambda state: state.stat().st_mtime, default=None)
    return str(newest.parent) if newest is not None else None


def resume_path(config: TrainerConfig, checkpoint_dir: Path) -> str | None:
    wanted = config.resume_from_checkpoint.strip()
    if not wanted:
        return None
    if wanted == "latest":
        found = _latest_checkpoint(checkpoint_dir)
        if found is None:
            raise ModelError(
                f"resume_from_checkpoint=latest, but neither {checkpoint_dir} nor the folders beside it hold a "
                "checkpoint yet"
            )
        return found
    if not (Path(wanted) / "trainer_state.json").is_file():
        raise ModelError(f"resume_from_checkpoint={wanted!r} is not a checkpoint folder (no trainer_state.json)")
    return wanted


def step_interval(value: float) -> float | int:
    """A fraction of training below 1, a step count from 1 (what TrainingArguments expects)."""
    return float(value) if value < 1 else int(value)


def common_training_arguments(config: TrainerConfig, checkpoint_dir: Path) -> dict[str, Any]:
    """`TrainingArguments` keywords every dlm trainer shares, from their shared settings."""
    use_cpu = config.train_device == "cpu" or not torch.cuda.is_available()
    bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and not use_cpu and torch.cuda.is_bf16_supported())
    return {
        "output_dir": str(checkpoint_dir),
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.learning_rate_schedule,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "num_train_epochs": config.num_train_epochs if config.num_train_epochs > 0 else 1,
        "max_steps": config.train_steps if config.num_train_epochs == 0 else -1,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": step_interval(config.save_steps) if config.save_steps > 0 else 1.0,
        "seed": config.seed,
        "data_seed": config.seed,
        "bf16": bf16,
        "fp16": config.dtype == "float16" and not use_cpu,
        "use_cpu": use_cpu,
        "activation_checkpointing": config.gradient_checkpointing,
        "report_to": "none",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "ddp_find_unused_parameters": False,
    }


def training_arguments(config: SFTConfig, checkpoint_dir: Path, has_validation: bool) -> DiffusionTrainingArguments:
    return DiffusionTrainingArguments(
        **common_training_arguments(config, checkpoint_dir),
        warmup_steps=min(config.warmup_ratio, 0.999),  # below 1: a fraction of training
        eval_strategy=config.eval_strategy if has_validation else "no",
        eval_steps=step_interval(config.eval_steps) if config.eval_strategy == "steps" else None,
        loss_norm_type=config.loss_norm_type,
        random_length_ratio=config.random_length_ratio if config.train_mode == "pretrain" else 0.0,
        eval_mask_seed=config.seed + 1,
    )


def run_sft(
    config: SFTConfig, train_rows: Sequence[Any], validation_rows: Sequence[Any] | None, reporter: Reporter
) -> SFTResult:
    """Train; the returned model is the trained one (a PeftModel with LoRA)."""
    if config.eval_strategy != "no" and not validation_rows:
        raise ModelError(
            f"eval_strategy={config.eval_strategy} needs validation data, and there is none: add a "
            "validation split to the dataset, or set validation_fraction above 0"
        )
    if (config.load_in_4bit or config.load_in_8bit) and not config.lora:
        raise ModelError("load_in_4bit/load_in_8bit train only LoRA adapters: turn lora on (QLoRA)")
    torch.manual_seed(config.seed)
    forced = None if config.training_method in ("auto", "ar") else config.training_method
    loaded = load_model_and_tokenizer(
        config.model_name,
        family=forced if forced in ("a2d",) else None,
        dtype=config.dtype,
        load_in_4bit=config.load_in_4bit,
        load_in_8bit=config.load_in_8bit,
        trust_remote_code=config.trust_remote_code,
        workspace=config.workspace,
        device_map={"": 0} if (config.load_in_4bit or config.load_in_8bit) and torch.cuda.is_available() else None,
    )
    _check_method(config, loaded)
    model = trainable_model(config, loaded, reporter)
    train = _encode(config, loaded, train_rows, "training data", reporter)
    validation = _encode(config, loaded, validation_rows, "validation data", reporter) if validation_rows else None
    checkpoint_dir = Path(config.output_dir)
    args = training_arguments(config, checkpoint_dir, bool(validation))
    collator = DiffusionCollator(
        loaded.family,
        loaded.special_ids,
        perbatch_cutoff=config.perbatch_cutoff,
        resp_cutoff_ratio=config.resp_cutoff_ratio,
        pad_to=config.pad_to,
        max_length=config.max_length,
    )
    progress = ReporterCallback(reporter)
    callbacks = [progress]
    if config.sample_every_steps and validation_rows and config.train_mode == "sft":
        prompts = [list(conv[:-1]) for conv in list(validation_rows)[: config.num_samples]]
        settings = SamplerSettings(steps=32, max_new_tokens=32, block_length=32)

        def sample() -> list[tuple[str, str]]:
            answers = answer(model, loaded.tokenizer, loaded.family, loaded.special_ids, prompts, settings)
            return [(p[-1]["content"], a) for p, a in zip(prompts, answers, strict=True)]

        callbacks.append(SampleCallback(reporter, sample, config.sample_every_steps))
    trainer = DiffusionTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collator,
        callbacks=callbacks,
        loss_config=_loss_config(config, loaded),
    )
    trainer.remove_callback(PrinterCallback)  # metrics reach the job log through the reporter instead
    resume = resume_path(config, checkpoint_dir)
    if resume:
        reporter.log(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    model.eval()  # training is over: whoever uses the result next (samples, evaluation) must not see dropout
    if trainer.skipped_empty_batches:
        reporter.log(f"{trainer.skipped_empty_batches} batches had no trainable token and contributed nothing")
    summary = (
        f"trained {loaded.family.name} model {config.model_name} for {trainer.state.global_step} steps; "
        f"final train/loss {last_logged(trainer, 'loss')}"
    )
    return SFTResult(
        model=model,
        tokenizer=loaded.tokenizer,
        loaded=loaded,
        global_step=trainer.state.global_step,
        stopped=progress.stopped,
        summary=summary,
        checkpoint_dir=str(checkpoint_dir),
    )


def last_logged(trainer: DiffusionTrainer, key: str) -> str:
    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    return f"{values[-1]:.4g}" if values else "n/a"


def save_outputs(result: SFTResult, *, adaptor_dir: Path | None, full_model_dir: Path | None) -> list[Path]:
    """Save the LoRA adapter (loadable with `PeftModel.from_pretrained` on the base) and/or the full model
    (LoRA merged) as a normal checkpoint. Written to a temporary folder and renamed, so nothing half-written is
    ever taken for a result."""
    written = []
    model = result.model
    if adaptor_dir is not None and hasattr(model, "peft_config"):
        written.append(_save_atomically(model, result.tokenizer, adaptor_dir))
    if full_model_dir is not None:
        full = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        written.append(_save_atomically(full, result.tokenizer, full_model_dir))
    return written


def _save_atomically(model: Any, tokenizer: Any, destination: Path) -> Path:
    import shutil
    import tempfile

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.partial-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination
