"""The job a plugin runs: parameters in, progress/metrics/outputs out, one clear ending.

A plugin's `main.py` is::

    from plugin_sdk import run_job

    def main() -> None:
        run_job(__file__, train)      # train(job) does the work

`run_job` reads and validates the parameters against the plugin's `index.json`, picks the backend (today's
Transformer Lab when running as its task, the plugin-era host under its harness, else the local workspace),
relaunches itself on several processes when asked, starts tracking, calls the plugin, and records how it ended:
success, failed with the real reason (and a non-zero exit), or stopped.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TextIO

from plugin_sdk import launch
from plugin_sdk.backends.base import EXIT_FAILED, EXIT_STOPPED, Backend, now
from plugin_sdk.backends.host import HostBackend, running_under_host
from plugin_sdk.backends.lab import LabBackend, running_as_task
from plugin_sdk.backends.local import LocalBackend, joins_other_machine
from plugin_sdk.config_keys import export_library_secrets, redact, secret_environment, take_secret_parameters
from plugin_sdk.errors import JobStopped, ParameterError, PluginError, is_user_error
from plugin_sdk.eval_results import mean_scores, results_table
from plugin_sdk.manifest import load_manifest
from plugin_sdk.params import Params, coerce_and_validate, read_raw_parameters
from plugin_sdk.progress import step_line
from plugin_sdk.safe_files import check_no_links
from plugin_sdk.tracking import Tracker, public_config, run_settings
from plugin_sdk.workspace import Workspace

_early_stop: list[float] = []  # when a task got a SIGTERM before its job's handler was in place
# Set by the local runner, which shows the child's stdout in the terminal: stdout then carries only the job's own
# messages, and whatever else writes to stdout (libraries' prints) goes to stderr, which the job log keeps.
MESSAGES_ONLY_ON_STDOUT = "DLM_MESSAGES_ONLY_ON_STDOUT"


class Job:
    """What a running plugin sees of its job. Only the main process writes anything."""

    def __init__(
        self,
        *,
        params: Params,
        backend: Backend,
        job_id: str,
        plugin_dir: Path,
        manifest: Mapping[str, Any],
        experiment: str,
        messages: TextIO | None = None,
    ) -> None:
        self.params = params
        self.messages = messages or sys.stdout  # where the job's own lines go
        self.backend = backend
        self.workspace: Workspace = backend.workspace
        self.job_id = job_id
        self.plugin_dir = plugin_dir
        self.manifest = manifest
        self.experiment = experiment
        self.plugin_type: str = manifest.get("type", "trainer")
        self.is_main_process = launch.process_rank() == 0
        self.tracker: Tracker | None = None
        self._signalled = False
        self._last_progress = -1
        self._phases_begun: set[str] = set()
        self._max_steps: int | None = None

    # ---- paths -------------------------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        """Trainer: TensorBoard/metrics folder (the host's `output_dir`). Evaluator: the evaluation's folder."""
        given = self.params.get("output_dir")
        if given:
            return Path(given)
        if self.plugin_type == "evaluator":
            eval_name = self.params.get("eval_name") or self.manifest["uniqueId"]
            return self.workspace.eval_output_dir(self.experiment, eval_name, self.job_id)
        template = self.params.get("template_name") or self.manifest["uniqueId"]
        return self.workspace.trainer_output_dir(self.experiment, template)

    @property
    def adaptor_dir(self) -> Path:
        """Where a LoRA adapter goes (the host's `adaptor_output_dir`)."""
        given = self.params.get("adaptor_output_dir")
        if given:
            return Path(given)
        model = self.params.get("model_name") or "model"
        return self.workspace.adaptor_dir(model, self.params.get("adaptor_name") or f"adaptor_{self.job_id}")

    @property
    def checkpoint_dir(self) -> Path:
        """Resumable checkpoints of this job (as a task: the job's own `checkpoints/`, which the host lists)."""
        return self.backend.checkpoint_dir or self.output_dir / f"checkpoints_job_{self.job_id}"

    def model_dir(self, name: str) -> Path:
        return self.workspace.model_dir(name)

    def check_folders(self) -> None:
        """Before anything is written: the folders the library writes into (metrics, checkpoints, an evaluation's
        report) pass through no link in the workspace (`plugin_sdk.safe_files`), and an `output_dir` outside the
        workspace is said, not taken silently."""
        root = self.workspace.root
        for folder in (self.output_dir, self.checkpoint_dir):
            check_no_links(folder, root)
        given = self.params.get("output_dir")
        if given and root not in Path(os.path.abspath(given)).parents:
            self.log(
                f"WARNING: output_dir={given} is outside the workspace {root}: this job's metrics, TensorBoard logs "
                "and checkpoints are written there"
            )

    # ---- reporting ---------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.is_main_process:
            print(message, file=self.messages, flush=True)

    def set_data(self, key: str, value: Any) -> None:
        if self.is_main_process:
            self.backend.set_data(key, value)

    def report_progress(self, percent: float) -> None:
        """Record progress (0..100); never raises. A stop the host signals while recording is remembered, and
        `stop_requested` says so, so a trainer can end cleanly (save a checkpoint) at a step boundary."""
        percent = int(max(0, min(100, percent)))
        if self.is_main_process and percent != self._last_progress:
            self._last_progress = percent
            try:
                self.backend.set_progress(percent)
            except KeyboardInterrupt:  # the host SDK's way of saying "stop"
                self._signalled = True

    def report_status(self, phase: str, step: int | None = None, max_steps: int | None = None) -> None:
        """What the job does now ("loading model x", "encoding data", "training", "evaluating", "saving outputs")
        and, while training, at which optimizer step of how many. The log gets a line when a phase first begins
        (what happens within training after that, evaluating or saving a checkpoint, is only live status); a local
        job's live status (`live.json`) gets every call, for the terminal."""
        if not self.is_main_process:
            return
        if max_steps:
            self._max_steps = max_steps
        if phase not in self._phases_begun and (phase == "training" or step is None):
            self._phases_begun.add(phase)
            self.log(f"{phase} {max_steps} steps ..." if phase == "training" and max_steps else f"{phase} ...")
        self.backend.set_live({"phase": phase, "step": step, "max_steps": max_steps, "time": time.time()})

    def progress(self, percent: float) -> None:
        """Report progress (0..100) and raise `JobStopped` when a stop was requested."""
        self.report_progress(percent)
        self.check_stop()

    def stop_requested(self) -> bool:
        """Whether anyone asked this job to stop; the same answer on every process of a multi-process run."""
        requested = self._signalled or (self.is_main_process and self.backend.stop_requested())
        return launch.any_process(requested)

    def check_stop(self) -> None:
        if self.stop_requested():
            raise JobStopped("stop requested")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.is_main_process:
            return
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)
        self.backend.log_metrics(metrics, step)
        print(step_line(step, self._max_steps, metrics), file=self.messages, flush=True)

    def log_text(self, tag: str, text: str, step: int) -> None:
        if self.is_main_process and self.tracker is not None:
            self.tracker.log_text(tag, text, step)

    # ---- outputs -----------------------------------------------------------------------------------------
    def register_model(self, model_dir: Path, *, architecture: str, json_data: Mapping[str, Any] | None = None) -> None:
        """Register a saved full model in the model zoo (`index.json` + `_tlab_provenance.json`)."""
        if not self.is_main_process:
            return
        provenance = {
            "job_id": self.job_id,
            "input_model": self.params.get("model_name"),
            "dataset": self.params.get("dataset_name"),
            "adaptor_name": self.params.get("adaptor_name"),
            "parameters": redact(self.params),
            "start_time": self.params.get("start_time", ""),
        }
        self.backend.register_model(
            Path(model_dir),
            name=Path(model_dir).name,
            architecture=architecture,
            json_data=dict(json_data or {}),
            provenance=provenance,
        )
        self.log(f"Registered model {Path(model_dir).name} at {model_dir}")

    def save_eval_results(self, rows: Any) -> tuple[Path, Path]:
        """Save per-test-case scores (`test_case_id`, `metric_name`, `score`, extra columns allowed) in the
        host's formats: CSV, plot JSON and the job's `score` summary."""
        import json

        frame = results_table(rows)
        csv_path, plot_path = self.backend.save_eval_results(frame, self.output_dir, self.job_id)
        self.set_data("additional_output_path", str(csv_path))
        self.set_data("plot_data_path", str(plot_path))
        self.set_data("score", json.dumps(mean_scores(frame)))
        return csv_path, plot_path

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self._signalled = True
        self.log(f"Received {signal.Signals(signum).name}: stopping after the current step.")
        if self.backend.sigterm_is_host_stop and signum == signal.SIGTERM:
            self.backend.end_stopped_soon(since=_early_stop[0] if _early_stop else time.monotonic())

    def _finish(self, status: str, completion: str, details: str) -> None:
        if not self.is_main_process:
            return
        self.backend.set_data("completion_status", completion)
        self.backend.set_data("completion_details", details)
        self.backend.set_data("end_time", now())
        if completion == "success":
            try:
                self.backend.set_progress(100)
            except KeyboardInterrupt:
                pass
        self.backend.set_status(status)


def _plugin_dir(plugin_file: str | os.PathLike[str]) -> Path:
    path = Path(plugin_file).resolve()
    return path.parent if path.is_file() else path


def _make_backend(raw_values: dict[str, Any], plugin_type: str) -> tuple[Backend, dict[str, Any]]:
    if running_as_task():
        backend = LabBackend()
        return backend, {**backend.host_parameters(), **raw_values}
    if running_under_host():
        backend = HostBackend(plugin_type)
        return backend, {**backend.host_parameters(), **raw_values}
    workspace = Workspace(raw_values.get("workspace"))
    job_id = str(raw_values.get("job_id") or os.environ.get("DLM_JOB_ID") or workspace.next_job_id())
    values = {**raw_values, "job_id": job_id, "workspace": str(workspace.root)}
    experiment = values.get("experiment_name") or "default"
    # the runner (or the launcher of several processes) claimed the job it started us for: we run that job
    joining = os.environ.get("DLM_JOB_ID") == job_id or joins_other_machine(values)
    backend = LocalBackend(workspace, job_id, job_type=_job_type(plugin_type), experiment=experiment, joining=joining)
    return backend, values


def _job_type(plugin_type: str) -> str:
    return "EVAL" if plugin_type == "evaluator" else "TRAIN"


def run_job(
    plugin_file: str | os.PathLike[str], work: Callable[[Job], str | None], argv: list[str] | None = None
) -> None:
    """Run `work(job)` as a job of the plugin whose `main.py` is `plugin_file`; exits non-zero unless it succeeded.

    `work` returns an optional one-line summary that becomes `completion_details`."""
    if not running_as_task():
        return _run_job(plugin_file, work, argv)
    # A stop may come before the job's own handler is in place (lab.init, parameter checks): remember it.
    signal.signal(signal.SIGTERM, lambda signum, frame: _early_stop.append(time.monotonic()))
    try:
        _run_job(plugin_file, work, argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
    # Everything is recorded: leave now. After a stop the host SIGKILLs the process tree 3 s after its SIGTERM, and
    # the interpreter's teardown of torch and transformers can outlast that; the wrapper would then record FAILED.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_job(plugin_file: str | os.PathLike[str], work: Callable[[Job], str | None], argv: list[str] | None) -> None:
    plugin_dir = _plugin_dir(plugin_file)
    manifest = load_manifest(plugin_dir)
    plugin_type = manifest.get("type", "trainer")
    argv = sys.argv[1:] if argv is None else argv
    under_host = running_under_host()
    raw = read_raw_parameters([] if under_host else argv)
    raw.values.update(take_secret_parameters())
    export_library_secrets(raw.values)
    try:
        backend, values = _make_backend(dict(raw.values), plugin_type)
    except PluginError as exc:  # no job to record it in (a job_id that is not a plain name, `lab` missing or too old)
        print(f"ERROR: {exc}", flush=True)
        raise SystemExit(EXIT_FAILED) from None
    experiment = str(values.get("experiment_name") or (raw.experiment or {}).get("name") or "default")
    job_id = str(values["job_id"])
    main_process = launch.process_rank() == 0
    messages = sys.stdout
    if os.environ.get(MESSAGES_ONLY_ON_STDOUT) == "1":
        sys.stdout = sys.stderr

    def fail(details: str) -> NoReturn:
        _fail(backend, details, main_process, messages)

    params = _start(backend, values, manifest, fail, main_process)
    if _relaunched(params, backend, job_id, fail, messages):
        return
    job = Job(
        params=params,
        backend=backend,
        job_id=job_id,
        plugin_dir=plugin_dir,
        manifest=manifest,
        experiment=experiment,
        messages=messages,
    )
    _run_work(job, work, fail)


def _fail(backend: Backend, details: str, main_process: bool, messages: TextIO) -> NoReturn:
    """Record the job as failed with `details` (on the main process) and exit with EXIT_FAILED."""
    if main_process:
        print(f"ERROR: {details}", file=messages, flush=True)
        backend.set_data("completion_status", "failed")
        backend.set_data("completion_details", details)
        backend.set_data("end_time", now())
        backend.set_status("FAILED")
    raise SystemExit(EXIT_FAILED)


def _start(
    backend: Backend,
    values: dict[str, Any],
    manifest: Mapping[str, Any],
    fail: Callable[[str], NoReturn],
    main_process: bool,
) -> Params:
    """The validated parameters; the job is recorded as running with its public config."""
    try:
        params = coerce_and_validate(values, manifest.get("parameters", {}), aliases=manifest.get("parameter_aliases"))
    except ParameterError as exc:
        fail(str(exc))
    if main_process:
        backend.set_status("RUNNING")
        if backend.records_pid and not launch.is_child_run():
            backend.set_data("pid", os.getpid())
        backend.set_data("start_time", now())
        backend.set_data("config", public_config(params))
    params["start_time"] = now()
    return params


def _relaunched(
    params: Params,
    backend: Backend,
    job_id: str,
    fail: Callable[[str], NoReturn],
    messages: TextIO,
) -> bool:
    """True when the job ran here on several processes (relaunched through accelerate) and is over."""
    try:
        plan = launch.plan_processes(params)
    except ParameterError as exc:
        fail(str(exc))
    if plan.num_processes <= 1 or launch.is_child_run():
        return False
    print(f"Relaunching on {plan.num_processes} processes through accelerate ...", file=messages, flush=True)
    if backend.sigterm_is_host_stop:  # the host's SIGTERM reaches the workers too; they record the stop
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        code = launch.relaunch(
            plan, job_id=job_id, workspace=str(backend.workspace.root), env=secret_environment(params)
        )
    except ParameterError as exc:  # the main machine cannot be reached
        fail(str(exc))
    if code != 0:
        details = f"worker processes exited with code {code}; see the job log for their error"
        record_failed_unless_set(backend, details)
        raise SystemExit(EXIT_FAILED if code != EXIT_STOPPED else EXIT_STOPPED)
    return True


def _run_work(job: Job, work: Callable[[Job], str | None], fail: Callable[[str], NoReturn]) -> None:
    """`work(job)` with tracking and signal handling; records how it ended: success, stopped or failed."""
    backend, params = job.backend, job.params
    previous = {sig: signal.signal(sig, job._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if _early_stop:
        job._on_signal(signal.SIGTERM, None)
    failed = True
    try:
        if job.is_main_process:
            job.check_folders()
            job.tracker = Tracker(
                job.output_dir,
                log_to_wandb=bool(params.get("log_to_wandb")),
                run=run_settings(params, job.output_dir),
                config=params,
                set_job_data=backend.set_data,
                log=job.log,
                state_dir=job.checkpoint_dir if job.plugin_type == "trainer" else None,
                csv_name=f"metrics_job_{job.job_id}.csv",
            )
        summary = work(job)
        failed = False
        job._finish("COMPLETE", "success", summary or "Job completed successfully")
    except (JobStopped, KeyboardInterrupt) as exc:
        failed = False
        reason = str(exc) or "interrupted"  # a Ctrl-C's KeyboardInterrupt has no words
        job.log(f"Job stopped: {reason}")
        if job.is_main_process:
            backend.set_data("completion_details", f"Stopped by user ({reason}).")
            backend.set_data("end_time", now())
            backend.set_status("STOPPED")
        raise SystemExit(backend.stop_exit_code) from None
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure must end as failed, with its reason
        if is_user_error(exc):
            fail(str(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            fail(
                f"no space left on the device while writing {exc.filename or 'the job outputs'}: free space, or use another workspace"
            )
        traceback.print_exc()
        sys.stderr.flush()
        fail(f"{type(exc).__name__}: {exc}")
    finally:
        if job.tracker is not None:
            job.tracker.close(failed=failed)
        if backend.sigterm_is_host_stop:
            # the task's wrapper records any non-zero exit as FAILED: a SIGTERM after the ending is recorded (the
            # host signals the whole process tree after a stop) must not turn this exit into a death by signal
            previous[signal.SIGTERM] = signal.SIG_IGN
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        launch.shutdown_distributed(wait_for_all=not failed)


def record_failed_unless_set(backend: Backend, details: str) -> None:
    """After a child run died: mark the job failed unless the child itself already recorded why."""
    record = backend.job_record() or {}
    if record.get("job_data", {}).get("completion_status") == "failed" or record.get("status") == "STOPPED":
        return
    backend.set_data("completion_status", "failed")
    backend.set_data("completion_details", details)
    backend.set_data("end_time", now())
    backend.set_status("FAILED")
