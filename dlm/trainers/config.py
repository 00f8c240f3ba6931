"""`TrainerConfig`: the settings every dlm trainer shares, named like the plugin parameters they come from.

`SFTConfig` and `DPOConfig` add their own settings; a subclass that wants another default (or help text) for a shared
setting declares the field again (dataclass inheritance keeps the field's place, with the new default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import torch

from dlm.errors import ConfigError

SEED_LIMIT = 2**32  # numpy (through transformers' set_seed) takes seeds below 2**32


@dataclass
class TrainerConfig:
    """Shared training settings; defaults are those of masked-diffusion SFT."""

    model_name: str
    output_dir: str
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4  # with LoRA (the default); full fine-tuning wants ~2e-5
    learning_rate_schedule: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_train_epochs: int = 1
    train_steps: int = 0
    max_length: int = 512
    seed: int = 42
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "default"
    logging_steps: int = 10
    eval_steps: float = 0.1
    save_steps: float = 0.25
    save_total_limit: int = 0  # checkpoints kept (the oldest go first); 0 keeps all
    resume_from_checkpoint: str = ""
    train_device: str = "auto"
    trust_remote_code: bool = False
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

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> Self:
        """The config from a job's parameters (unknown names and None values ignored), then `overrides`."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in params.items() if k in names and v is not None}
        return cls(**{**values, **overrides})

    @property
    def quantized(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit
