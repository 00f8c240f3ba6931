"""The `Backend` protocol (plugin_sdk.backends.base): every backend has its operations, and the ways the hosts
differ are answered by the backend, as the job asks them."""

from __future__ import annotations

import pytest

from plugin_sdk.backends.base import EXIT_STOPPED, Backend
from plugin_sdk.backends.host import HostBackend
from plugin_sdk.backends.lab import LabBackend
from plugin_sdk.backends.local import LocalBackend
from plugin_sdk.workspace import Workspace

OPERATIONS = sorted(name for name, value in vars(Backend).items() if callable(value) and not name.startswith("_"))


@pytest.mark.parametrize("backend", [LocalBackend, HostBackend, LabBackend])
def test_every_backend_has_the_protocols_operations(backend):
    assert "end_stopped_soon" in OPERATIONS and "job_record" in OPERATIONS
    assert [name for name in OPERATIONS if not callable(getattr(backend, name, None))] == []


@pytest.mark.parametrize(
    ("backend", "stop_exit_code", "sigterm_is_host_stop", "records_pid"),
    [
        (LocalBackend, EXIT_STOPPED, False, True),
        (HostBackend, EXIT_STOPPED, False, False),
        (LabBackend, 0, True, False),  # the task's wrapper reads exit 0 after a stop as STOPPED
    ],
)
def test_how_the_hosts_differ(backend, stop_exit_code, sigterm_is_host_stop, records_pid):
    assert backend.stop_exit_code == stop_exit_code
    assert backend.sigterm_is_host_stop is sigterm_is_host_stop
    assert backend.records_pid is records_pid


def test_a_local_job_keeps_its_checkpoints_itself_and_its_record_is_readable(tmp_path):
    backend = LocalBackend(Workspace(tmp_path), "1", job_type="TRAIN", experiment="e")
    backend.set_status("RUNNING")
    assert backend.checkpoint_dir is None
    assert backend.job_record()["status"] == "RUNNING"
    assert object.__new__(HostBackend).job_record() is None  # the host SDK has no read of the record
