"""The model a trainer trains: loaded for training (QLoRA on the first GPU when asked), its length checked against the
position table, under new LoRA adapters when asked."""

from __future__ import annotations

from typing import Any

import torch

from dlm.callbacks import Reporter
from dlm.errors import ConfigError
from dlm.loading import LoadedModel, load_model_and_tokenizer
from dlm.lora import apply_lora
from dlm.trainers.config import TrainerConfig


def load_for_training(config: TrainerConfig, family: str | None = None) -> LoadedModel:
    """The model to train, quantized (QLoRA) on the first GPU when asked."""
    return load_model_and_tokenizer(
        config.model_name,
        family=family,
        dtype=config.dtype,
        load_in_4bit=config.load_in_4bit,
        load_in_8bit=config.load_in_8bit,
        trust_remote_code=config.trust_remote_code,
        workspace=config.workspace,
        device_map={"": 0} if config.quantized and torch.cuda.is_available() else None,
    )


def check_positions(config: TrainerConfig, loaded: LoadedModel) -> None:
    """max_length must fit the model's position table (a longer sequence fails or silently degrades)."""
    model_config = loaded.model.config
    limit = getattr(model_config, "max_sequence_length", None) or getattr(model_config, "max_position_embeddings", None)
    if isinstance(limit, int) and config.max_length > limit:
        raise ConfigError(
            f"max_length={config.max_length} is longer than {config.model_name} can take ({limit} positions); "
            f"set max_length to {limit} or less"
        )


def trainable_model(config: TrainerConfig, loaded: LoadedModel, reporter: Reporter) -> Any:
    """The loaded model, under new LoRA adapters when `config.lora` is on; its size goes to the log."""
    check_positions(config, loaded)
    reporter.log(
        f"model {config.model_name}: family {loaded.family.name}, "
        f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.2f}M parameters"
    )
    if not config.lora:
        return loaded.model
    return apply_lora(
        loaded.model,
        loaded.family,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
    )
