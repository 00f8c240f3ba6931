"""The Diffusion LLM Trainer's form: `SFTConfig` with the job's own settings (data, pre-training corpus and
tokenizer, outputs, tracking, launch). `python -m plugin_sdk forms` writes index.json and task.yaml from it."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.settings import setting
from dlm.trainers.sft_config import SFTConfig
from plugins.job_settings import DatasetSettings, TaskModel, TrainerJobSettings


@dataclass
class TrainerSettings(TrainerJobSettings, DatasetSettings, SFTConfig):
    """Every parameter of the plugin."""

    corpus: str = setting(
        "",
        title="Pre-training corpus",
        group="data",
        help=(
            "Pre-training only: a text, .gz or JSONL file (text field), a folder of them, or hf:<dataset "
            "id>[:<config>] streamed from the hub. Tokenized once into a cached token file under "
            "<workspace>/corpora/ that later and resumed jobs reuse; used instead of dataset."
        ),
    )
    tokenizer: str = setting(
        "",
        title="Tokenizer",
        group="data",
        help=(
            "For a size preset (small-llada, medium-ar, ...): empty trains a BPE on the corpus with the family's "
            "special tokens and chat template; preset uses the presets' small tokenizer; any other value is an "
            "existing tokenizer (folder or hub id)."
        ),
    )
    tokenizer_vocab_size: int = setting(
        32000,
        title="Tokenizer vocabulary size",
        group="data",
        help="Vocabulary of a tokenizer trained on the corpus.",
        minimum=300,
        maximum=262144,
    )
    tokenizer_train_chars: int = setting(
        50000000,
        title="Tokenizer training characters",
        group="data",
        help="How much of the corpus (its first documents, in characters) trains the tokenizer.",
        minimum=1000,
    )
    token_dtype: str = setting(
        "auto",
        title="Token file dtype",
        group="data",
        help="Integer type of the token file: auto (uint16 up to 65,536 ids, else uint32), uint16 or uint32.",
        choices=("auto", "uint16", "uint32"),
    )
    pretrain_defaults: bool = setting(
        True,
        title="Use the pre-training recipe's defaults",
        group="method",
        ui_help=(
            "Pre-training only: settings left at their fine-tuning defaults take the pre-training recipe's (lora "
            "off, learning_rate 3e-4, warmup_ratio 0.01, weight_decay 0.1, cosine, save_total_limit 3). Off: the "
            "form's values are used as they are."
        ),
    )
    system_message: str = setting(
        "", title="System message", group="data", help="Optional system message prepended to every conversation."
    )
    max_samples: int = setting(
        0,
        title="Examples to use at most",
        group="data",
        help="Train on a random subset of this many examples (the same subset for the same seed); 0 uses all.",
        minimum=0,
    )
    validation_fraction: float = setting(
        0.05,
        title="Held-out validation share",
        group="data",
        help=(
            "Share of the training data held out for validation when the dataset has no validation split and "
            "validation is on."
        ),
        minimum=0,
        maximum=0.5,
    )
    adaptor_name: str = setting(
        "diffusion_adaptor",
        title="Adapter name",
        group="checkpoints and outputs",
        help="Name of the LoRA adapter (a folder name).",
    )
    wandb_project: str = setting(
        "", title="W&B project", group="tracking", help="W&B project; empty: $WANDB_PROJECT, else dlm-plugins."
    )
    wandb_run_name: str = setting(
        "",
        title="Run name",
        group="tracking",
        help=(
            "Name of the W&B run and of the TensorBoard folder; empty: $WANDB_NAME, else "
            "{arch}-{data}-{size}-v{n}. A resumed job continues the run it resumes."
        ),
    )
    wandb_group: str = setting(
        "", title="W&B group", group="tracking", help="W&B run group; empty: $WANDB_RUN_GROUP, else none."
    )
    wandb_tags: str = setting(
        "", title="W&B tags", group="tracking", help="Comma-separated W&B tags; empty: $WANDB_TAGS, else none."
    )
    num_machines: int = setting(
        1,
        title="Machines",
        group="launch",
        help=(
            "Machines in a multi-machine run; start the same job on each with its own machine_rank (processes per "
            "machine: gpu_ids or num_processes)."
        ),
        minimum=1,
        maximum=1024,
    )
    machine_rank: int = setting(
        0,
        title="Machine rank",
        group="launch",
        help="This machine's rank, 0 to num_machines - 1; 0 is the main machine, at main_process_ip.",
        minimum=0,
    )
    main_process_ip: str = setting(
        "",
        title="Main process address",
        group="launch",
        help=(
            "Address of the machine with machine_rank 0, reachable from every machine (needed when num_machines > 1)."
        ),
    )
    main_process_port: int = setting(
        0,
        title="Main process port",
        group="launch",
        help=("Rendezvous port on the main machine (needed when num_machines > 1); 0 on one machine picks a free one."),
        minimum=0,
        maximum=65535,
    )
    rendezvous_timeout: float = setting(
        300,
        title="Rendezvous timeout",
        group="launch",
        help=(
            "Seconds a machine other than the main one waits for the main process to be reachable before the job fails."
        ),
        minimum=1,
    )


SETTINGS = TrainerSettings
TASK_HOST_PARAMETERS = TaskModel
# the fields that open the task form, after the model: what a run is about (data, mode, model family), how long and how fast it trains, LoRA and the sequence length; the rest follow in ORDER
TASK_FIRST = (
    "dataset",
    "train_mode",
    "training_method",
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
    "train_mode",
    "corpus",
    "tokenizer",
    "tokenizer_vocab_size",
    "tokenizer_train_chars",
    "token_dtype",
    "pretrain_defaults",
    "training_method",
    "system_message",
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
    "max_length",
    "truncation",
    "pad_to",
    "mask_prompt_loss",
    "max_samples",
    "validation_fraction",
    "num_proc",
    "loss_weight_type",
    "loss_norm_type",
    "noise_schedule",
    "time_epsilon",
    "random_length_ratio",
    "perbatch_cutoff",
    "resp_cutoff_ratio",
    "logging_steps",
    "eval_strategy",
    "eval_steps",
    "sample_every_steps",
    "num_samples",
    "sample_cache",
    "sample_parallel_threshold",
    "save_steps",
    "save_total_limit",
    "resume_from_checkpoint",
    "adaptor_name",
    "save_full_model",
    "log_to_wandb",
    "wandb_project",
    "wandb_run_name",
    "wandb_group",
    "wandb_tags",
    "train_device",
    "dtype",
    "gradient_checkpointing",
    "gpu_ids",
    "num_processes",
    "distributed_strategy",
    "num_machines",
    "machine_rank",
    "main_process_ip",
    "main_process_port",
    "rendezvous_timeout",
    "trust_remote_code",
)
# the sweep task (plugins/diffusion_llm_trainer/sweep/task.yaml, written by `python -m plugin_sdk forms`): one job per
# combination (here 4), ranked by the held-out loss each job reports in its score (`val/loss`: the last evaluation on
# the validation_fraction split; lower is better). A single run's defaults leave validation off: the sweep turns it
# on for its jobs (eval_strategy, a one-value dimension).
SWEEP = {
    "sweep_config": {"learning_rate": [0.0001, 0.0003], "lora_r": [8, 32], "eval_strategy": ["steps"]},
    "sweep_metric": "val/loss",
    "lower_is_better": True,
}
SWEEP_DESCRIPTION = (
    "Diffusion LLM Trainer, learning-rate x LoRA-rank sweep: four fine-tuning jobs (learning rate 1e-4 and 3e-4, LoRA "
    "rank 8 and 32), ranked by held-out loss (val/loss, lower is better)."
)
