"""Settings that plugin_sdk reads for the plugins (the dataset, outputs, tracking, launch), as mixins of the plugins'
settings dataclasses (`plugins/<id>/settings.py`); each is declared once here for every plugin that has it."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.settings import setting


@dataclass
class DatasetSettings:
    """The dataset every plugin reads (`plugin_sdk.data.dataset_source`)."""

    dataset: str = setting(
        "",
        title="Dataset file or folder",
        group="data",
        help=(
            "Leave empty to use the dataset chosen on the Dataset tab. Otherwise a local file (json, jsonl, csv, "
            "parquet), a folder of them, or a workspace dataset id, which then wins over the Dataset tab."
        ),
        task_widget="lab_dataset_select",
        task_help=(
            "A dataset of the workspace, or (tick 'Enter any string') a local file (json, jsonl, csv, parquet) or a "
            "folder of them."
        ),
    )


@dataclass
class TaskModel:
    """What a task of today's Transformer Lab carries beyond the form (a plugin's `TASK_HOST_PARAMETERS`): the model,
    which the plugin-era host's model picker filled in as `model_name`; the task form picks it with the host's."""

    model_name: str = setting(
        "",
        title="Model",
        group="model",
        help=(
            "The model to start from: a model of the workspace, a Hugging Face model id or a local folder (tick "
            "'Enter any string' to type one)."
        ),
        task_widget="lab_model_select",
        required=True,
    )


@dataclass
class TaskModelAndAdapter(TaskModel):
    """The evaluator's model: `TaskModel` and an adapter of it."""

    model_adapter: str = setting(
        "",
        title="Adapter",
        group="model",
        help=(
            "An adapter to evaluate on top of the model: its name under the workspace's adaptors/<model>/ folder, "
            "or a folder path. Empty: the model alone."
        ),
    )


@dataclass
class TrainerJobSettings:
    """What both trainers' jobs share beyond `TrainerConfig`: the full-model output (`plugin_sdk.outputs`), tracking
    (`plugin_sdk.tracking`) and the multi-process launch (`plugin_sdk.launch`)."""

    save_full_model: bool = setting(
        False,
        title="Also save a full model with LoRA merged in",
        group="checkpoints and outputs",
        ui_help=(
            "Merge the LoRA adapter into the base weights and add the result to the model zoo as a new model. "
            "Without LoRA the full model is always saved."
        ),
    )
    log_to_wandb: bool = setting(
        False,
        title="Log to Weights & Biases",
        group="tracking",
        ui_help=(
            "Also log to Weights & Biases (needs an API key; without one the job continues with TensorBoard only)."
        ),
    )
    gpu_ids: str = setting(
        "",
        title="GPUs to use",
        group="launch",
        help=(
            "Comma-separated GPU numbers such as 0,1 (one process per GPU), or auto for every visible GPU. Empty: "
            "one process."
        ),
        placeholder="0,1 or auto",
    )
    num_processes: int = setting(
        1,
        title="Processes without a GPU list",
        group="launch",
        help="Data-parallel processes when no GPUs are listed above (for example 2 on CPU).",
        minimum=1,
        maximum=64,
    )
    distributed_strategy: str = setting(
        "ddp",
        title="Multi-GPU strategy",
        group="launch",
        help=(
            "Multi-process strategy: ddp, or one of the shipped accelerate configs (fsdp, deepspeed_zero2, "
            "deepspeed_zero3)."
        ),
        choices=("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"),
    )
