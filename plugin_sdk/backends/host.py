"""The plugin-era Transformer Lab host as a backend: job state through its SDK (`tlab_trainer` or `tlab_evals`),
inside the host's `plugin_harness.py`."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plugin_sdk.backends.base import EXIT_STOPPED
from plugin_sdk.workspace import Workspace

HOST_HARNESS = "plugin_harness.py"


def running_under_host() -> bool:
    """True inside the host's `plugin_harness.py` with its SDK importable (`DLM_BACKEND=host|local` overrides)."""
    forced = os.environ.get("DLM_BACKEND", "").lower()
    if forced in {"host", "local"}:
        return forced == "host"
    if Path(sys.argv[0]).name != HOST_HARNESS:
        return False
    try:
        import transformerlab.sdk.v1.train  # noqa: F401
    except Exception:
        return False
    return True


class HostBackend:
    """Job state through the Transformer Lab host SDK (`tlab_trainer` or `tlab_evals`)."""

    name = "host"
    checkpoint_dir = None
    stop_exit_code = EXIT_STOPPED
    sigterm_is_host_stop = False
    records_pid = False

    def __init__(self, plugin_type: str) -> None:
        if plugin_type == "evaluator":
            from transformerlab.sdk.v1.evals import tlab_evals as tlab
        else:
            from transformerlab.sdk.v1.train import tlab_trainer as tlab
        from transformerlab.plugin import WORKSPACE_DIR

        self.tlab = tlab
        self.workspace = Workspace(WORKSPACE_DIR)
        self._progress = 0

    def host_parameters(self) -> dict[str, Any]:
        self.tlab._ensure_args_parsed()
        return {k: v for k, v in dict(self.tlab.params).items() if not k.startswith("_") and v is not None}

    def set_status(self, status: str) -> None:
        from transformerlab.sdk.v1.tlab_plugin import _run_async_from_sync

        _run_async_from_sync(self.tlab.job.update_status(status))

    def set_progress(self, progress: int) -> None:
        self._progress = progress
        self.tlab.progress_update(progress)

    def set_live(self, status: dict[str, Any]) -> None:
        """Nothing: the host shows the job's progress bar; the phase is in the log."""

    def stop_requested(self) -> bool:
        # The host SDK notices a stop only inside progress_update, which raises KeyboardInterrupt.
        try:
            self.tlab.progress_update(self._progress)
        except KeyboardInterrupt:
            return True
        return False

    def set_data(self, key: str, value: Any) -> None:
        self.tlab.add_job_data(key, value)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """The plugin-era host reads metrics from the tracker's metrics.json."""

    def end_stopped_soon(self, since: float) -> None:
        """Nothing: the plugin-era host's stop is the `stop` flag, noticed at a step boundary."""

    def job_record(self) -> None:
        """None: the host SDK offers no read of the job's record."""

    def register_model(
        self, model_dir: Path, *, name: str, architecture: str, json_data: dict, provenance: dict
    ) -> None:
        self.tlab.create_transformerlab_model(name, architecture, json_data, output_dir=str(Path(model_dir).parent))

    def save_eval_results(self, frame: Any, eval_dir: Path, job_id: str) -> tuple[Path, Path]:
        csv_path, plot_path = self.tlab.save_evaluation_results(frame)
        return Path(csv_path), Path(plot_path)
