"""`TrainerConfig`: the settings every dlm trainer shares (model loading, LoRA, optimisation, logging and saving,
device, seed), named like the plugin parameters they come from.

`dlm.sft.SFTConfig` and `dlm.dpo.DPOConfig` add their own settings; a subclass that wants another default for a
shared setting declares the field again with it (dataclass inheritance keeps the field, with the new default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self


@dataclass
class TrainerConfig:
    """Shared training settings; defaults are those of masked-diffusion SFT."""

    model_name: str
    output_dir: str
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
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

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> Self:
        """The config from a job's parameters (unknown names and None values ignored), then `overrides`."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in params.items() if k in names and v is not None}
        return cls(**{**values, **overrides})
