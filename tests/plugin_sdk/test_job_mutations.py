"""Behaviour of plugin_sdk.job that mutation testing (mutmut) found unchecked: progress bounds and repeats, stop
requests, the job log's lines, the metrics a backend receives, how an ending is recorded (completed, stopped, crashed,
full disk), the warning for an output_dir outside the workspace. A recording backend stands in for the host."""

import errno
import io
import signal
from pathlib import Path

import pytest

from plugin_sdk.backends.base import EXIT_FAILED
from plugin_sdk.errors import JobStopped, ParameterError
from plugin_sdk.job import Job, _fail, _run_work
from plugin_sdk.params import Params
from plugin_sdk.safe_files import LinkRefused
from plugin_sdk.workspace import Workspace


class RecordingBackend:
    """The calls a Job makes on its backend, in order; `stop` answers stop_requested, `raise_on_progress` makes
    set_progress raise KeyboardInterrupt as the host SDK does for a stop."""

    name = "recording"
    checkpoint_dir = None
    sigterm_is_host_stop = False
    stop_exit_code = 7  # not EXIT_FAILED, so that a stop recorded as a failure shows

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.calls: list[tuple] = []
        self.stop = False
        self.raise_on_progress = False

    def set_progress(self, progress: int) -> None:
        self.calls.append(("progress", progress))
        if self.raise_on_progress:
            raise KeyboardInterrupt

    def set_status(self, status: str) -> None:
        self.calls.append(("status", status))

    def set_data(self, key: str, value) -> None:
        self.calls.append(("data", key, value))

    def set_live(self, status: dict) -> None:
        assert set(status) == {"phase", "step", "max_steps", "time"} and status["time"] > 0
        self.calls.append(("live", status["phase"], status["step"], status["max_steps"]))

    def log_metrics(self, metrics, step: int) -> None:
        self.calls.append(("metrics", dict(metrics), step))

    def stop_requested(self) -> bool:
        return self.stop


class RecordingTracker:
    def __init__(self) -> None:
        self.logged: list[tuple] = []

    def log_metrics(self, metrics, step: int) -> None:
        self.logged.append((dict(metrics), step))


def make_job(tmp_path: Path, *, manifest: dict | None = None, **params) -> Job:
    backend = RecordingBackend(Workspace(tmp_path / "ws"))
    return Job(
        params=Params(params),
        backend=backend,
        job_id="5",
        plugin_dir=tmp_path,
        manifest=manifest or {"uniqueId": "probe"},
        experiment="exp",
        messages=io.StringIO(),
    )


@pytest.fixture(autouse=True)
def main_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_progress_is_clamped_to_0_100_and_repeats_are_not_sent(tmp_path):
    job = make_job(tmp_path)
    for percent in (-5, 0, 0.4, 3.9, 3, 250, 100):
        job.report_progress(percent)
    assert job.backend.calls == [("progress", 0), ("progress", 3), ("progress", 100)]


@pytest.mark.parametrize("first", [0, 1])
def test_the_first_progress_is_sent(tmp_path, first):
    job = make_job(tmp_path)
    job.report_progress(first)
    assert job.backend.calls == [("progress", first)]


