"""Metric tracking: TensorBoard always, W&B when asked for, `metrics.json` with the latest value of each metric,
and a CSV log of every value per job.

Every metric goes to every target under the same name, so a curve in TensorBoard, a chart in W&B, the value in
`metrics.json` (which the host's sweeps read; each job also keeps its own, `metrics_job_<id>.json`, beside its CSV)
and the rows of the CSV are the same series.

A run is named `{arch}-{data}-{size}-v{n}` unless the job names it (`wandb_run_name`, else `$WANDB_NAME`); the
W&B project, group and tags come from the parameters, else `$WANDB_PROJECT`, `$WANDB_RUN_GROUP`, `$WANDB_TAGS`.
Each job leaves `run.json` (name, W&B id, TensorBoard folder) beside its checkpoints; a job that resumes from
them continues that run: the same W&B run and the same TensorBoard folder.
"""

from __future__ import annotations

import csv
import json
import math
import netrc
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plugin_sdk.config_keys import redact
from plugin_sdk.safe_files import make_dirs, open_no_follow, write_json_atomic
from plugin_sdk.workspace import check_name_length

DEFAULT_PROJECT = "dlm-plugins"
RUN_STATE_FILE = "run.json"
SIZE_WORDS = ("tiny", "small", "medium", "large", "xl")  # the size presets' first word: tiny-llada, small-ar, ...


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


@dataclass
class RunSettings:
    """Who a job's metrics belong to: the run's name, W&B project/group/tags/id, TensorBoard folder name."""

    name: str
    project: str = DEFAULT_PROJECT
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    wandb_id: str | None = None
    resumed: bool = False


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-")


def _data_name(params: Mapping[str, Any]) -> str:
    source = str(params.get("corpus") or params.get("dataset") or params.get("dataset_name") or "")
    name = source.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    while Path(name).suffix in {".gz", ".jsonl", ".json", ".txt", ".csv", ".parquet", ".text", ".md"}:
        name = Path(name).stem
    return _slug(name)


def default_run_name(params: Mapping[str, Any], output_dir: Path) -> str:
    """`{arch}-{data}-{size}-v{n}`: the family (or model name), the data's name, the size preset (when the model
    is one), and one more than the versions of that name already in `output_dir`."""
    model = str(params.get("model_name") or "model").rstrip("/").rsplit("/", 1)[-1]
    size, _, arch = model.partition("-")
    if size not in SIZE_WORDS or not arch:
        size, arch = "", model
    method = str(params.get("training_method") or "auto")
    arch = method if method not in ("auto", "") else arch
    base = "-".join(part for part in (_slug(arch), _data_name(params), size) if part)
    taken = [
        int(m.group(1))
        for p in (output_dir.iterdir() if output_dir.is_dir() else [])
        if (m := re.fullmatch(re.escape(base) + r"-v(\d+)", p.name))
    ]
    return f"{base}-v{max(taken, default=0) + 1}"


def previous_run(output_dir: Path, resume_from: str) -> dict[str, Any] | None:
    """The `run.json` of the job whose checkpoint `resume_from` names: a checkpoint folder, or `latest` (the newest
    checkpoint under `output_dir`, as the trainers pick it)."""
    if not resume_from:
        return None
    if resume_from == "latest":
        states = output_dir.glob("*/checkpoint-*/trainer_state.json") if output_dir.is_dir() else []
        newest = max(states, key=lambda state: state.stat().st_mtime, default=None)
        state_file = newest.parent.parent / RUN_STATE_FILE if newest is not None else None
    else:
        state_file = Path(resume_from).parent / RUN_STATE_FILE
    try:
        return json.loads(state_file.read_text()) if state_file is not None else None
    except (OSError, ValueError):
        return None


