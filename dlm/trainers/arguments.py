"""The `TrainingArguments` keywords every dlm trainer shares, from the shared settings of `TrainerConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dlm.trainers.config import TrainerConfig


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
