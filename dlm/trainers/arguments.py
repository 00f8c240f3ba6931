"""The `TrainingArguments` keywords every dlm trainer shares, from the shared settings of `TrainerConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dlm.trainers.config import TrainerConfig


def step_interval(value: float) -> float | int:
    """A fraction of training below 1, a step count from 1 (what TrainingArguments expects)."""
    return float(value) if value < 1 else int(value)


def learning_rate_schedule(config: TrainerConfig) -> str:
    """transformers' scheduler for the settings: `constant` with a warm-up is `constant_with_warmup`, since
    transformers' `constant` ignores the warm-up settings without a word."""
    if config.learning_rate_schedule == "constant" and config.warmup > 0:
        return "constant_with_warmup"
    return config.learning_rate_schedule


def schedule_note(config: TrainerConfig) -> str | None:
    """What the log says when the scheduler used differs from the one set (`learning_rate_schedule`)."""
    used = learning_rate_schedule(config)
    if used == config.learning_rate_schedule:
        return None
    warmup = f"{config.warmup:g} steps" if config.warmup >= 1 else f"{config.warmup:.1%} of the steps"
    return (
        f"learning_rate_schedule={config.learning_rate_schedule} with a warm-up of {warmup}: using {used}, so the "
        "learning rate rises from 0 over the warm-up and then stays at learning_rate; set the warm-up to 0 for a "
        "rate constant from the first step"
    )


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
        "lr_scheduler_type": learning_rate_schedule(config),
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "num_train_epochs": config.num_train_epochs if config.num_train_epochs > 0 else 1,
        "max_steps": config.train_steps if config.num_train_epochs == 0 else -1,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": step_interval(config.save_steps) if config.save_steps > 0 else 1.0,
        "save_total_limit": config.save_total_limit or None,
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
