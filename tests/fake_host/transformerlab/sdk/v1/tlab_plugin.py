"""The fake SDK's plugin base: the job it updates, and the helpers the backend imports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from transformerlab import _state
from transformerlab.plugin import WORKSPACE_DIR


def _run_async_from_sync(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


class FakeJob:
    async def update_status(self, status: str) -> None:
        _state.calls.append(("update_status", status))
        _state.record["status"] = status


class FakeTlab:
    """`tlab_trainer` / `tlab_evals`: parameters from the host, progress that raises KeyboardInterrupt once the
    stop flag is set (as the real SDK does), job data, model registration and evaluation results."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.job = FakeJob()
        self.params: dict[str, Any] = {}

    def _ensure_args_parsed(self) -> None:
        _state.calls.append(("_ensure_args_parsed",))
        self.params = dict(_state.params)

    def progress_update(self, progress: int) -> None:
        _state.calls.append(("progress_update", progress))
        _state.record["progress"] = progress
        if _state.stop:
            raise KeyboardInterrupt("stopped from the host")

    def add_job_data(self, key: str, value: Any) -> None:
        _state.calls.append(("add_job_data", key))
        _state.record["job_data"][key] = value

    def create_transformerlab_model(
        self, fused_model_name: str, model_architecture: str, json_data: dict, output_dir: str | None = None
    ) -> None:
        _state.calls.append(("create_transformerlab_model", fused_model_name, model_architecture, output_dir))

    def save_evaluation_results(self, metrics_df: Any) -> tuple[str, str]:
        _state.calls.append(("save_evaluation_results", len(metrics_df)))
        folder = Path(WORKSPACE_DIR) / "host_eval_results"
        folder.mkdir(parents=True, exist_ok=True)
        csv_path, plot_path = folder / "output.csv", folder / "plot.json"
        metrics_df.to_csv(csv_path, index=False)
        plot_path.write_text(json.dumps(metrics_df[["test_case_id", "metric_name", "score"]].to_dict("records")))
        return str(csv_path), str(plot_path)
