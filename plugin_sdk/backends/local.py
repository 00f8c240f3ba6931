"""The local backend: a job's state in a local workspace, in the host's on-disk layout (`jobs/<id>/index.json`),
for jobs run from a terminal (`python -m plugin_sdk run`); and the settling of jobs whose process ended unreported.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from plugin_sdk.backends.base import EXIT_STOPPED, now
from plugin_sdk.errors import PluginError
from plugin_sdk.eval_results import write_plot_data
from plugin_sdk.safe_files import (
    LinkRefused,
    check_no_links,
    make_dirs,
    open_no_follow,
    write_json_atomic,
    write_text_atomic,
)
from plugin_sdk.workspace import Workspace


class JobRecord:
    """`<workspace>/jobs/<id>/index.json`, read and written under a file lock (the CLI may set `stop` meanwhile)."""

    def __init__(self, workspace: Workspace, job_id: str) -> None:
        self.root = workspace.root
        self.dir = workspace.job_dir(job_id)
        self.path = self.dir / "index.json"
        self.job_id = job_id

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # opened for appending, never truncated, never through a link: a planted `.lock` link changes nothing
        with open_no_follow(self.dir / ".lock", "a", self.root) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def create(self, *, job_type: str, experiment: str, config: dict[str, Any] | None = None) -> None:
        """A new QUEUED record owned by this process (its pid tells later readers whether the job still runs)."""
        with self._locked():
            self._write_new(job_type=job_type, experiment=experiment, config=config)

    def _write_new(
        self, *, job_type: str, experiment: str, config: dict[str, Any] | None = None, joined: bool = False
    ) -> None:
        record = {
            "id": self.job_id,
            "experiment_id": experiment,
            "status": "QUEUED",
            "type": job_type,
            "progress": 0,
            "job_data": {"config": config or {}, **this_process(), **({"joined": True} if joined else {})},
        }
        write_json_atomic(self.path, record, self.root)

    def claim(self, *, job_type: str, experiment: str, joining: bool = False) -> None:
        """Make the job this process's: a new QUEUED record, refusing an id whose job exists (running or finished:
        two jobs would share one record, log and checkpoint folder). `joining`: this process runs that same job
        (started for it by the runner or the launcher, or a machine of a multi-machine run joining the record its
        rank-0 machine created), which may join a queued or running record, and creates it where none is yet,
        marked `joined`: the machines start together, and the main one takes over a record another made first."""
        with self._locked():
            if self.path.exists():
                record = self.read()
                status = record.get("status")
                joined_first = record.get("job_data", {}).get("joined")  # made by a joining machine, not its owner
                if status in ACTIVE and joining:
                    return
                if status in ACTIVE and joined_first:
                    # the machines of a run start together: the main one takes over what another made first
                    self._write_new(job_type=job_type, experiment=experiment)
                    return
                raise JobIdTaken(
                    f"job_id={self.job_id!r} is taken: job {self.job_id} in {self.dir.parent} is {status}. "
                    "Choose another job_id, or leave it out for the next free one (only a machine with "
                    "machine_rank > 0 of a num_machines > 1 run joins the running job of its rank-0 machine)."
                )
            self._write_new(job_type=job_type, experiment=experiment, joined=joining)

    def read(self) -> dict[str, Any]:
        check_no_links(self.path, self.root)  # a record is this workspace's own file, never another through a link
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"id": self.job_id, "status": "QUEUED", "progress": 0, "job_data": {}}

    @property
    def live_path(self) -> Path:
        """The job's live status (phase, step, max_steps, time), rewritten every step for the local runner."""
        return self.dir / "live.json"

    def read_live(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.live_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def fail_if_gone(self) -> bool:
        """Mark the job FAILED if it is still queued or running but the process that runs it has ended."""
        with self._locked():
            record = self.read()
            job_data = record.get("job_data", {})
            if record.get("status") not in ACTIVE or not _process_gone(job_data.get("pid"), job_data.get("host")):
                return False
            record["status"] = "FAILED"
            record["job_data"].update(
                completion_status="failed",
                end_time=now(),
                completion_details=f"the process ended without reporting: {_last_log_line(self)}",
            )
            write_json_atomic(self.path, record, self.root)
            return True

    def update(self, *, status: str | None = None, progress: int | None = None, **job_data: Any) -> dict[str, Any]:
        with self._locked():
            record = self.read()
            if status is not None:
                record["status"] = status
            if progress is not None:
                record["progress"] = progress
            record.setdefault("job_data", {}).update(job_data)
            write_json_atomic(self.path, record, self.root)
            return record


ACTIVE = ("QUEUED", "RUNNING")


class JobIdTaken(PluginError):
    """A job id that names an existing job of another run."""


def joins_other_machine(values: Mapping[str, Any]) -> bool:
    """Whether `values` start a machine other than the main one (`machine_rank` > 0) of a multi-machine run: the
    same job as the rank-0 machine's, in the record that machine created (a workspace the machines share)."""
    try:
        return int(values.get("num_machines") or 1) > 1 and int(values.get("machine_rank") or 0) > 0
    except (TypeError, ValueError):
        return False  # the parameter check says what is wrong with them


def this_process() -> dict[str, Any]:
    """What a record keeps to tell whether its process still runs: its pid, and the machine the pid belongs to."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _process_gone(pid: Any, host: Any = None) -> bool:
    """Whether the process `pid` has ended (a zombie counts as ended); False when there is no pid to check, or when
    it runs on another machine (one of a multi-machine run, sharing the workspace), where this one cannot look."""
    if not isinstance(pid, int) or pid <= 0 or (host is not None and host != socket.gethostname()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _last_log_line(record: JobRecord) -> str:
    log = record.dir / f"output_{record.job_id}.txt"
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    return next((line for line in reversed(lines) if line), "(empty log)")


def settle_stale_jobs(workspace: Workspace) -> list[str]:
    """Mark FAILED every queued or running job whose process is gone without reporting how it ended (killed,
    out of memory, machine restarted); returns their ids. Run whenever a command reads the workspace."""
    settled = []
    for index in sorted((workspace.root / "jobs").glob("*/index.json")):
        try:
            record = JobRecord(workspace, index.parent.name)
        except PluginError:
            continue  # not a folder this SDK made
        try:
            if record.fail_if_gone():
                settled.append(record.job_id)
        except LinkRefused:
            continue  # a link planted among the jobs is no job of this workspace; a command naming it says so
    return settled


class LocalBackend:
    """Job state in a local workspace, in the host's on-disk layout."""

    name = "local"
    checkpoint_dir = None
    stop_exit_code = EXIT_STOPPED
    sigterm_is_host_stop = False
    records_pid = True  # settle_stale_jobs turns a job whose process is gone unreported into FAILED

    def __init__(
        self, workspace: Workspace, job_id: str, *, job_type: str, experiment: str, joining: bool = False
    ) -> None:
        """The job `job_id`, claimed (`JobRecord.claim`): `joining` where this process runs a job already started
        for it."""
        self.workspace = workspace
        self.record = JobRecord(workspace, job_id)
        self.record.claim(job_type=job_type, experiment=experiment, joining=joining)

    def set_status(self, status: str) -> None:
        self.record.update(status=status)

    def set_progress(self, progress: int) -> None:
        self.record.update(progress=progress)

    def stop_requested(self) -> bool:
        return bool(self.record.read().get("job_data", {}).get("stop"))

    def set_live(self, status: dict[str, Any]) -> None:
        write_json_atomic(self.record.live_path, status, self.workspace.root)

    def set_data(self, key: str, value: Any) -> None:
        if key == "pid":  # with its machine: a pid means nothing on another one
            self.record.update(pid=value, host=socket.gethostname())
            return
        self.record.update(**{key: value})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Metrics live in the job's tracker (metrics.json, TensorBoard), not in the record."""

    def end_stopped_soon(self, since: float) -> None:
        """Nothing: a terminal's SIGTERM is a stop like Ctrl-C, ended at the step boundary."""

    def job_record(self) -> dict[str, Any]:
        return self.record.read()

    def register_model(
        self, model_dir: Path, *, name: str, architecture: str, json_data: dict, provenance: dict
    ) -> None:
        model_dir = Path(model_dir)
        description = {
            "model_id": f"TransformerLab/{name}",
            "model_filename": ".",
            "name": name,
            "local_model": True,
            "json_data": {
                "uniqueID": f"TransformerLab/{name}",
                "name": name,
                "model_filename": ".",
                "description": "Generated by Transformer Lab.",
                "source": "transformerlab",
                "architecture": architecture,
                "huggingface_repo": "",
                **json_data,
            },
        }
        write_json_atomic(model_dir / "index.json", description, self.workspace.root)
        checksums = [
            {"file_path": str(path), "md5_hash": _md5(path)}
            for path in sorted(model_dir.rglob("*"))
            if path.is_file() and path.name != "_tlab_provenance.json"
        ]
        write_json_atomic(
            model_dir / "_tlab_provenance.json",
            {
                **provenance,
                "model_name": name,
                "model_architecture": architecture,
                "end_time": now(),
                "md5_checksums": checksums,
            },
            self.workspace.root,
        )

    def save_eval_results(self, frame: Any, eval_dir: Path, job_id: str) -> tuple[Path, Path]:
        make_dirs(eval_dir, self.workspace.root)
        csv_path = eval_dir / f"output_{job_id}.csv"
        write_text_atomic(csv_path, frame.to_csv(index=False), self.workspace.root, newline="")
        return csv_path, write_plot_data(frame, eval_dir / f"plot_data_{job_id}_plotting.json", self.workspace.root)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