def test_progress_is_recorded_only_by_the_main_process(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    job = make_job(tmp_path)
    job.report_progress(10)
    job.log("hello")
    job.log_metrics({"loss": 1.0}, step=1)
    assert job.backend.calls == [] and job.messages.getvalue() == ""


def test_a_stop_signalled_while_recording_progress_is_remembered(tmp_path):
    job = make_job(tmp_path)
    job.backend.raise_on_progress = True
    job.report_progress(10)
    assert job.stop_requested() is True
    with pytest.raises(JobStopped, match="stop requested"):
        job.check_stop()


def test_a_stop_asked_through_the_backend_is_seen(tmp_path):
    job = make_job(tmp_path)
    assert job.stop_requested() is False
    job.backend.stop = True
    assert job.stop_requested() is True


def test_log_writes_a_line_to_the_messages(tmp_path):
    job = make_job(tmp_path)
    job.log("loading model x")
    assert job.messages.getvalue() == "loading model x\n"


def test_log_goes_to_stdout_without_messages(tmp_path, capsys):
    job = Job(
        params=Params(),
        backend=RecordingBackend(Workspace(tmp_path / "ws")),
        job_id="5",
        plugin_dir=tmp_path,
        manifest={"uniqueId": "probe"},
        experiment="exp",
    )
    job.log("to stdout")
    assert capsys.readouterr().out == "to stdout\n"


def test_log_metrics_reaches_backend_tracker_and_log(tmp_path):
    job = make_job(tmp_path)
    job.tracker = RecordingTracker()
    job.report_status("training", step=0, max_steps=8)
    job.log_metrics({"loss": 0.5}, step=3)
    assert job.backend.calls[-1] == ("metrics", {"loss": 0.5}, 3)
    assert job.tracker.logged == [({"loss": 0.5}, 3)]
    assert job.messages.getvalue().splitlines()[-1] == "step 3/8: loss=0.5"


def test_a_successful_ending_records_full_progress_and_the_end(tmp_path):
    job = make_job(tmp_path)
    job._finish("COMPLETE", "success", "done")
    data = {call[1]: call[2] for call in job.backend.calls if call[0] == "data"}
    assert set(data) == {"completion_status", "completion_details", "end_time"} and data["end_time"]
    assert job.backend.calls[-2:] == [("progress", 100), ("status", "COMPLETE")]


def test_a_failed_ending_leaves_progress_where_it_was(tmp_path):
    job = make_job(tmp_path)
    job._finish("FAILED", "failed", "boom")
    assert ("progress", 100) not in job.backend.calls
    assert job.backend.calls[-1] == ("status", "FAILED")


def test_a_trainer_without_a_type_writes_under_its_template(tmp_path):
    job = make_job(tmp_path, manifest={"uniqueId": "probe"})
    assert job.plugin_type == "trainer"
    assert job.output_dir == job.workspace.trainer_output_dir("exp", "probe")


def test_an_output_dir_outside_the_workspace_is_said(tmp_path):
    outside = tmp_path / "elsewhere"
    job = make_job(tmp_path, output_dir=str(outside))
    job.check_folders()
    assert job.messages.getvalue() == (
        f"WARNING: output_dir={outside} is outside the workspace {job.workspace.root}: this job's metrics, "
        "TensorBoard logs and checkpoints are written there\n"
    )


@pytest.mark.parametrize("inside", [True, False])
def test_no_warning_for_an_output_dir_inside_the_workspace_or_none(tmp_path, inside):
    workspace_root = Workspace(tmp_path / "ws").root
    job = make_job(tmp_path, **({"output_dir": str(workspace_root / "runs" / "a")} if inside else {}))
    job.check_folders()
    assert job.messages.getvalue() == ""


def test_check_folders_refuses_a_link_in_the_workspace(tmp_path):
    workspace_root = Workspace(tmp_path / "ws").root
    workspace_root.mkdir(parents=True, exist_ok=True)
    (tmp_path / "target").mkdir()
    (workspace_root / "runs").symlink_to(tmp_path / "target")
    # two folders below the link: a check that forgets the workspace root looks only at the last two
    job = make_job(tmp_path, output_dir=str(workspace_root / "runs" / "a" / "b"))
    with pytest.raises(LinkRefused, match=r"runs is a symbolic link"):
        job.check_folders()


# ------------------------------------------------------------------------------------------------ how work ends


def run_work(job: Job, work) -> int | None:
    """`_run_work` as `_run_job` calls it, with `_fail` recording on the job's backend; the exit code, if any."""

    def fail(details: str):
        _fail(job.backend, details, True, job.messages)

    try:
        _run_work(job, work, fail)
    except SystemExit as exit:
        return exit.code
    return None


def ending(job: Job) -> tuple[str, dict]:
    statuses = [call[1] for call in job.backend.calls if call[0] == "status"]
    data = {call[1]: call[2] for call in job.backend.calls if call[0] == "data"}
    return statuses[-1], data


def test_work_that_returns_a_summary_completes_with_it(tmp_path):
    job = make_job(tmp_path)
    assert run_work(job, lambda job: "trained 3 steps") is None
    status, data = ending(job)
    assert status == "COMPLETE" and data["completion_details"] == "trained 3 steps"


def test_work_that_returns_nothing_completes_with_the_default_summary(tmp_path):
    job = make_job(tmp_path)
    run_work(job, lambda job: None)
    assert ending(job)[1]["completion_details"] == "Job completed successfully"


def test_a_stopped_job_is_recorded_stopped_with_the_backends_exit_code(tmp_path):
    def stop(job):
        raise JobStopped("stop requested")

    job = make_job(tmp_path)
    assert run_work(job, stop) == RecordingBackend.stop_exit_code
    status, data = ending(job)
    assert status == "STOPPED" and data["completion_details"] == "Stopped by user (stop requested)."
    assert data["end_time"] and "Job stopped: stop requested" in job.messages.getvalue()


def test_a_crash_is_recorded_failed_with_its_type_and_message(tmp_path):
    def crash(job):
        raise TypeError("bad shape")

    job = make_job(tmp_path)
    assert run_work(job, crash) == EXIT_FAILED
    status, data = ending(job)
    assert status == "FAILED" and data["completion_status"] == "failed"
    assert data["completion_details"] == "TypeError: bad shape"


def test_a_full_disk_is_said_in_words(tmp_path):
    def full(job):
        raise OSError(errno.ENOSPC, "No space left on device", "/ws/model.safetensors")

    job = make_job(tmp_path)
    assert run_work(job, full) == EXIT_FAILED
    assert ending(job)[1]["completion_details"] == (
        "no space left on the device while writing /ws/model.safetensors: free space, or use another workspace"
    )


def test_the_signal_handlers_are_restored_after_the_work(tmp_path):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    seen = {}

    def work(job):
        seen.update({sig: signal.getsignal(sig) for sig in before})

    job = make_job(tmp_path)
    run_work(job, work)
    assert all(handler == job._on_signal for handler in seen.values())
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_user_error_is_recorded_with_its_own_words(tmp_path):
    def refuse(job):
        raise ParameterError("dataset_name: no such dataset")

    job = make_job(tmp_path)
    assert run_work(job, refuse) == EXIT_FAILED
    assert ending(job)[1]["completion_details"] == "dataset_name: no such dataset"


def test_an_interrupt_without_words_is_recorded_as_interrupted(tmp_path):
    def interrupt(job):
        raise KeyboardInterrupt

    job = make_job(tmp_path)
    run_work(job, interrupt)
    status, data = ending(job)
    assert status == "STOPPED" and data["completion_details"] == "Stopped by user (interrupted)."
    assert "Job stopped: interrupted" in job.messages.getvalue()


def test_a_full_disk_without_a_file_name_names_the_outputs(tmp_path):
    def full(job):
        raise OSError(errno.ENOSPC, "No space left on device")

    job = make_job(tmp_path)
    run_work(job, full)
    assert ending(job)[1]["completion_details"].startswith("no space left on the device while writing the job outputs")


def test_the_work_logs_metrics_into_the_jobs_csv(tmp_path):
    def work(job):
        job.log_metrics({"loss": 0.5}, step=1)

    job = make_job(tmp_path)
    run_work(job, work)
    assert job.tracker is not None and job.tracker.csv_path.name == "metrics_job_5.csv"
    assert job.tracker.csv_path.read_text().splitlines()[-1].endswith("0.5")


# ------------------------------------------------------------------------------------------------ live status


def test_the_log_says_each_phase_once_and_training_with_its_steps(tmp_path):
    job = make_job(tmp_path)
    job.report_status("loading model x")
    job.report_status("loading model x")
    job.report_status("training", step=0, max_steps=30)
    job.report_status("training", step=5, max_steps=30)
    job.report_status("evaluating", step=10, max_steps=30)  # within training: live status only
    job.report_status("saving outputs")
    assert job.messages.getvalue().splitlines() == [
        "loading model x ...",
        "training 30 steps ...",
        "saving outputs ...",
    ]
    live = [call[1:] for call in job.backend.calls if call[0] == "live"]
    assert live[2:5] == [("training", 0, 30), ("training", 5, 30), ("evaluating", 10, 30)]


def test_training_without_a_step_count_logs_the_phase_alone(tmp_path):
    job = make_job(tmp_path)
    job.report_status("training")
    assert job.messages.getvalue() == "training ...\n"
