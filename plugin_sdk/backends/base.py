"""What `plugin_sdk.job` asks of a backend: the operations on a job's state and outputs, and the few ways the hosts
differ (how a stop exits, whether SIGTERM is the host's stop, where checkpoints go, what record can be read back).
The job asks these; it never asks which backend it has."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from plugin_sdk.workspace import Workspace

EXIT_FAILED = 1
EXIT_STOPPED = 3


def now() -> str:
    """A timestamp as the host writes them in job records."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


class Backend(Protocol):
    """Where a job's state lives and its outputs go."""

    name: str
    workspace: Workspace

    @property
    def checkpoint_dir(self) -> Path | None:
        """The folder the host keeps this job's checkpoints in (and offers a resume from); None: the job's own."""

    @property
    def stop_exit_code(self) -> int:
        """The exit code of a job that was stopped, as whatever launched it reads it."""

    @property
    def sigterm_is_host_stop(self) -> bool:
        """Whether the host stops a job by sending SIGTERM to its whole process tree (and kills it soon after):
        the job must then record its end before that kill, and a SIGTERM after the end must not change the exit."""

    @property
    def records_pid(self) -> bool:
        """Whether the job's record keeps the pid of the process that runs it (so that a job whose process is gone
        without reporting can be settled as failed)."""

    def set_status(self, status: str) -> None: ...

    def set_progress(self, progress: int) -> None: ...

    def set_live(self, status: dict[str, Any]) -> None:
        """What the job does now (phase, step, max_steps, time), for a live view."""

    def stop_requested(self) -> bool: ...

    def set_data(self, key: str, value: Any) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def register_model(
        self, model_dir: Path, *, name: str, architecture: str, json_data: dict, provenance: dict
    ) -> None: ...

    def save_eval_results(self, frame: Any, eval_dir: Path, job_id: str) -> tuple[Path, Path]:
        """The per-test-case table and its plot data in the host's formats; returns their paths."""

    def end_stopped_soon(self, since: float) -> None:
        """On the host's stop (a SIGTERM received at `since`, `time.monotonic()`): make sure the job is recorded as
        stopped before the host kills it. Called only where `sigterm_is_host_stop`."""

    def job_record(self) -> dict[str, Any] | None:
        """The job's record as stored (`status`, `job_data`, ...), or None where this process cannot read it."""
