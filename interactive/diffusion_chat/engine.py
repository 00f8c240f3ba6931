"""The chat's model and sampler: one loaded model (with an optional LoRA adapter) answering a conversation, as a
stream of events: each intermediate canvas of the diffusion samplers (`dlm.generation.generate`'s `on_step`), then
the answer with its speed."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dlm.errors import DlmError
from dlm.generation import (
    SamplerSettings,
    build_sampler,
    decode_answers,
    decoding_settings,
    encode_prompts,
    generate,
    in_blocks,
)
from dlm.loading import LoadedModel, inference_device_map
from dlm.lora import load_model_with_adapter

# the settings the page offers, with the chat's defaults (a short answer in two blocks)
DEFAULTS = SamplerSettings(steps=32, max_new_tokens=64, block_length=32, temperature=0.0)
SETTING_NAMES = ("steps", "max_new_tokens", "block_length", "cache", "parallel_threshold", "temperature")
LIMITS = {"steps": (1, 1024), "max_new_tokens": (1, 1024), "block_length": (1, 1024), "temperature": (0.0, 5.0)}


class ChatError(DlmError, ValueError):
    """A request the chat cannot answer (bad settings or messages); the message says what would work."""


def settings_from(values: Mapping[str, Any]) -> SamplerSettings:
    """`DEFAULTS` with the page's values (unknown names refused, numbers checked against `LIMITS`)."""
    unknown = sorted(set(values) - set(SETTING_NAMES))
    if unknown:
        raise ChatError(f"unknown settings {', '.join(unknown)}; the chat takes {', '.join(SETTING_NAMES)}")
    changes: dict[str, Any] = {}
    for name, value in values.items():
        if name == "cache":
            changes[name] = str(value)
        elif name == "parallel_threshold":
            changes[name] = None if value in (None, "", 0) else float(value)
        else:
            kind = float if name == "temperature" else int
            low, high = LIMITS[name]
            try:
                number = kind(value)
            except (TypeError, ValueError):
                raise ChatError(f"{name} must be a number, got {value!r}") from None
            if not low <= number <= high:
                raise ChatError(f"{name} must be between {low} and {high}, got {number}")
            changes[name] = number
    return dataclasses.replace(DEFAULTS, **changes)


class ChatModel:
    """A loaded model answering one conversation at a time (`stream`)."""

    def __init__(self, loaded: LoadedModel, label: str) -> None:
        self.loaded, self.label = loaded, label
        self.lock = threading.Lock()  # one model, one answer at a time

    @classmethod
    def load(cls, model: str, adapter: str | None = None, workspace: str | None = None) -> ChatModel:
        """`model` (a tiny preset, a folder or a hub id; an adapter folder loads its base) with `adapter`."""
        loaded = load_model_with_adapter(model, adapter, device_map=inference_device_map(), workspace=workspace)
        loaded.model.eval()
        return cls(loaded, model + (f" + {Path(adapter).name}" if adapter else ""))

    @property
    def diffusion(self) -> bool:
        """Whether the family's sampler denoises a canvas (else the answer comes at once)."""
        return self.loaded.family.sampler != "causal"

    def info(self) -> dict[str, Any]:
        return {
            "model": self.label,
            "family": self.loaded.family.name,
            "diffusion": self.diffusion,
            "cache_modes": ["none", *[m for m in self.loaded.family.cache_modes if m != "none"]],
            "defaults": {name: getattr(DEFAULTS, name) for name in SETTING_NAMES},
            "limits": LIMITS,
        }

    def check(self, settings: SamplerSettings) -> None:
        """`ChatError` for settings the family's sampler refuses (its message says what would work)."""
        try:
            build_sampler(self.loaded.family, settings)
        except DlmError as e:
            raise ChatError(str(e)) from e

    def cells(self, generated: Sequence[int]) -> list[list[str]]:
        """Each generated position as [kind, text]: "m" a mask, "e" an end token, "t" a token and its text."""
        special = self.loaded.special_ids
        cells = []
        for token in generated:
            if token == special.mask:
                cells.append(["m", ""])
            elif token in (special.eos, special.eot):
                cells.append(["e", ""])
            else:
                cells.append(["t", self.loaded.tokenizer.decode([token])])
        return cells

    def stream(self, messages: Sequence[Mapping[str, str]], settings: SamplerSettings) -> Iterator[dict[str, Any]]:
        """Events answering `messages`: {"event": "step", "step", "block", "cells", "block_length"} per denoising
        step, then {"event": "done", "text", "cells", "tokens", "seconds", "tokens_per_second", "nfe",
        "block_length"} or {"event": "error", "message"}."""
        loaded = self.loaded
        settings = decoding_settings(loaded.family, loaded.model, settings)  # a block model decodes in its own blocks
        self.check(settings)
        # the page underlines positions block by block; Dream without a cache denoises the answer as one block
        blocks = settings.block_length if in_blocks(loaded.family, settings) else settings.max_new_tokens
        ids, mask = encode_prompts(loaded.tokenizer, [list(messages)], loaded.special_ids.pad)
        prompt = ids.shape[1]
        events: queue.Queue[dict[str, Any]] = queue.Queue()

        def on_step(canvas: torch.Tensor, step: int, block: int) -> None:
            # a copy and nothing more: decoding it is the reader's work, outside the timed generation
            events.put({"event": "step", "step": step, "block": block, "canvas": canvas[0, prompt:].tolist()})

        def run() -> None:
            try:
                with self.lock:
                    start = time.perf_counter()
                    out = generate(loaded.model, loaded.family, loaded.special_ids, ids, mask, settings, None, on_step)
                    seconds = time.perf_counter() - start
                sequences = out.sequences.cpu()
                tokens = int(out.generated_tokens[0])
                text = decode_answers(loaded.tokenizer, loaded.special_ids, sequences, prompt)[0]
                events.put(
                    {
                        "event": "done",
                        "text": text,
                        "cells": self.cells(sequences[0, prompt:].tolist()),
                        "tokens": tokens,
                        "seconds": round(seconds, 4),
                        "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
                        "nfe": out.nfe,
                        "block_length": blocks,
                    }
                )
            except Exception as e:  # the page shows it; the server keeps serving
                events.put({"event": "error", "message": f"{type(e).__name__}: {e}"})

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        while True:
            event = events.get()
            if event["event"] != "step":
                yield event
                return
            cells = self.cells(event.pop("canvas"))
            yield {**event, "cells": cells, "block_length": blocks}
