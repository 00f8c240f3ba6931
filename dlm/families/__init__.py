"""The model families dlm knows: one module per family (`llada`, `llada_moe`, `llada2`, `dream`, `bert`, `a2d`,
`bd3lm`, `ar`, `sdar`) holds its `Family`; this registry finds them by name or from a checkpoint's config.

Training, evaluation and sampling ask a `Family` instead of testing model names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dlm.errors import ModelError
from dlm.families.a2d import A2D
from dlm.families.ar import AR
from dlm.families.base import Family
from dlm.families.bd3lm import BD3LM
from dlm.families.bert import BERT
from dlm.families.dream import DREAM
from dlm.families.llada import LLADA
from dlm.families.llada2 import LLADA2
from dlm.families.llada_moe import LLADA_MOE
from dlm.families.sdar import SDAR

FAMILIES: dict[str, Family] = {f.name: f for f in (LLADA, LLADA_MOE, LLADA2, DREAM, BERT, A2D, BD3LM, AR, SDAR)}


def supported_families_text() -> str:
    """One line per family naming its architectures, for error messages and help texts."""
    return "\n".join(f.describe() for f in FAMILIES.values())


def training_methods() -> tuple[str, ...]:
    """The families as training methods: those with their own diffusion architecture, then those built on causal
    checkpoints, each alphabetically (the order of the trainer's form)."""
    ordered = sorted(FAMILIES.values(), key=lambda f: (f.auto_class == "AutoModelForCausalLM", f.name))
    return tuple(f.name for f in ordered)


def get_family(name: str | Family) -> Family:
    """The family called `name` (case-insensitive); a `Family` is returned as it is."""
    if isinstance(name, Family):
        return name
    family = FAMILIES.get(str(name).strip().lower())
    if family is None:
        raise ModelError(f"unknown model family {name!r}; choose one of: {', '.join(FAMILIES)}")
    return family


def config_field(config: Any, key: str) -> Any:
    """`key` of a `PretrainedConfig` or a `config.json` dict (None when absent)."""
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def detect_family(config: Any) -> Family:
    """The family of a checkpoint from its config (a `PretrainedConfig` or the `config.json` dict).

    Architectures are tried first, then `model_type`. Families that share architectures (Llama/Qwen2/Qwen3: `ar`,
    `a2d` when the config says `is_causal: false`, `bd3lm` when it also says `block_diffusion: true`) are told apart
    by their `detected_by` config values; when several match, the one with the most of them wins.
    """
    architectures = list(config_field(config, "architectures") or [])
    model_type = config_field(config, "model_type")
    found = next((f for a in architectures for f in FAMILIES.values() if a in f.architectures), None)
    if found is None:
        found = next((f for f in FAMILIES.values() if model_type in f.model_types), None)
    if found is None:
        where = config_field(config, "_name_or_path") or "the checkpoint"
        raise ModelError(
            f"cannot tell which model family {where} belongs to: its config has architectures={architectures} "
            f"and model_type={model_type!r}. Supported families and architectures:\n{supported_families_text()}\n"
            "If it is a variant of one of these, pass the family explicitly (family=...)."
        )
    siblings = [f for f in FAMILIES.values() if f.architectures == found.architectures]
    marked = [f for f in siblings if f.detected_by and all(config_field(config, k) is v for k, v in f.detected_by)]
    marked.sort(key=lambda f: len(f.detected_by), reverse=True)
    return next(iter(marked), None) or next((f for f in siblings if not f.detected_by), found)
