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
# the sweep task (plugins/diffusion_dpo_trainer/sweep/task.yaml, written by `python -m plugin_sdk forms`): one job per
# combination (here 4), ranked by the reward accuracy each job reports in its score (`val/rewards/accuracies`: how
# often the chosen answer outscores the rejected one on the validation_fraction split at the last evaluation; higher
# is better).
SWEEP = {
    "sweep_config": {"learning_rate": [5.0e-06, 2.0e-05], "lora_r": [8, 32]},
    "sweep_metric": "val/rewards/accuracies",
    "lower_is_better": False,
}
SWEEP_DESCRIPTION = (
    "Diffusion DPO Trainer, learning-rate x LoRA-rank sweep: four DPO jobs (learning rate 5e-6 and 2e-5, LoRA rank 8 "
    "and 32), ranked by held-out reward accuracy (val/rewards/accuracies, higher is better)."
)
