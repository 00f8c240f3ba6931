"""The plugin contract end to end: the probe plugin run through the local runner, as the host would run it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plugin_sdk.backends.local import JobRecord
from plugin_sdk.runner import request_stop, run_plugin
from plugin_sdk.workspace import Workspace

PROBE = Path(__file__).parents[1] / "fixtures" / "plugins" / "contract_probe"
REPO = Path(__file__).resolve().parents[2]


def record(ws: Workspace, job_id: str) -> dict:
    return JobRecord(ws, job_id).read()


def log_of(ws: Workspace, job_id: str) -> str:
    return (ws.job_dir(job_id) / f"output_{job_id}.txt").read_text()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


SLOW_STEPS = ["--set", "steps=200", "--set", "step_seconds=0.05", "--set", "required_note=x"]


def start_long_job(cmd: list[str], env: dict, ws: Workspace, job_id: str) -> subprocess.Popen:
    """Start a slow probe job and wait until it has made some progress."""
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while record(ws, job_id).get("progress", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    return process


def run(ws: Workspace, **values) -> tuple[int, str, dict]:
    values.setdefault("required_note", "hello")
    code, job_id = run_plugin(PROBE, values, workspace=ws, experiment="exp", show_progress=False)
    return code, job_id, record(ws, job_id)


@pytest.mark.slow
def test_success_with_string_parameters_dataset_templates_and_tracking(ws, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(5)) + "\n")
    code, job_id, rec = run(
        ws,
        steps="3",
        learning_rate="2e-05",
        ratio="0.75",
        flag="True",
        tags="a, b",
        mode="fancy",
        dataset=str(data),
        instruction_template="Q: {{ question }}",
        output_template="{{ answer }}",
        log_to_wandb="true",
        model_name="org/tiny",
        adaptor_name="my-adaptor",
    )
    assert code == 0, log_of(ws, job_id)
    data_ = rec["job_data"]
    assert rec["status"] == "COMPLETE" and rec["progress"] == 100
    assert data_["completion_status"] == "success"
    assert data_["completion_details"] == "probed 3 steps on 1 process(es)"
    assert data_["start_time"] and data_["end_time"]
    log = log_of(ws, job_id)
    params = json.loads(log.split("params ", 1)[1].splitlines()[0])
    assert params == {
        "steps": 3,
        "learning_rate": 2e-05,
        "ratio": 0.75,
        "flag": True,
        "tags": ["a", "b"],
        "mode": "fancy",
    }
    messages = json.loads(log.split("messages ", 1)[1].splitlines()[0])
    assert messages[-2:] == [{"role": "user", "content": "Q: q0"}, {"role": "assistant", "content": "a0"}]
    # the trainer input file is written exactly as the host writes it
    handed = json.loads(ws.input_file(job_id).read_text())
    assert handed["experiment"] == {"name": "exp"} and handed["config"]["steps"] == "3"
    # TensorBoard events readable, metrics.json with the latest value of each metric
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(data_["tensorboard_output_dir"])
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    output_dir = ws.trainer_output_dir("exp", "contract_probe")
    assert json.loads((output_dir / "metrics.json").read_text()) == pytest.approx(
        {"train/loss": 1 / 3, "train/lr": 2e-05}
    )
    # W&B offline run created and recorded
    assert data_["wandb_logging"] is True
    assert data_["wandb_run_url"].startswith("file://") and Path(data_["wandb_run_url"][7:]).is_dir()
    # adapter written where the host expects it
    assert json.loads((ws.adaptor_dir("org/tiny", "my-adaptor") / "adapter.json").read_text()) == {"steps": 3}


@pytest.mark.slow
def test_crash_marks_job_failed_with_the_reason(ws):
    code, job_id, rec = run(ws, steps="3", fail_at_step="2")
    assert code == 1
    assert rec["status"] == "FAILED"
    assert rec["job_data"]["completion_status"] == "failed"
    assert rec["job_data"]["completion_details"] == "RuntimeError: deliberate failure at step 2"
    assert "Traceback" in log_of(ws, job_id)


@pytest.mark.slow
def test_user_error_is_reported_without_traceback(ws):
    code, job_id, rec = run(ws, steps="3", user_error_at_step="1")
    assert code == 1 and rec["job_data"]["completion_status"] == "failed"
    assert rec["job_data"]["completion_details"] == "deliberate user error at step 1"
    assert "Traceback" not in log_of(ws, job_id)


def test_bad_parameters_list_every_field(ws):
    code, job_id, rec = run(ws, steps="many", ratio="0.3", mode="weird", required_note="")
    assert code == 1 and rec["job_data"]["completion_status"] == "failed"
    details = rec["job_data"]["completion_details"]
    for field, value in [("steps", "many"), ("ratio", "0.3"), ("mode", "weird"), ("required_note", "")]:
        assert field in details and repr(value) in details or f'"{value}"' in details


@pytest.mark.slow
def test_stop_mid_run_writes_checkpoint_and_ends_stopped(ws):
    job_id = ws.next_job_id()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "plugin_sdk",
        "run",
        str(PROBE),
        "--workspace",
        str(ws.root),
        "--experiment",
        "exp",
        *SLOW_STEPS,
        "--set",
        f"job_id={job_id}",
    ]
    process = start_long_job(cmd, env, ws, job_id)
    request_stop(ws, job_id)
    out, _ = process.communicate(timeout=60)
    rec = record(ws, job_id)
    assert rec["status"] == "STOPPED", out
    assert 0 < rec["progress"] < 100
    state = json.loads(
        (ws.trainer_output_dir("exp", "contract_probe") / f"checkpoints_job_{job_id}" / "state.json").read_text()
    )
    assert 0 < state["step"] < 200
    assert process.returncode == 3


@pytest.mark.slow
def test_sigterm_stops_the_job(ws):
    job_id = ws.next_job_id()
    env = {**os.environ, "DLM_WORKSPACE": str(ws.root), "DLM_BACKEND": "local"}
    cmd = [
        sys.executable,
        str(PROBE / "main.py"),
        *SLOW_STEPS,
        "--set",
        f"job_id={job_id}",
    ]
    process = start_long_job(cmd, env, ws, job_id)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert record(ws, job_id)["status"] == "STOPPED", out


@pytest.mark.slow
def test_two_process_cpu_run_really_syncs(ws):
    code, job_id, rec = run(ws, steps="2", num_processes="2", train_device="cpu")
    assert code == 0, log_of(ws, job_id)
    output_dir = ws.trainer_output_dir("exp", "contract_probe")
    ranks = [json.loads((output_dir / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks == [{"world": 2, "sum": 3.0}] * 2  # all_reduce of 1 + 2 over a real gloo group
    assert rec["job_data"]["completion_details"] == "probed 2 steps on 2 process(es)"


@pytest.mark.slow
def test_failed_worker_never_reports_success(ws):
    code, job_id, rec = run(ws, steps="2", num_processes="2", train_device="cpu", fail_at_step="1")
    assert code != 0
    assert rec["job_data"]["completion_status"] == "failed"


@pytest.mark.slow
def test_evaluator_gets_arguments_and_saves_results_in_host_formats(ws, tmp_path):
    import shutil

    plugin = tmp_path / "contract_probe"
    shutil.copytree(PROBE, plugin)
    manifest = json.loads((plugin / "index.json").read_text())
    (plugin / "index.json").write_text(json.dumps({**manifest, "type": "evaluator", "evalsType": "model"}))
    code, job_id = run_plugin(
        plugin,
        {"required_note": "n", "steps": "2", "tags": ["x", "y"]},
        workspace=ws,
        experiment="exp",
        show_progress=False,
    )
    rec = record(ws, job_id)
    assert code == 0, log_of(ws, job_id)
    assert not ws.input_file(job_id).exists()  # evaluators get --key value arguments, as from the host
    data = rec["job_data"]
    assert json.loads(data["score"]) == [{"type": "probe_score", "score": 0.5}]
    eval_dir = ws.eval_output_dir("exp", "contract_probe", job_id)
    assert Path(data["additional_output_path"]) == eval_dir / f"output_{job_id}.csv"
    assert Path(data["additional_output_path"]).read_text().splitlines()[0] == "test_case_id,metric_name,score"
    plot = json.loads(Path(data["plot_data_path"]).read_text())
    assert plot[0] == {"test_case_id": 0, "metric_name": "Probe Score", "score": 0.0}
