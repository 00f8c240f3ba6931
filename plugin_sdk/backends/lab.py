"""Today's Transformer Lab (tasks, package `lab` from `transformerlab` >= 0.1.6) as a job backend.

The host creates the job (`<workspace>/experiments/<exp>/jobs/<uuid>/`), keeps the run-time parameters in
`job_data.parameters` and runs the task's `run` line under `tfl-remote-trap` with `_TFL_JOB_ID` and
`_TFL_EXPERIMENT_ID` set. Here that job is driven through `lab`: parameters from `lab.get_config()`, progress and
metrics through `lab.update_progress`, the ending through `lab.finish(score=dict)` / `lab.error(reason)`, outputs
through `lab.save_model` / `lab.save_artifact` (evaluation tables with `type="evals"`).

Checkpoints are the exception: the Trainer writes them straight into the job's `checkpoints/` folder (the one
`lab.save_checkpoint` fills and the host lists to offer a resume), because on a stop the host SIGKILLs the
process tree 3 s after its SIGTERM, too soon to copy a model; `job_data.checkpoints` / `latest_checkpoint` are
then recorded as `save_checkpoint` records them. A resumed job gets its checkpoint from
`lab.get_checkpoint_to_resume()`.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plugin_sdk.backends.base import now
from plugin_sdk.errors import PluginError
from plugin_sdk.eval_results import view_tables, write_plot_data
from plugin_sdk.safe_files import write_json_atomic
from plugin_sdk.workspace import Workspace, safe_name

JOB_ENV = "_TFL_JOB_ID"
LAB_PACKAGE = "transformerlab"
LAB_MIN_VERSION = "0.1.6"
# The host SIGKILLs the process tree 3 s after its SIGTERM; a job that has not ended cooperatively by this many
# seconds after the first SIGTERM (mid-step, still loading the model) is ended STOPPED at once.
STOP_GRACE_S = 1.0
# The host's stop writes `job_data.stop`, then the status STOPPING, each a read-modify-write of the whole record: a
# job that ended between the two would have its end overwritten (STOPPING, its completion details gone).
HOST_STOP_WRITE_WAIT_S = 2.0


# Keys that mark a task.yaml parameter as a declaration (the modal's `parseParameter` reads them so)
_DECLARATION_KEYS = frozenset({"type", "default", "min", "max", "options", "enum"})
# What the Queue Task modal's submit (QueueTaskModal/index.tsx handleSubmit) adds beside the parameters and
# Tasks.tsx handleQueueSubmit does not strip: settings of the launch, which reach job_data.parameters (the sweep
# settings are host keys the plugins accept anyway). None is a parameter of ours (a test checks it).
MODAL_LAUNCH_KEYS = frozenset(
    {
        "resource_group_id",
        "resource_group_name",
        "resource_group_custom_override",
        "custom_sbatch_flags",
        "docker_image",
        "region",
        "use_spot",
        "fleet_name",
        "trackio_project_name",
    }
)


def running_as_task() -> bool:
    """True when the host launched us as a task (`_TFL_JOB_ID` set; `DLM_BACKEND=lab|host|local` overrides)."""
    forced = os.environ.get("DLM_BACKEND", "").lower()
    if forced in {"lab", "host", "local"}:
        return forced == "lab"
    return bool(os.environ.get(JOB_ENV))


def import_lab() -> Any:
    """The `lab` facade, after checking that the installed `transformerlab` is recent enough for tasks."""
    from packaging.version import Version

    need = f"{LAB_PACKAGE}>={LAB_MIN_VERSION}"
    try:
        installed = importlib.metadata.version(LAB_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise PluginError(
            f"{JOB_ENV} is set, so this runs as a Transformer Lab task, but the {LAB_PACKAGE} package (module "
            f"'lab') is not installed in this environment: install {need} (pip install '{need}')."
        ) from None
    if Version(installed) < Version(LAB_MIN_VERSION):
        raise PluginError(
            f"{JOB_ENV} is set, so this runs as a Transformer Lab task, but {LAB_PACKAGE} {installed} is too old: "
            f"tasks need {need} (pip install '{need}')."
        )
    from lab import lab

    return lab


def task_values(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The values of `job_data.parameters` as the host launches a task: task.yaml's declarations updated with what
    the Queue Task modal sent (`launch_template.py`: `{**request.parameters, **request.config}`). A declaration
    left as it is (a launch that sent no value for it) reads as its default; the launch settings the modal adds
    (`MODAL_LAUNCH_KEYS`) and unset values are dropped."""
    values = {}
    for key, value in parameters.items():
        if isinstance(value, Mapping) and _DECLARATION_KEYS & value.keys():
            value = value.get("default")
        if value is not None and key not in MODAL_LAUNCH_KEYS:
            values[key] = value
    return values


