"""Offline tiny models of the real architectures, built locally in seconds, for tests, demos and smoke runs.

A preset is a small randomly initialised model of its family's real class, with a byte-level BPE tokenizer
trained here on generated English and arithmetic text, the family's special tokens and chat template. It is
saved like any checkpoint under `<workspace>/models/<preset>/` and built once: later calls reuse it.
`tiny-llada`, `tiny-ar` and `tiny-a2d` share one tokenizer (the LLaDA tokens; the mask token is the last id), so
their likelihoods are comparable; `tiny-a2d` is `tiny-ar` converted to diffusion, `tiny-bd3lm` to block diffusion
(blocks of 4 tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dlm.errors import ModelError
from dlm.presets.builders import (
    TINY_BLOCK_SIZE,
    TINY_DREAM,
    build_a2d,
    build_ar,
    build_bd3lm,
    build_bert,
    build_dream,
    build_llada,
    build_sdar,
)
from dlm.presets.moe import build_llada2, build_llada_moe
from dlm.presets.store import PRESET_VERSION, build_in_place, default_workspace

PRESETS: dict[str, Callable[[Path], None]] = {
    "tiny-llada": build_llada,
    "tiny-dream": lambda dst: build_dream(dst, TINY_DREAM),
    "tiny-bert": build_bert,
    "tiny-a2d": build_a2d,
    "tiny-bd3lm": lambda dst: build_bd3lm(dst, block_size=TINY_BLOCK_SIZE),
    "tiny-ar": build_ar,
    "tiny-llada-moe": build_llada_moe,
    "tiny-sdar": lambda dst: build_sdar(dst, TINY_DREAM),
    "tiny-llada2": build_llada2,
}


def ensure_preset(name: str, workspace: str | Path | None = None) -> Path:
    """The folder of preset `name` in `workspace`, built first if missing or from an older preset version."""
    if name not in PRESETS:
        raise ModelError(f"unknown tiny preset {name!r}; choose one of: {', '.join(PRESETS)}")
    final = Path(workspace if workspace is not None else default_workspace()) / "models" / name
    build_in_place(final, {"preset": name, "version": PRESET_VERSION}, PRESETS[name])
    return final