def _env_list(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [t.strip() for t in str(value or "").split(",") if t.strip()]


def run_settings(params: Mapping[str, Any], output_dir: Path) -> RunSettings:
    """The run a job logs to: the previous job's when it resumes one, else a new one named by the parameters, the
    W&B environment variables, or `default_run_name`."""
    project = params.get("wandb_project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    group = params.get("wandb_group") or os.environ.get("WANDB_RUN_GROUP") or None
    tags = _env_list(params.get("wandb_tags") or os.environ.get("WANDB_TAGS"))
    previous = previous_run(Path(output_dir), str(params.get("resume_from_checkpoint") or "").strip())
    if previous is not None:
        return RunSettings(previous["name"], project, group, tags, previous.get("wandb_id"), resumed=True)
    name = params.get("wandb_run_name") or os.environ.get("WANDB_NAME") or default_run_name(params, Path(output_dir))
    return RunSettings(_slug_name(name), project, group, tags)


def _slug_name(name: str) -> str:
    slug = re.sub(r"[/\\]+", "_", str(name)).strip() or "run"
    return check_name_length(slug, field="wandb_run_name (the run's name, a TensorBoard folder)")


class Tracker:
    """Writes scalar metrics and text to TensorBoard, optionally W&B, `<output_dir>/metrics.json` and a CSV."""

    def __init__(
        self,
        output_dir: Path,
        *,
        log_to_wandb: bool,
        run: RunSettings,
        config: Mapping[str, Any],
        set_job_data: Callable[[str, Any], None],
        log: Callable[[str], None] = print,
        state_dir: Path | None = None,
        csv_name: str = "metrics.csv",
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.output_dir = Path(output_dir)
        self.run = run
        self.tensorboard_dir = self.output_dir / run.name
        # the folder the job was given is trusted; nothing below it is written through a link
        make_dirs(self.tensorboard_dir, self.output_dir)
        self._writer = SummaryWriter(str(self.tensorboard_dir))
        self._metrics_path = self.output_dir / "metrics.json"
        self.csv_path = self.tensorboard_dir / csv_name
        # the host's sweeps read `<output_dir>/metrics.json`, which every job of the plugin rewrites: each job also
        # keeps its own latest values beside its CSV
        self.job_metrics_path = self.csv_path.with_suffix(".json")
        self.latest: dict[str, float] = {}
        set_job_data("tensorboard_output_dir", str(self.tensorboard_dir))
        set_job_data("run_name", run.name)
        set_job_data("metrics_csv", str(self.csv_path))
        log(f"{'Continuing run' if run.resumed else 'Run'} {run.name}; TensorBoard logs: {self.tensorboard_dir}")

        self._wandb_run = None
        if log_to_wandb:
            self._start_wandb(config, set_job_data, log)
        if state_dir is not None:
            write_json_atomic(
                Path(state_dir) / RUN_STATE_FILE,
                {**asdict(run), "tensorboard_dir": str(self.tensorboard_dir)},
                self.output_dir,
            )

    def _start_wandb(
        self, config: Mapping[str, Any], set_job_data: Callable[[str, Any], None], log: Callable[[str], None]
    ) -> None:
        if not wandb_credentials_available():
            log(
                "WARNING: log_to_wandb is on but no W&B API key is configured (WANDB_API_KEY or ~/.netrc); "
                "continuing without W&B."
            )
            set_job_data("wandb_logging", False)
            return
        import wandb

        run = self.run
        run.wandb_id = run.wandb_id or uuid.uuid4().hex[:8]  # ours, so that a resumed job can find it
        self._wandb_run = wandb.init(
            project=run.project,
            name=run.name,
            group=run.group,
            tags=run.tags or None,
            id=run.wandb_id,
            resume="allow",
            dir=str(self.output_dir),
            config=public_config(config),
        )
        url = self._wandb_run.url or Path(self._wandb_run.settings.sync_dir).as_uri()
        set_job_data("wandb_run_url", url)
        set_job_data("wandb_logging", True)
        log(f"W&B run: {url}")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        finite = {name: float(value) for name, value in metrics.items() if value is not None}
        for name, value in finite.items():
            self._writer.add_scalar(name, value, step)
        if self._wandb_run is not None:
            self._wandb_run.log(finite, step=step)
        self.latest.update({k: v for k, v in finite.items() if math.isfinite(v)})
        write_json_atomic(self._metrics_path, self.latest, self.output_dir)
        write_json_atomic(self.job_metrics_path, self.latest, self.output_dir)
        self._append_csv(finite, step)
        self._writer.flush()

    def _append_csv(self, metrics: Mapping[str, float], step: int) -> None:
        """One row per value (`step,metric,value`), so metrics that appear later (validation) need no new column."""
        new = not self.csv_path.exists()
        with open_no_follow(self.csv_path, "a", self.output_dir, newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "metric", "value"])
            writer.writerows([step, name, repr(value)] for name, value in metrics.items())

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
