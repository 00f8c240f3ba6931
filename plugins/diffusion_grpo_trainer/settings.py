"""The Diffusion GRPO Trainer's form: `GRPOConfig` with the job's own settings (data, outputs, tracking, launch).
`python -m plugin_sdk forms` writes index.json and task.yaml from it."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.trainers.grpo_config import GRPOConfig
from plugins.job_settings import DatasetSettings, TaskModel, TrainerJobSettings


@dataclass
class GRPOTrainerSettings(TrainerJobSettings, DatasetSettings, GRPOConfig):
    """Every parameter of the plugin."""


SETTINGS = GRPOTrainerSettings
TASK_HOST_PARAMETERS = TaskModel
# the fields that open the task form, after the model: the prompts, the rewards, the group, how long and how fast it
# trains, LoRA and the completion length; the rest follow in ORDER
TASK_FIRST = (
    "dataset",
    "reward_funcs",
    "num_generations",
    "num_train_epochs",
    "train_steps",
    "learning_rate",
    "batch_size",
    "lora",
    "lora_r",
    "max_completion_length",
)
# the order of the form (ui:order) and of --help's groups
ORDER = (
    "dataset",
    "dataset_split",
    "reward_funcs",
    "reward_weights",
    "reward_file",
    "code_seconds_per_test",
    "code_memory_mib",
    "num_generations",
    "num_iterations",
    "beta",
    "epsilon",
    "epsilon_high",
    "scale_rewards",
    "leave_one_out",
    "loss_type",
    "logp_estimator",
    "p_mask_prompt",
    "mc_samples",
    "steps",
    "block_length",
    "temperature",
    "remasking",
    "alg",
    "alg_temp",
    "top_p",
    "top_k",
    "cache",
    "parallel_threshold",
    "num_train_epochs",
    "train_steps",
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "learning_rate_schedule",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "lora",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "load_in_4bit",
    "load_in_8bit",
    "max_completion_length",
    "max_prompt_length",
    "max_length",
    "block_size",
    "random_sample_size",
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
    "gradient_checkpointing",
    "gpu_ids",
    "num_processes",
    "distributed_strategy",
    "trust_remote_code",
)