def score_dict(score: Any) -> dict[str, float]:
    """The host's plugin-era score (`[{"type": metric, "score": value}]`, possibly as a JSON string) as the dict
    `lab.finish(score=...)` wants."""
    entries = json.loads(score) if isinstance(score, str) else score
    if isinstance(entries, Mapping):
        return dict(entries)
    return {str(entry["type"]): entry["score"] for entry in entries}


class LabWorkspace(Workspace):
    """The host's workspace for what a job reads (datasets, models by id); what it writes is staged in the job's
    own folder and handed to `lab` from there."""

    def __init__(self, root: str | os.PathLike[str], staging: Path) -> None:
        super().__init__(root)
        self.staging = staging

    def trainer_output_dir(self, experiment: str, template_name: str) -> Path:
        return self.staging / "tensorboard"

    def eval_output_dir(self, experiment: str, eval_name: str, job_id: str) -> Path:
        return self.staging / "report"

    def adaptor_dir(self, model_name: str, adaptor_name: str) -> Path:
        return self.staging / "adaptors" / safe_name(adaptor_name, field="adaptor_name")

    def model_dir(self, name: str) -> Path:
        return self.staging / "models" / safe_name(name, field="model name")


class LabBackend:
    """Job state and outputs through `lab`, for the job the host created (`_TFL_JOB_ID`)."""

    name = "lab"
    stop_exit_code = 0  # the task's wrapper turns a stopped job's exit 0 into STOPPED and any other code into FAILED
    # the host SIGTERMs the process tree to stop and SIGKILLs it 3 s later
    sigterm_is_host_stop = True
    records_pid = False

    def __init__(self, lab: Any = None) -> None:
        if lab is None:
            lab = import_lab()
            _require_host_job()
        self.lab = lab
        try:
            self.lab.init()  # attaches to the host's job and marks it RUNNING
            self.job_id = str(self.lab.job.id)
            self.experiment = str(self.lab.experiment.id)
            self.checkpoint_dir = Path(self.lab.get_checkpoints_dir())
            self.job_dir = self.checkpoint_dir.parent
            from lab import dirs

            self.workspace = LabWorkspace(_run(dirs.get_workspace_dir()), self.job_dir / "staging")
        except OSError as exc:  # the lab home cannot be written (or read): no job to record it in
            raise _home_unusable(exc) from None
        # lab rewrites the job record in place, read-modify-write: this process's writes take turns, so the stop
        # timer's ending is never undone by a progress write of the main thread
        self._writing = threading.RLock()
        self._ended = False  # the end is being recorded (kept locked from then on: the process ends after it)
        self._stop_timer: threading.Timer | None = None
        self._stop_seen = False
        self._progress = 0
        self._metrics: dict[str, float] = {}
        self._details = ""
        self._score: dict[str, float] | None = None

    # ---- parameters ---------------------------------------------------------------------------------------------
    def host_parameters(self) -> dict[str, Any]:
        """`job_data.parameters`, plus the checkpoint the host asked this job to resume from."""
        values = task_values(self.lab.get_config())
        resume = self.lab.get_checkpoint_to_resume()
        if resume and not values.get("resume_from_checkpoint"):
            values["resume_from_checkpoint"] = resume
        return {**values, "job_id": self.job_id, "experiment_name": self.experiment}

    # ---- state --------------------------------------------------------------------------------------------------
    def set_status(self, status: str) -> None:
        """COMPLETE and FAILED end through `lab.finish` / `lab.error` with the details recorded just before."""
        if status == "RUNNING":
            return  # lab.init did; writing it again could hide a stop that arrived meanwhile
        self._writing.acquire()  # kept: the process ends after this (a failure while ending comes back here)
        self._ended = True
        self._record_end(status)

    def _record_end(self, status: str) -> None:
        self._record_checkpoints()
        if status == "COMPLETE":
            self._publish_staged()
            # an evaluator's metrics, else a trainer's last logged ones: what sweeps rank jobs on
            self.lab.finish(self._details, score=self._score if self._score is not None else self._metrics)
        elif status == "FAILED":
            self.lab.error(self._details)
        else:
            _run(self.lab.job.update_status(status))

    def set_progress(self, progress: int) -> None:
        self._progress = progress
        with self._writing:
            self.lab.update_progress(progress)

    def set_live(self, status: dict[str, Any]) -> None:
        """Nothing: the host shows the job's progress; the phase is in the log."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """`current_metrics` keeps the latest value of every metric (a log row may carry only some of them)."""
        self._metrics.update(metrics)
        with self._writing:
            self.lab.update_progress(self._progress, metrics=dict(self._metrics), step=step)

    def end_stopped_soon(self, since: float) -> None:
        """On the host's SIGTERM (received at `since`, `time.monotonic()`): unless the job ends cooperatively (a
        checkpoint at the step boundary) within `STOP_GRACE_S` of it, end it STOPPED then, before the SIGKILL."""
        if self._stop_timer is None:
            delay = max(0.0, STOP_GRACE_S - (time.monotonic() - since))
            self._stop_timer = threading.Timer(delay, self._end_stopped_now)
            self._stop_timer.daemon = True
            self._stop_timer.start()

    def _end_stopped_now(self) -> None:
        if not self._writing.acquire(timeout=STOP_GRACE_S) or self._ended:
            return  # the main thread is recording the end, or holds on too long: the host's SIGKILL will end it
        self._ended = True
        self._remove_incomplete_checkpoints()
        details = "Stopped by user before the current step ended; kept the last complete checkpoint."
        _run(self.lab.job.update_job_data_fields({"completion_details": details, "end_time": now()}))
        self._record_end("STOPPED")
        print(details, flush=True)
        sys.stderr.flush()
        os._exit(0)

    def _remove_incomplete_checkpoints(self) -> None:
        for folder in self.checkpoint_dir.glob("checkpoint-*"):
            if not (folder / "trainer_state.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)

    def job_record(self) -> dict[str, Any]:
        """The job's record as the host keeps it (`status`, `job_data`, ...)."""
        return _run(self.lab.job.get_json_data(uncached=True))

    def stop_requested(self) -> bool:
        """The host's stop flag, once the host has also written STOPPING (waited for, briefly), so that this job's
        end is written after the host's last write."""
        if self._stop_seen:
            return True
        if not self.lab.get_job_data().get("stop"):
            return False
        self._stop_seen = True
        deadline = time.monotonic() + HOST_STOP_WRITE_WAIT_S
        while self.job_record().get("status") != "STOPPING" and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    def set_data(self, key: str, value: Any) -> None:
        if key == "completion_details":
            self._details = str(value)
        if key == "score":
            self._score = score_dict(value)
            return  # written by lab.finish, as the dict the host ranks on
        with self._writing:
            if key == "wandb_run_url":
                self.lab.capture_wandb_url(value)
            else:
                self.lab.set_job_data_field(key, value)

    # ---- outputs ------------------------------------------------------------------------------------------------
    def register_model(
        self, model_dir: Path, *, name: str, architecture: str, json_data: dict, provenance: dict
    ) -> None:
        """Hand a full model saved in the staging folder to `lab.save_model` (the job's models)."""
        write_json_atomic(
            Path(model_dir) / "_tlab_provenance.json",
            {**provenance, "model_architecture": architecture},
            self.workspace.staging,
        )
        with self._writing:
            self.lab.save_model(str(model_dir), name=name, architecture=architecture, pipeline_tag="text-generation")
        shutil.rmtree(model_dir)

    def save_eval_results(self, frame: Any, eval_dir: Path, job_id: str) -> tuple[Path, Path]:
        """The tables the app's evaluation views show (`plugin_sdk.eval_results.view_tables`: one per model, the
        main model's first, then their comparison) as the job's evaluation results (`job_data.eval_results`, in
        the job's `eval_results/` folder), and the plot data beside the report; the main model's table is returned."""
        paths = []
        for table in view_tables(frame):
            config = {"evals": table.columns}
            with self._writing:
                paths.append(Path(self.lab.save_artifact(table.frame, name=table.name, type="evals", config=config)))
        plot_path = write_plot_data(frame, Path(eval_dir) / f"plot_data_{job_id}_plotting.json", self.workspace.staging)
        return paths[0], plot_path

    def _publish_staged(self) -> None:
        """Adapters (moved) and the evaluation report (copied: job data points at its plot file) become the job's
        artifacts."""
        staging = self.workspace.staging
        for adapter in sorted((staging / "adaptors").glob("[!.]*")):  # hidden: a save's staging, never a result
            self.lab.save_artifact(str(adapter), name=adapter.name)
            shutil.rmtree(adapter)
        report = staging / "report"
        if report.is_dir() and any(report.iterdir()):
            self.lab.save_artifact(str(report), name="report")

    def _record_checkpoints(self) -> None:
        """The complete checkpoints the Trainer wrote into the job's folder, as `lab.save_checkpoint` records them
        (a folder without `trainer_state.json` was cut short and is no checkpoint)."""
        complete = sorted(
            (p.parent for p in self.checkpoint_dir.glob("checkpoint-*/trainer_state.json")),
            key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1,
        )
        if complete:
            fields = {"checkpoints": [str(p) for p in complete], "latest_checkpoint": str(complete[-1])}
            _run(self.lab.job.update_job_data_fields(fields))


