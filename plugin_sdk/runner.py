"""`python -m plugin_sdk run`: start a plugin as the host would, on a local workspace, and watch it.

The runner creates the job record, hands the parameters over exactly as the host does (an input file for
trainers, `--key value` arguments for evaluators), starts the plugin through the harness in a child process,
writes its output to the job log, shows the job's progress in the terminal, and makes sure the job never ends
looking successful when the process failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from plugin_sdk.backends.base import EXIT_FAILED, EXIT_STOPPED, now
from plugin_sdk.backends.local import ACTIVE, JobRecord, joins_other_machine
from plugin_sdk.config_keys import redact, secret_environment
from plugin_sdk.errors import PluginError
from plugin_sdk.job import MESSAGES_ONLY_ON_STDOUT
from plugin_sdk.manifest import load_manifest
from plugin_sdk.progress import TerminalView
from plugin_sdk.safe_files import check_no_links, open_no_follow, write_json_atomic
from plugin_sdk.workspace import Workspace

LIVE_POLL_SECONDS = 0.5
STDERR_TAIL = 20  # lines of the child's stderr shown when it died without reporting why
UNREPORTED_EXIT = "the plugin process exited with code"


def plugin_command(
    plugin_dir: Path, manifest: dict, values: dict[str, Any], workspace: Workspace, job_id: str, experiment: str
) -> list[str]:
    """The child command line: harness + parameters in the form the host uses for this plugin type."""
    cmd = [sys.executable, "-m", "plugin_sdk.harness", "--plugin_dir", str(plugin_dir)]
    values = redact(values)  # credentials travel in the environment (secret_environment), never in argv or files
    if manifest.get("type") == "evaluator":
        for key, value in values.items():
            cmd += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict)) else str(value)]
        eval_name = str(values.get("eval_name") or manifest["uniqueId"])
        return cmd + ["--experiment_name", experiment, "--eval_name", eval_name, "--job_id", job_id]
    input_file = workspace.input_file(job_id)
    config = {"experiment": {"name": experiment}, "config": {**values, "job_id": job_id}}
    write_json_atomic(input_file, config, workspace.root, mode=0o600)  # parameters: for the job's owner only
    return cmd + ["--input_file", str(input_file), "--experiment_name", experiment]


def run_plugin(
    plugin_dir: Path,
    values: dict[str, Any],
    *,
    workspace: Workspace,
    experiment: str = "default",
    show_progress: bool | None = None,
) -> tuple[int, str]:
    """Run one job of the plugin; returns (exit code, job id).

    The terminal shows what the plugin itself prints (its stdout: phases, messages, a short line per logged step)
    and, with `show_progress` (default: when stderr is a terminal), a live status line. Everything else the child
    writes to stderr (library warnings, logging, weight-loading bars, tracebacks) goes to the job log only, which
    also keeps every line of stdout in full; the end of it is shown when the process dies without saying why.
    """
    manifest = load_manifest(plugin_dir)
    job_id = str(values.pop("job_id", None) or workspace.next_job_id())
    record = JobRecord(workspace, job_id)
    log_path = check_no_links(record.dir / f"output_{job_id}.txt", workspace.root)  # before the job is made
    job_type = "EVAL" if manifest.get("type") == "evaluator" else "TRAIN"
    joining = joins_other_machine(values)
    record.claim(job_type=job_type, experiment=experiment, joining=joining)
    cmd = plugin_command(plugin_dir, manifest, values, workspace, job_id, experiment)
    view = TerminalView(live=sys.stderr.isatty() if show_progress is None else show_progress)
    view.line(f"Job {job_id} ({manifest['uniqueId']}), log: {log_path}")
    try:
        code, final, stderr_tail = _run_child(cmd, values, workspace, record, view, log_path, joining)
    finally:
        # A refused or failed job leaves no file of its parameters behind (a completed one keeps it, as the host's)
        if record.read().get("status") not in ("COMPLETE", "STOPPED"):
            workspace.input_file(job_id).unlink(missing_ok=True)
    details = final["job_data"].get("completion_details", "")
    if code != 0 and details.startswith(UNREPORTED_EXIT) and stderr_tail:
        view.line("".join(stderr_tail))
    view.line(f"Job {job_id}: {final['status']} - {details}")
    return exit_code(final.get("status"), code), job_id


def exit_code(status: str | None, code: int) -> int:
    """The documented exit codes, 0 success, 1 failed, 3 stopped, whatever ended the plugin's process (a signal
    gives a negative code, which a shell would show as 247 or 254). A machine that joined a multi-machine run
    leaves the record to the first machine: its own process's code decides."""
    if status == "STOPPED":
        return EXIT_STOPPED
    return 0 if code == 0 and status != "FAILED" else EXIT_FAILED


