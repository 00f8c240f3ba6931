"""Hostile files and ids in a workspace: a symbolic link planted where the SDK writes (a job's lock, record, log,
live status, input file, metrics, evaluation results, model index, run state, output folders) is refused, naming
it, and nothing outside the workspace changes; a job id belongs to one job; the weak spots around the workspace
(`--workspace ''`, an `output_dir` outside it, a task id naming no host job, an unusable lab home) say what is
wrong in one line."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from plugin_sdk.__main__ import main as cli
from plugin_sdk.backends.base import EXIT_FAILED
from plugin_sdk.backends.local import JobIdTaken, JobRecord, LocalBackend, joins_other_machine
from plugin_sdk.errors import PluginError
from plugin_sdk.job import _make_backend, run_job
from plugin_sdk.outputs import check_outputs_free
from plugin_sdk.runner import plugin_command, run_plugin
from plugin_sdk.safe_files import LinkRefused, check_no_links, open_no_follow, write_json_atomic, write_text_atomic
from plugin_sdk.workspace import Workspace

PROBE = Path(__file__).parents[1] / "fixtures" / "plugins" / "contract_probe"
PRECIOUS = "precious, not the workspace's\n"


def probe_work():
    spec = importlib.util.spec_from_file_location("bad_files_probe", PROBE / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.probe


def run_probe(workspace: Path, *argv: str) -> int:
    """The probe plugin as one job in this process; its exit code (a job that succeeds returns)."""
    try:
        run_job(PROBE / "main.py", probe_work(), ["--workspace", str(workspace), "--required_note", "x", *argv])
    except SystemExit as ended:
        return ended.code
    return 0


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the workspace, with a file a link could point at."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim.txt").write_text(PRECIOUS)
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def plant(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


# ---- the helper --------------------------------------------------------------------------------------------------
def test_the_helper_refuses_links_in_the_file_and_every_folder_below_the_root(tmp_path, outside):
    root = tmp_path / "ws"
    plant(root / "a" / "file.json", outside / "victim.txt")
    plant(root / "b", outside)
    with pytest.raises(LinkRefused, match=f"{root / 'a' / 'file.json'} is a symbolic link"):
        write_json_atomic(root / "a" / "file.json", {"x": 1}, root)
    with pytest.raises(LinkRefused, match=f"{root / 'b'} is a symbolic link"):
        write_text_atomic(root / "b" / "c" / "new.txt", "x", root)
    with pytest.raises(LinkRefused):
        open_no_follow(root / "a" / "file.json", "a", root)
    assert snapshot(outside) == {"victim.txt": PRECIOUS}
    # a link above the root is the caller's business (a workspace may live under a linked home)
    linked_home = plant(tmp_path / "home", tmp_path / "real_home")
    (tmp_path / "real_home").mkdir()
    write_text_atomic(linked_home / "ws" / "ok.txt", "fine", linked_home / "ws")
    assert (tmp_path / "real_home" / "ws" / "ok.txt").read_text() == "fine"
    assert check_no_links(linked_home / "ws" / "ok.txt", linked_home / "ws") == linked_home / "ws" / "ok.txt"


def test_the_append_opener_never_truncates_and_refuses_other_modes(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("kept\n")
    with open_no_follow(path, "a", tmp_path) as handle:
        handle.write("added\n")
    assert path.read_text() == "kept\nadded\n"
    with pytest.raises(ValueError, match="appending only"):
        open_no_follow(path, "w", tmp_path)


# ---- every writer of the SDK -------------------------------------------------------------------------------------
def _record(ws: Workspace, job_id: str = "3") -> JobRecord:
    record = JobRecord(ws, job_id)
    record.create(job_type="TRAIN", experiment="e")
    return record


def _tracker(output_dir: Path, job_id: str = "3"):
    from plugin_sdk.tracking import RunSettings, Tracker

    return Tracker(
        output_dir,
        log_to_wandb=False,
        run=RunSettings("run-v1"),
        config={},
        set_job_data=lambda key, value: None,
        log=lambda line: None,
        state_dir=output_dir / f"checkpoints_job_{job_id}",
        csv_name=f"metrics_job_{job_id}.csv",
    )


def _frame():
    import pandas as pd

    return pd.DataFrame([{"test_case_id": 0, "metric_name": "m", "score": 1.0}])


def _jobs_folder_link(ws: Workspace, outside: Path) -> Path:
    (ws.root / "jobs").mkdir(parents=True, exist_ok=True)
    return plant(ws.root / "jobs" / "3", outside)


def _lock(ws: Workspace, outside: Path) -> Path:
    _record(ws)
    (ws.job_dir("3") / ".lock").unlink()
    return plant(ws.job_dir("3") / ".lock", outside / "victim.txt")


def _record_file(ws: Workspace, outside: Path) -> Path:
    _record(ws)
    (ws.job_dir("3") / "index.json").unlink()
    return plant(ws.job_dir("3") / "index.json", outside / "victim.txt")


def _live_file(ws: Workspace, outside: Path) -> Path:
    _record(ws)
    return plant(ws.job_dir("3") / "live.json", outside / "victim.txt")


# (name, plant(ws, outside) -> the link, act(ws) that writes there)
WRITERS: list[tuple[str, Callable, Callable]] = [
    ("job lock", _lock, lambda ws: JobRecord(ws, "3").update(progress=1)),
    ("job record", _record_file, lambda ws: JobRecord(ws, "3").update(status="RUNNING")),
    ("jobs folder, for a new id", lambda ws, o: plant(ws.root / "jobs", o), lambda ws: ws.next_job_id()),
    ("job folder", _jobs_folder_link, lambda ws: JobRecord(ws, "3").create(job_type="TRAIN", experiment="e")),
    (
        "live status",
        _live_file,
        lambda ws: LocalBackend(ws, "3", job_type="TRAIN", experiment="e", joining=True).set_live({"step": 1}),
    ),
    (
        "job log, by the runner",
        lambda ws, o: plant(ws.job_dir("3") / "output_3.txt", o / "victim.txt"),
        lambda ws: run_plugin(PROBE, {"job_id": "3", "required_note": "x"}, workspace=ws, show_progress=False),
    ),
    (
        "trainer input file",
        lambda ws, o: plant(ws.input_file("3"), o / "victim.txt"),
        lambda ws: plugin_command(PROBE, {"type": "trainer"}, {}, ws, "3", "e"),
    ),
    (
        "temp folder",
        lambda ws, o: plant(ws.root / "temp", o),
        lambda ws: plugin_command(PROBE, {"type": "trainer"}, {}, ws, "3", "e"),
    ),
    (
        "metrics CSV",
        lambda ws, o: plant(ws.root / "out" / "run-v1" / "metrics_job_3.csv", o / "victim.txt"),
        lambda ws: _tracker(ws.root / "out").log_metrics({"train/loss": 1.0}, step=1),
    ),
    (
        "metrics.json",
        lambda ws, o: plant(ws.root / "out" / "metrics.json", o / "victim.txt"),
        lambda ws: _tracker(ws.root / "out").log_metrics({"train/loss": 1.0}, step=1),
    ),
    (
        "TensorBoard folder",
        lambda ws, o: plant(ws.root / "out" / "run-v1", o),
        lambda ws: _tracker(ws.root / "out"),
    ),
    (
        "run state beside the checkpoints",
        lambda ws, o: plant(ws.root / "out" / "checkpoints_job_3" / "run.json", o / "victim.txt"),
        lambda ws: _tracker(ws.root / "out"),
    ),
    (
        "evaluation table",
        lambda ws, o: plant(ws.root / "evals" / "output_3.csv", o / "victim.txt"),
        lambda ws: LocalBackend(ws, "3", job_type="EVAL", experiment="e").save_eval_results(
            _frame(), ws.root / "evals", "3"
        ),
    ),
    (
        "evaluation plot data",
        lambda ws, o: plant(ws.root / "evals" / "plot_data_3_plotting.json", o / "victim.txt"),
        lambda ws: LocalBackend(ws, "3", job_type="EVAL", experiment="e").save_eval_results(
            _frame(), ws.root / "evals", "3"
        ),
    ),
    (
        "model index",
        lambda ws, o: plant(ws.root / "models" / "m" / "index.json", o / "victim.txt"),
        lambda ws: LocalBackend(ws, "3", job_type="TRAIN", experiment="e").register_model(
            ws.root / "models" / "m", name="m", architecture="A", json_data={}, provenance={}
        ),
    ),
    (
        "model provenance",
        lambda ws, o: plant(ws.root / "models" / "m" / "_tlab_provenance.json", o / "victim.txt"),
        lambda ws: LocalBackend(ws, "3", job_type="TRAIN", experiment="e").register_model(
            ws.root / "models" / "m", name="m", architecture="A", json_data={}, provenance={}
        ),
    ),
    (
        "adaptors folder, before training",
        lambda ws, o: plant(ws.root / "adaptors", o),
        lambda ws: check_outputs_free(_job_for_outputs(ws), lora=True, full_model=True),
    ),
    (
        "models folder, before training",
        lambda ws, o: plant(ws.root / "models", o),
        lambda ws: check_outputs_free(_job_for_outputs(ws), lora=True, full_model=True),
    ),
]


def _job_for_outputs(ws: Workspace) -> SimpleNamespace:
    params = SimpleNamespace(model_name="tiny-llada", adaptor_name="a")
    return SimpleNamespace(
        params=params, workspace=ws, adaptor_dir=ws.adaptor_dir("tiny-llada", "a"), model_dir=ws.model_dir
    )


@pytest.mark.parametrize("plant_link, act", [case[1:] for case in WRITERS], ids=[case[0] for case in WRITERS])
def test_no_writer_follows_a_link_out_of_the_workspace(tmp_path, outside, plant_link, act):
    ws = Workspace(tmp_path / "ws")
    link = plant_link(ws, outside)
    with pytest.raises(LinkRefused) as refused:
        act(ws)
    assert f"{link} is a symbolic link" in str(refused.value)
    assert snapshot(outside) == {"victim.txt": PRECIOUS}
    assert link.is_symlink()  # left as it was: the user sees what was planted


def test_the_stop_command_names_the_planted_lock(tmp_path, outside, capsys):
    ws = Workspace(tmp_path / "ws")
    link = _lock(ws, outside)
    assert cli(["stop", "3", "--workspace", str(ws.root)]) == 2
    assert f"error: {link} is a symbolic link" in capsys.readouterr().err
    assert snapshot(outside) == {"victim.txt": PRECIOUS}


def test_a_job_whose_experiments_folder_is_a_link_fails_before_writing(tmp_path, outside, capsys):
    ws = tmp_path / "ws"
    plant(ws / "experiments", outside)
    assert run_probe(ws, "--job_id", "4") == EXIT_FAILED
    record = JobRecord(Workspace(ws), "4").read()
    assert record["status"] == "FAILED"
    assert f"{ws / 'experiments'} is a symbolic link" in record["job_data"]["completion_details"]
    assert snapshot(outside) == {"victim.txt": PRECIOUS}


# ---- job ids are owned -------------------------------------------------------------------------------------------
def test_a_finished_jobs_id_is_refused_and_its_record_kept(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert run_probe(ws, "--job_id", "5", "--steps", "2") == 0
    before = (ws / "jobs" / "5" / "index.json").read_text()
    assert run_probe(ws, "--job_id", "5", "--steps", "3") == EXIT_FAILED
    out = capsys.readouterr().out
    assert "ERROR: job_id='5' is taken: job 5 in" in out and "is COMPLETE" in out
    assert (ws / "jobs" / "5" / "index.json").read_text() == before


def test_a_running_jobs_id_is_refused_by_the_runner_and_by_a_direct_run(tmp_path, capsys):
    ws = Workspace(tmp_path / "ws")
    running = _record(ws, "6")
    running.update(status="RUNNING")
    before = running.path.read_text()
    with pytest.raises(JobIdTaken, match="job_id='6' is taken: job 6 in .* is RUNNING"):
        run_plugin(PROBE, {"job_id": "6", "required_note": "x"}, workspace=ws, show_progress=False)
    assert run_probe(ws.root, "--job_id", "6") == EXIT_FAILED
    assert "is RUNNING" in capsys.readouterr().out
    assert running.path.read_text() == before
    assert not (ws.job_dir("6") / "output_6.txt").exists()


def test_another_machine_of_a_multi_machine_run_joins_the_record_of_the_main_one(tmp_path):
    ws = Workspace(tmp_path / "ws")
    main = _record(ws, "7")
    main.update(status="RUNNING", pid=12345)  # the rank-0 machine's record, in a workspace the machines share
    machine = {"workspace": str(ws.root), "job_id": "7", "num_machines": "2", "machine_rank": "1"}
    backend, _ = _make_backend(machine, "trainer")
    assert backend.record.read()["job_data"]["pid"] == 12345  # joined, not rewritten
    with pytest.raises(JobIdTaken, match="is RUNNING"):  # the main machine's own id again is another job
        _make_backend({**machine, "machine_rank": "0"}, "trainer")
    main.update(status="COMPLETE")
    with pytest.raises(JobIdTaken, match="is COMPLETE"):  # a finished run is no run to join
        _make_backend(machine, "trainer")


def test_the_main_machine_takes_over_a_record_another_machine_made_first(tmp_path):
    """srun starts every machine at once: machine 1 may make the record before machine 0 claims the job."""
    ws = Workspace(tmp_path / "ws")
    machine = {"workspace": str(ws.root), "job_id": "9", "num_machines": "2", "main_process_ip": "h"}
    first, _ = _make_backend({**machine, "machine_rank": "1"}, "trainer")
    assert first.record.read()["job_data"]["joined"] is True
    main, _ = _make_backend({**machine, "machine_rank": "0"}, "trainer")
    assert "joined" not in main.record.read()["job_data"]
    with pytest.raises(JobIdTaken, match="is QUEUED"):  # now it is the main machine's: a second main is refused
        _make_backend({**machine, "machine_rank": "0"}, "trainer")


@pytest.mark.parametrize(
    "values, joins",
    [
        ({"num_machines": "2", "machine_rank": "1"}, True),
        ({"num_machines": 3, "machine_rank": 2}, True),
        ({"num_machines": "2", "machine_rank": "0"}, False),
        ({"num_machines": "1", "machine_rank": "1"}, False),
        ({}, False),
        ({"num_machines": "two", "machine_rank": "1"}, False),
    ],
)
def test_which_values_join_another_machines_job(values, joins):
    assert joins_other_machine(values) is joins


def test_the_runners_child_runs_the_job_the_runner_claimed(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    _record(ws, "8")
    monkeypatch.setenv("DLM_JOB_ID", "8")
    backend, _ = _make_backend({"workspace": str(ws.root), "job_id": "8"}, "trainer")
    assert backend.record.job_id == "8"


# ---- the workspace and the host's keys ---------------------------------------------------------------------------
def test_an_empty_workspace_is_refused_not_taken_for_the_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["stop", "1", "--workspace", ""]) == 2
    assert "error: the workspace '' names no folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ended:
        run_job(PROBE / "main.py", probe_work(), ["--workspace", " ", "--required_note", "x"])
    assert ended.value.code == EXIT_FAILED
    assert "ERROR: the workspace ' ' names no folder" in capsys.readouterr().out
    assert not (tmp_path / "workspace").exists()


def test_an_output_dir_outside_the_workspace_is_said(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    assert run_probe(tmp_path / "ws", "--output_dir", str(elsewhere), "--steps", "1") == 0
    out = capsys.readouterr().out
    assert f"WARNING: output_dir={elsewhere} is outside the workspace {tmp_path / 'ws'}" in out
    inside = tmp_path / "ws" / "mine"
    assert run_probe(tmp_path / "ws", "--output_dir", str(inside), "--steps", "1") == 0
    assert "WARNING: output_dir" not in capsys.readouterr().out


# ---- the lab backend ---------------------------------------------------------------------------------------------
@pytest.fixture
def lab_home(tmp_path, monkeypatch):
    pytest.importorskip("lab")
    monkeypatch.setenv("TFL_HOME_DIR", str(tmp_path))
    monkeypatch.setenv("TFL_WORKSPACE_DIR", str(tmp_path))
    monkeypatch.setenv("_TFL_EXPERIMENT_ID", "exp")
    return tmp_path


def test_a_task_id_naming_no_host_job_is_refused_and_no_record_made(lab_home, monkeypatch):
    from plugin_sdk.backends import lab as lab_backend

    monkeypatch.setenv("_TFL_JOB_ID", "no-such-job")
    with pytest.raises(PluginError, match="_TFL_JOB_ID='no-such-job' names no job of experiment 'exp'"):
        lab_backend._require_host_job()
    (lab_home / "experiments" / "exp" / "jobs" / "no-such-job").mkdir(parents=True)  # a folder, but no job in it
    with pytest.raises(PluginError, match="names no job"):
        lab_backend._require_host_job()
    assert list((lab_home / "experiments" / "exp" / "jobs").rglob("index.json")) == []


def test_an_unusable_lab_home_is_one_line(lab_home, monkeypatch):
    from lab import dirs

    from plugin_sdk.backends import lab as lab_backend

    async def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(lab_home / "experiments"))

    monkeypatch.setenv("_TFL_JOB_ID", "j")
    monkeypatch.setattr(dirs, "get_job_dir", denied)
    with pytest.raises(PluginError) as refused:
        lab_backend._require_host_job()
    message = str(refused.value)
    assert "\n" not in message
    assert f"cannot be used (Permission denied: {lab_home / 'experiments'})" in message
    failing = SimpleNamespace(init=lambda: (_ for _ in ()).throw(PermissionError(13, "Permission denied", "/x")))
    with pytest.raises(PluginError, match=r"cannot be used \(Permission denied: /x\)"):
        lab_backend.LabBackend(failing)


def test_records_outside_are_untouched_by_a_jobs_link_made_by_another_user(tmp_path, outside):
    """A job folder that is a link (made by someone else) is never a job this SDK writes into, even to settle it."""
    ws = Workspace(tmp_path / "ws")
    (outside / "index.json").write_text(json.dumps({"status": "RUNNING", "job_data": {"pid": os.getpid() + 10**6}}))
    _jobs_folder_link(ws, outside)
    assert cli(["stop", "3", "--workspace", str(ws.root)]) == 2
    assert json.loads((outside / "index.json").read_text())["status"] == "RUNNING"
