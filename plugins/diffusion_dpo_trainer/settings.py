"""The Diffusion DPO Trainer's form: `DPOConfig` with the job's own settings (data, outputs, tracking, launch).
`python -m plugin_sdk forms` writes index.json and task.yaml from it."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.settings import setting
from dlm.trainers.dpo_config import DPOConfig
from plugins.job_settings import DatasetSettings, TrainerJobSettings


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
# what a task of today's Transformer Lab carries beyond the form: the model the plugin-era host's picker filled in
TASK_HOST_PARAMETERS = {"model_name": ""}
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
