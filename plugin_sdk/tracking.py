"""Metric tracking: TensorBoard always, W&B when asked for, `metrics.json` with the latest value of each metric.

Every metric goes to every target under the same name, so a curve in TensorBoard, a chart in W&B and the value
in `metrics.json` (which the host's sweeps read) are the same series.
"""

from __future__ import annotations

import math
import netrc
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from plugin_sdk.config_keys import redact
from plugin_sdk.workspace import write_json_atomic


def wandb_credentials_available() -> bool:
    """True when W&B can log: an API key in the environment or `~/.netrc`, or a mode that needs none."""
    if os.environ.get("WANDB_MODE", "").lower() in {"offline", "disabled", "dryrun"}:
        return True
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class Tracker:
    """Writes scalar metrics and text to TensorBoard, optionally W&B, and `<output_dir>/metrics.json`."""

    def __init__(
        self,
        output_dir: Path,
        *,
        log_to_wandb: bool,
        run_name: str,
        config: Mapping[str, Any],
        set_job_data: Callable[[str, Any], None],
        log: Callable[[str], None] = print,
        wandb_project: str = "dlm-plugins",
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.output_dir = Path(output_dir)
        self.tensorboard_dir = self.output_dir / run_name
        self.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(str(self.tensorboard_dir))
        self._metrics_path = self.output_dir / "metrics.json"
        self.latest: dict[str, float] = {}
        set_job_data("tensorboard_output_dir", str(self.tensorboard_dir))
        log(f"TensorBoard logs: {self.tensorboard_dir}")

        self._wandb_run = None
        if log_to_wandb:
            if wandb_credentials_available():
                import wandb

                self._wandb_run = wandb.init(
                    project=wandb_project, name=run_name, dir=str(self.output_dir), config=public_config(config)
                )
                url = self._wandb_run.url or Path(self._wandb_run.settings.sync_dir).as_uri()
                set_job_data("wandb_run_url", url)
                set_job_data("wandb_logging", True)
                log(f"W&B run: {url}")
            else:
                log(
                    "WARNING: log_to_wandb is on but no W&B API key is configured (WANDB_API_KEY or ~/.netrc); "
                    "continuing without W&B."
                )
                set_job_data("wandb_logging", False)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        finite = {name: float(value) for name, value in metrics.items() if value is not None}
        for name, value in finite.items():
            self._writer.add_scalar(name, value, step)
        if self._wandb_run is not None:
            self._wandb_run.log(finite, step=step)
        self.latest.update({k: v for k, v in finite.items() if math.isfinite(v)})
        write_json_atomic(self._metrics_path, self.latest)
        self._writer.flush()

    def log_text(self, tag: str, text: str, step: int) -> None:
        self._writer.add_text(tag, text, step)
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({tag: wandb.Html(f"<pre>{_escape(text)}</pre>")}, step=step)
        self._writer.flush()

    def close(self, *, failed: bool = False) -> None:
        self._writer.close()
        if self._wandb_run is not None:
            self._wandb_run.finish(exit_code=1 if failed else 0)
            self._wandb_run = None


def public_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run configuration without anything that looks like a credential."""
    return redact(config)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