def _run_child(
    cmd: list[str],
    values: dict[str, Any],
    workspace: Workspace,
    record: JobRecord,
    view: TerminalView,
    log_path: Path,
    joining: bool,
) -> tuple[int, dict[str, Any], deque[str]]:
    """Start the plugin's process, keep its output in the job log and show it; returns (exit code, settled
    record, the end of its stderr)."""
    job_id = record.job_id
    env = {
        **os.environ,
        **secret_environment(values),
        "DLM_WORKSPACE": str(workspace.root),
        "DLM_BACKEND": "local",
        "DLM_JOB_ID": job_id,
        "PYTHONUNBUFFERED": "1",
        MESSAGES_ONLY_ON_STDOUT: "1",
    }
    with open_no_follow(log_path, "a", workspace.root, encoding="utf-8") as log:
        # Its own session: a Ctrl-C in the terminal reaches the runner only, which forwards one clean stop.
        process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        log_line = _locked_writer(log)
        stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        threads = [
            threading.Thread(target=_keep_stderr, args=(process.stderr, log_line, stderr_tail), daemon=True),
            threading.Thread(target=_watch_live, args=(record, view, process), daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            with _forwarding_stops(process) as forwarded:
                for line in process.stdout:
                    log_line(line)
                    view.update(record.read_live())  # the status as of this line (a phase line, a step's pace)
                    view.child_line(line)
                code = process.wait()
        finally:
            for thread in threads:
                thread.join(timeout=5)
            view.close()
    # a machine joining a multi-machine run leaves the record to the rank-0 machine, which owns the job
    if joining:
        return code, record.read(), stderr_tail
    return code, settle(record, code, stop_forwarded=bool(forwarded)), stderr_tail


def _locked_writer(log: TextIO) -> Callable[[str], None]:
    lock = threading.Lock()

    def write(line: str) -> None:
        with lock:
            log.write(line)
            log.flush()

    return write


def _keep_stderr(stream: TextIO, log_line: Callable[[str], None], tail: deque[str]) -> None:
    for line in stream:
        log_line(line)
        tail.append(line)


def _watch_live(record: JobRecord, view: TerminalView, process: subprocess.Popen) -> None:
    while process.poll() is None:
        view.update(record.read_live(), record.read().get("progress"))
        time.sleep(LIVE_POLL_SECONDS)


@contextlib.contextmanager
def _forwarding_stops(process: subprocess.Popen) -> Iterator[list[int]]:
    """While the plugin runs, SIGTERM/SIGINT/SIGHUP to the runner (`timeout`, `kill`, Ctrl-C, a closed terminal)
    become a stop of the plugin, which saves a checkpoint and ends STOPPED; the runner keeps reading its output
    until it exits. A second signal is passed on as SIGINT, which the plugin takes as "stop now". Yields the
    signals received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM if len(received) == 1 else signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def settle(record: JobRecord, code: int, *, stop_forwarded: bool = False) -> dict[str, Any]:
    """Make the record agree with the exit code: a failed or killed process never leaves a successful job. A
    plugin that the forwarded stop ended before it could take signals (still starting) was stopped, not failed."""
    data = record.read()
    job_data = data.get("job_data", {})
    if data.get("status") == "STOPPED":
        return data
    if stop_forwarded and code in (-signal.SIGTERM, -signal.SIGINT) and job_data.get("completion_status") != "failed":
        return record.update(
            status="STOPPED",
            end_time=now(),
            completion_details="Stopped by user while starting, before its first step: nothing to resume from",
        )
    if code != 0 and job_data.get("completion_status") != "failed":
        return record.update(
            status="FAILED",
            completion_status="failed",
            end_time=now(),
            completion_details=f"{UNREPORTED_EXIT} {code} before reporting why; see the job log in {record.dir}",
        )
    if code == 0 and job_data.get("completion_status") != "success":
        return record.update(
            status="FAILED",
            completion_status="failed",
            end_time=now(),
            completion_details="the plugin process exited without reporting success",
        )
    return data


def request_stop(workspace: Workspace, job_id: str) -> str | None:
    """Ask a running job to stop, as the workbench's Stop button does (`job_data.stop = true`). Returns None, or
    the status of a job that has already finished (then nothing is asked)."""
    record = JobRecord(workspace, job_id)
    if not record.path.exists():
        raise PluginError(f"there is no job {job_id} in {workspace.root / 'jobs'}")
    record.fail_if_gone()
    status = record.read().get("status")
    if status not in ACTIVE:
        return status
    record.update(stop=True)
    return None
