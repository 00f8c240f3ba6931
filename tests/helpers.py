"""Helpers the tests share, imported as `tests.helpers` (tests/ and its folders are packages, so that
pytest puts only the repository root on sys.path and `tests/dlm` cannot hide the `dlm` package)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


class Reporter:
    """The Reporter protocol (`dlm.callbacks.Reporter`), recording everything; asks to stop once `stop_at` optimizer
    steps are done."""

    is_main_process = True

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.steps = stop_at, 0
        self.messages: list[str] = []
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.texts: list[str] = []
        self.statuses: list[tuple[str, int | None, int | None]] = []

    def report_progress(self, percent: float) -> None:
        self.steps += 1

    def report_status(self, phase: str, step: int | None = None, max_steps: int | None = None) -> None:
        self.statuses.append((phase, step, max_steps))

    def stop_requested(self) -> bool:
        return self.stop_at is not None and self.steps >= self.stop_at

    def log(self, message: str) -> None:
        self.messages.append(message)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.texts.append(text)

    def first(self, name: str) -> float:
        return next(m[name] for _, m in self.metrics if name in m)

    def last(self, name: str) -> float:
        return [m[name] for _, m in self.metrics if name in m][-1]


def doubling_conversations(n: int) -> list[list[dict[str, str]]]:
    """`n` one-turn chats: "What is i + i?" answered "2i."."""
    return [
        [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"{2 * i}."}]
        for i in range(n)
    ]


def tiny_run(workspace: str, out: Path) -> dict[str, Any]:
    """Config values both trainers' tests start from: tiny-llada on CPU in float32, counted steps at a constant
    learning rate, every step logged, no checkpoint before the end."""
    return {
        "model_name": "tiny-llada",
        "output_dir": str(out),
        "workspace": workspace,
        "num_train_epochs": 0,
        "max_length": 64,
        "learning_rate": 1e-3,
        "learning_rate_schedule": "constant",
        "warmup_ratio": 0.0,  # else `constant` warms up (dlm.trainers.arguments.learning_rate_schedule)
        "logging_steps": 1,
        "save_steps": 1000,
        "train_device": "cpu",
        "dtype": "float32",
    }


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((x - b[k]).abs().max().item() for k, x in a.items())


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    worst = max_difference(a, b)
    assert worst <= atol, worst


def left_padded(prompts: Sequence[Sequence[int] | torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as a left-padded batch: (ids [B, longest], attention mask, 1 on real tokens)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad)
    attention = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(prompt)
        attention[row, width - len(prompt) :] = 1
    return ids, attention