def _home_unusable(exc: OSError) -> PluginError:
    where = f": {exc.filename}" if exc.filename else ""
    return PluginError(
        f"the Transformer Lab home cannot be used ({exc.strerror or exc}{where}); check that TFL_HOME_DIR and "
        "TFL_WORKSPACE_DIR name folders this user can write"
    )


def _require_host_job() -> None:
    """Refuse a `_TFL_JOB_ID` that names no job the host created: `lab.init` would make a record for it (a phantom
    job nobody launched) or fail with a traceback."""
    from lab import dirs, storage

    job_id = os.environ.get(JOB_ENV, "")
    experiment = os.environ.get("_TFL_EXPERIMENT_ID") or "alpha"  # as lab.init picks it

    async def record_exists() -> bool:
        return await storage.exists(storage.join(await dirs.get_job_dir(job_id, experiment), "index.json"))

    try:
        exists = _run(record_exists())
    except OSError as exc:
        raise _home_unusable(exc) from None
    if not exists:
        raise PluginError(
            f"{JOB_ENV}={job_id!r} names no job of experiment {experiment!r} in the Transformer Lab workspace: "
            "a task runs as the job the host created for it; launch it from Transformer Lab (or unset "
            f"{JOB_ENV} to run it as a local job)"
        )


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
