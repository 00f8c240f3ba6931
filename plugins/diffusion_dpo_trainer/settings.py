"""The Diffusion DPO Trainer's form: `DPOConfig` with the job's own settings (data, outputs, tracking, launch).
`python -m plugin_sdk forms` writes index.json and task.yaml from it."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.settings import setting
from dlm.trainers.dpo_config import DPOConfig
from plugins.job_settings import DatasetSettings, TaskModel, TrainerJobSettings


@dataclass
class DPOTrainerSettings(TrainerJobSettings, DatasetSettings, DPOConfig):
    """Every parameter of the plugin."""

    validation_fraction: float = setting(
        0.05,
        title="Held-out validation share",
        group="data",
        help=(
            "Share of the training pairs held out for the val/ metrics when the dataset has no validation split; "
            "0 holds none out (no validation then)."
        ),
        minimum=0,
        maximum=0.5,
    )


SETTINGS = DPOTrainerSettings
TASK_HOST_PARAMETERS = TaskModel
# the fields that open the task form, after the model: the preference data, the DPO objective, how long and how fast it trains, LoRA and the sequence length; the rest follow in ORDER
TASK_FIRST = (
    "dataset",
    "beta",
    "loss_type",
    "num_train_epochs",
    "train_steps",
    "learning_rate",
    "batch_size",
    "lora",
    "lora_r",
    "max_length",
)
# the order of the form (ui:order) and of --help's groups
ORDER = (
    "dataset",
    "dataset_split",
    "beta",
    "loss_type",
    "sft_weight",
    "mc_samples",
    "antithetic",
    "reference",
    "num_train_epochs",
    "train_steps",
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "learning_rate_schedule",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "adam_beta2",
    "max_grad_norm",
    "seed",
    "lora",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "load_in_4bit",
    "load_in_8bit",
    "max_length",
    "max_prompt_length",
    "random_sample_size",
    "validation_fraction",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "resume_from_checkpoint",
    "adaptor_name",
    "save_full_model",
    "log_to_wandb",
    "train_device",
    "dtype",
    "memory_mode",
    "gradient_checkpointing",
    "gpu_ids",
    "num_processes",
    "distributed_strategy",
    "trust_remote_code",
)
