"""What every preset builder shares: model shapes (`Dims`, the tiny sizes) and saving a seeded random model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlm.presets.bpe import SEED

HIDDEN = 128
LAYERS = 2
HEADS = 4
INTERMEDIATE = 256


@dataclass(frozen=True)
class Dims:
    """The shape of a model: width, attention heads (and key/value heads), depth, MLP width; for the
    mixture-of-experts families, routed experts per MoE layer and experts per token (None: their tiny layout)."""

    hidden: int
    heads: int
    layers: int
    intermediate: int
    kv_heads: int | None = None  # None: as many as the heads
    experts: int | None = None
    experts_per_token: int | None = None


TINY = Dims(HIDDEN, HEADS, LAYERS, INTERMEDIATE)
TINY_DREAM = Dims(HIDDEN, HEADS, LAYERS, INTERMEDIATE, kv_heads=HEADS // 2)


def padded(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def save_random_model(auto_class_name: str, config, tokenizer, dst: Path) -> None:
    import torch
    import transformers

    auto_class = getattr(transformers, auto_class_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = auto_class.from_config(config, dtype=torch.float32)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)


def special_token_ids(tokenizer: Any) -> dict[str, int | None]:
    return {
        "mask_token_id": tokenizer.mask_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
