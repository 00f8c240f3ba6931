"""`TrainerConfig`: the settings every dlm trainer shares, named like the plugin parameters they come from.

`SFTConfig` and `DPOConfig` add their own settings; a subclass that wants another default (or help text) for a shared
setting declares the field again (dataclass inheritance keeps the field's place, with the new default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.errors import ConfigError
from dlm.loading import DTYPES
from dlm.settings import FromParams, setting

SEED_LIMIT = 2**32  # numpy (through transformers' set_seed) takes seeds below 2**32
LEARNING_RATE_SCHEDULES = ("constant", "linear", "cosine", "constant_with_warmup")  # transformers' scheduler names


@dataclass
class TrainerConfig(FromParams):
    """Shared training settings, each with its form (`dlm.settings.setting`); defaults and help are those of
    masked-diffusion SFT. `model_name`, `output_dir` and `workspace` come from the host, not the form."""

    model_name: str
    output_dir: str
    batch_size: int = setting(
        4,
        title="Batch size per device",
        group="optimization",
        help="Sequences per device per micro-batch.",
        minimum=1,
        maximum=1024,
    )
    gradient_accumulation_steps: int = setting(
        1,
        title="Gradient accumulation",
        group="optimization",
        help=(
            "Micro-batches accumulated per optimizer step; accumulation is exact (k micro-batches equal one batch "
            "k times larger)."
        ),
        minimum=1,
        maximum=1024,
    )
    learning_rate: float = setting(
        0.0001,
        title="Learning rate",
        group="optimization",
        help=(
            "Peak AdamW learning rate. With LoRA (the default) 1e-4 to 2e-4 works well; for all weights use about "
            "2.5e-5 (LLaDA's SFT)."
        ),
        minimum=0,
        maximum=1,
    )
    learning_rate_schedule: str = setting(
        "cosine",
        title="Learning-rate schedule",
        group="optimization",
        help="How the learning rate falls after warm-up.",
        choices=LEARNING_RATE_SCHEDULES,
    )
    warmup_ratio: float = setting(
        0.03,
        title="Warm-up share of steps",
        group="optimization",
        help="Fraction of the optimizer steps spent warming the learning rate up from 0.",
        minimum=0,
        maximum=1,
    )
    weight_decay: float = setting(
        0.0,
        title="Weight decay",
        group="optimization",
        help="AdamW's decoupled weight decay; 0 turns it off.",
        minimum=0,
        maximum=1,
    )
    max_grad_norm: float = setting(
        1.0,
        title="Gradient clipping",
        group="optimization",
        help="Gradient clipping norm (0 disables clipping).",
        minimum=0,
    )
    num_train_epochs: int = setting(
        1,
        title="Epochs",
        group="optimization",
        help="Passes over the training data; 0: train for the number of steps below instead.",
        minimum=0,
        maximum=1000,
    )
    train_steps: int = setting(
        0,
        title="Optimizer steps",
        group="optimization",
        help="Used only when Epochs is 0: training stops after this many optimizer steps.",
        minimum=0,
    )
    max_length: int = setting(
        512,
        title="Maximum length in tokens",
        group="sequences",
        help="Maximum tokens per training sequence (prompt plus answer).",
        minimum=8,
        maximum=131072,
    )
    block_size: int = setting(
        0,
        title="Block size (block diffusion)",
        group="sequences",
        help=(
            "Block diffusion models (bd3lm): tokens per block of the x_t ⊕ x_0 training objective, and rows are "
            "padded with EOS to a multiple of it. 0: the model's own (block_size in its config, else 32). Must be 0 "
            "for full-sequence diffusion models."
        ),
        minimum=0,
        maximum=4096,
    )
    seed: int = setting(
        42,
        title="Random seed",
        group="optimization",
        help="Random seed for data order, masking and initialisation.",
        minimum=0,
    )
    dtype: str = setting(
        "auto",
        title="Precision",
        group="hardware",
        help=(
            "Weights and compute precision: auto (bfloat16 on a GPU that supports it, else float32), float32, "
            "bfloat16 or float16."
        ),
        choices=DTYPES,
    )
    gradient_checkpointing: bool = setting(
        False,
        title="Save memory by recomputing activations",
        group="hardware",
        ui_help="Recomputes activations in the backward pass: slower, but fits longer sequences or larger batches.",
    )
    load_in_4bit: bool = setting(
        False,
        title="QLoRA: load the base model in 4-bit",
        group="LoRA and quantization",
        ui_help="Load the base model in 4-bit (NF4) through bitsandbytes; use with LoRA (QLoRA).",
    )
    load_in_8bit: bool = setting(
        False,
        title="Load the base model in 8-bit",
        group="LoRA and quantization",
        ui_help="Load the base model in 8-bit through bitsandbytes; use with LoRA.",
    )
    lora: bool = setting(
        True,
        title="Train LoRA adapters",
        group="LoRA and quantization",
        ui_help="Off: every weight is trained, which needs far more memory and a lower learning rate.",
    )
    lora_r: int = setting(
        16,
        title="LoRA rank",
        group="LoRA and quantization",
        help="Higher ranks learn more and use more memory; 8 to 64 is usual.",
        minimum=4,
        maximum=1024,
        multiple_of=4,
    )
    lora_alpha: int = setting(
        32,
        title="LoRA alpha",
        group="LoRA and quantization",
        help="The update is scaled by alpha / rank; twice the rank is a common choice.",
        minimum=4,
        maximum=4096,
        multiple_of=4,
    )
    lora_dropout: float = setting(
        0.05,
        title="LoRA dropout",
        group="LoRA and quantization",
        help="Dropout on the LoRA path; 0 turns it off.",
        minimum=0,
        maximum=0.5,
    )
    lora_target_modules: str = setting(
        "default",
        title="LoRA target modules",
        group="LoRA and quantization",
        help=(
            "Modules that get LoRA: default (the family's attention and MLP projections; a mixture-of-experts "
            "family's attention only), default+experts (with the experts' MLPs), all-linear, or a comma-separated "
            "list of module names."
        ),
    )
    logging_steps: int = setting(
        10,
        title="Log every N steps",
        group="logging and validation",
        help="Log metrics every this many optimizer steps.",
        minimum=1,
    )
    eval_steps: float = setting(
        0.1,
        title="Validate every",
        group="logging and validation",
        help="Below 1: a fraction of training (0.1 = ten times); from 1: a number of optimizer steps.",
        minimum=0,
    )
    save_steps: float = setting(
        0.25,
        title="Checkpoint every",
        group="checkpoints and outputs",
        help=(
            "Below 1: a fraction of training (0.25 = four checkpoints); from 1: a number of optimizer steps. "
            "Checkpoints resume exactly."
        ),
        minimum=0,
    )
    save_total_limit: int = setting(
        0,
        title="Checkpoints kept",
        group="checkpoints and outputs",
        help="Keep at most this many checkpoints, deleting the oldest; 0 keeps all.",
        minimum=0,
    )
    resume_from_checkpoint: str = setting(
        "",
        title="Resume from checkpoint",
        group="checkpoints and outputs",
        help="A checkpoint folder, or latest for the newest checkpoint of this run's output folder. Empty: start fresh.",
    )
    train_device: str = setting(
        "auto",
        title="Device",
        group="hardware",
        help="Where to train: cuda, cpu, or auto (cuda when available).",
        choices=("auto", "cuda", "cpu"),
    )
    trust_remote_code: bool = setting(
        False,
        title="Allow the checkpoint's own code to run",
        group="hardware",
        ui_help=(
            "Allow a checkpoint's own Python code to run when its architecture is not implemented natively. Off "
            "by default: remote code never runs unless you allow it."
        ),
    )
    workspace: str | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ConfigError naming the setting when the settings cannot work; runs when the config is built, so
        before any data or model is loaded. Subclasses extend it."""
        if self.num_train_epochs == 0 and self.train_steps == 0:
            raise ConfigError(
                "num_train_epochs is 0 and train_steps is 0: nothing would be trained; set num_train_epochs to 1 or "
                "more, or train_steps to the number of optimizer steps"
            )
        if self.num_train_epochs > 0 and self.train_steps > 0:
            raise ConfigError(
                f"train_steps={self.train_steps} (max_steps) counts only when num_train_epochs is 0, and "
                f"num_train_epochs is {self.num_train_epochs}: set num_train_epochs to 0 to train for "
                f"{self.train_steps} steps, or train_steps to 0"
            )
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"seed={self.seed} does not fit: use a whole number from 0 to {SEED_LIMIT - 1}")
        if self.quantized and not self.lora:
            raise ConfigError("load_in_4bit/load_in_8bit train only LoRA adapters: turn lora on (QLoRA)")
        if self.train_device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "train_device=cuda, but no CUDA GPU is visible here (torch.cuda.is_available() is false); "
                "use train_device=auto or cpu, or check CUDA_VISIBLE_DEVICES and the driver"
            )

    @property
    def quantized(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit

    @property
    def warmup(self) -> float | int:
        """The warm-up as TrainingArguments' `warmup_steps` takes it: below 1 a share of training, else steps."""
        return min(self.warmup_ratio, 0.999)
