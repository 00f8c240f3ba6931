"""What the trainers log beside their losses: peak memory, and the last logged value of a metric."""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch


def memory_in_use_gb() -> float:
    """Peak accelerator memory when on CUDA, else the process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def last_logged(trainer: Any, key: str) -> str:
    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    return f"{values[-1]:.4g}" if values else "n/a"
