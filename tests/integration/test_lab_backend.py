"""The plugins as tasks of today's Transformer Lab: the `lab` backend of plugin_sdk, and the task.yaml files.

End-to-end runs are launched the way the host launches a task: a temporary workspace (`TFL_HOME_DIR`,
`TFL_WORKSPACE_DIR`), the job created with `lab`'s own API and its parameters in `job_data.parameters`, the plugin
folder copied into the run's working folder, and the task's `run` line under the real `tfl-remote-trap` wrapper
(transformerlab==0.1.46, a pinned test dependency) with `_TFL_JOB_ID` / `_TFL_EXPERIMENT_ID` set.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from plugin_sdk.backends import lab as lab_backend
from plugin_sdk.errors import PluginError
from plugin_sdk.manifest import load_manifest
from plugin_sdk.params import coerce_and_validate

REPO = Path(__file__).resolve().parents[2]
PLUGIN_IDS = ("diffusion_llm_trainer", "diffusion_dpo_trainer", "diffusion_grpo_trainer", "diffusion_evaluator")
# Parameters a task carries beyond the plugin's own: what the plugin-era host filled in from its model picker.
HOST_KEYS = {
    "diffusion_llm_trainer": {"model_name": ""},
    "diffusion_dpo_trainer": {"model_name": ""},
    "diffusion_grpo_trainer": {"model_name": ""},
    "diffusion_evaluator": {"model_name": "", "model_adapter": ""},
}
WRAPPER = Path(sys.executable).with_name("tfl-remote-trap")
EXPERIMENT = "exp"


def task_yaml(plugin_id: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "plugins" / plugin_id / "task.yaml").read_text())


# ---- task.yaml ---------------------------------------------------------------------------------------------------
# The host's task.yaml schema, copied from transformerlab-app api/transformerlab/schemas/task.py (TaskYamlResources,
# TaskYamlSweeps, TaskYamlSpec) at commit db4ce30840db7ccbf52d637b15769d454d22cf15: the app is not a package we can
# install. test_task_yaml_passes_the_apps_own_schema checks against the original when TLAB_APP_DIR names a checkout.
class TaskYamlResources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    compute_provider: str | None = None
    cpus: Any | None = None
    memory: Any | None = None
    disk_space: Any | None = None
    accelerators: str | None = None
    num_nodes: int | None = None
    fleet_name: str | None = None
    instance_type: str | None = None
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    use_spot: bool | None = None
    image_id: str | None = None


class TaskYamlSweeps(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sweep_config: dict[str, Any] | None = None
    sweep_metric: str | None = None
    lower_is_better: bool | None = None


class TaskYamlSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    resources: TaskYamlResources | None = None
    envs: dict[str, Any] | None = None
    setup: str | None = None
    run: str
    github_repo_url: str | None = None
    github_repo_dir: str | None = None
    github_repo_branch: str | None = None
    parameters: dict[str, Any] | None = None
    sweeps: TaskYamlSweeps | None = None
    minutes_requested: int | None = None


@pytest.mark.parametrize("plugin_id", PLUGIN_IDS)
def test_task_yaml_passes_the_hosts_schema(plugin_id):
    spec = TaskYamlSpec.model_validate(task_yaml(plugin_id))
    assert spec.run == f'exec python "$([ -f main.py ] || echo {plugin_id}/)main.py"'
    assert (REPO / "plugins" / plugin_id / "main.py").is_file()


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda t: t.update(plugin="x"), "plugin"),  # unknown keys are refused
        (lambda t: t.pop("run"), "run"),
        (lambda t: t["resources"].update(gpus=1), "gpus"),
        (lambda t: t.update(parameters=["not", "a", "dict"]), "parameters"),
    ],
)
def test_the_schema_copy_refuses_what_the_host_refuses(change, complaint):
    document = task_yaml("diffusion_llm_trainer")
    change(document)
    with pytest.raises(ValidationError, match=complaint):
        TaskYamlSpec.model_validate(document)


def test_task_yaml_passes_the_apps_own_schema():
    app = os.environ.get("TLAB_APP_DIR")
    source = Path(app or ".") / "api" / "transformerlab" / "schemas" / "task.py"
    if not app or not source.is_file():
        pytest.skip("TLAB_APP_DIR does not name a transformerlab-app checkout")
    spec = importlib.util.spec_from_file_location("tlab_task_schema", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for plugin_id in PLUGIN_IDS:
        module.TaskYamlSpec.model_validate(task_yaml(plugin_id))


@pytest.mark.parametrize("plugin_id", PLUGIN_IDS)
def test_task_parameters_are_the_plugins_defaults(plugin_id):
    """task.yaml declares the model first, then every parameter of index.json, typed; read by the lab backend as
    the host passes them when the modal sends nothing, they are index.json's defaults."""
    manifest = load_manifest(REPO / "plugins" / plugin_id)
    defaults = {key: prop["default"] for key, prop in manifest["parameters"].items()}
    declared = task_yaml(plugin_id)["parameters"]
    assert list(declared)[: len(HOST_KEYS[plugin_id])] == list(HOST_KEYS[plugin_id])
    assert set(declared) == {*HOST_KEYS[plugin_id], *defaults}, (
        f"plugins/{plugin_id}/task.yaml parameters drifted from index.json: run python -m plugin_sdk forms"
    )
    assert all({"type", "title", "default", "description"} <= set(entry) for entry in declared.values())
    read = coerce_and_validate(lab_backend.task_values(declared), manifest["parameters"])  # all valid as they stand
    assert {key: read[key] for key in defaults} == defaults
    assert {key: read[key] for key in HOST_KEYS[plugin_id]} == HOST_KEYS[plugin_id]


def test_task_setup_installs_the_project_named_by_dlm_source(tmp_path):
    """`setup` runs `uv pip install <DLM_SOURCE>` (a stand-in `uv` records its arguments); without DLM_SOURCE it
    says what to set and fails."""
    setup = task_yaml("diffusion_llm_trainer")["setup"]
    (tmp_path / "uv").write_text('#!/bin/sh\necho "uv $*" > "$(dirname "$0")/called"\n')
    (tmp_path / "uv").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", setup], env={**env, "DLM_SOURCE": str(REPO)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "called").read_text().split() == ["uv", "pip", "install", str(REPO)]
    (tmp_path / "called").unlink()
    done = subprocess.run(["bash", "-c", setup], env={**env, "DLM_SOURCE": ""}, capture_output=True, text=True)
    assert done.returncode != 0 and "set DLM_SOURCE to this project" in done.stderr
    assert not (tmp_path / "called").exists()


# ---- the backend's choices, without a job ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, False), ({"_TFL_JOB_ID": "abc"}, True), ({"_TFL_JOB_ID": "abc", "DLM_BACKEND": "local"}, False)],
)
def test_a_task_is_recognised_by_its_job_id(monkeypatch, env, expected):
    monkeypatch.delenv("_TFL_JOB_ID", raising=False)
    monkeypatch.delenv("DLM_BACKEND", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert lab_backend.running_as_task() is expected


def test_lab_missing_or_too_old_names_the_version_needed(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(PluginError, match=r"transformerlab package .* not installed.*transformerlab>=0\.1\.6"):
        lab_backend.import_lab()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.1.5")
    with pytest.raises(PluginError, match=r"transformerlab 0\.1\.5 is too old: tasks need transformerlab>=0\.1\.6"):
        lab_backend.import_lab()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.1.6")
    assert lab_backend.import_lab().__class__.__name__ == "Lab"


def test_a_task_without_lab_fails_with_the_version_needed(tmp_path):
    """`_TFL_JOB_ID` set but no `lab` to import: the job cannot be recorded, so the log and the exit code say it."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.metadata as m\n_real = m.version\n"
        "def version(name):\n"
        "    if name == 'transformerlab':\n        raise m.PackageNotFoundError(name)\n"
        "    return _real(name)\n"
        "m.version = version\n"
    )
    env = {**os.environ, "_TFL_JOB_ID": "0b1c", "PYTHONPATH": f"{hide}{os.pathsep}{REPO}"}
    env.pop("DLM_BACKEND", None)
    main = REPO / "plugins" / "diffusion_llm_trainer" / "main.py"
    done = subprocess.run([sys.executable, str(main)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "ERROR: _TFL_JOB_ID is set" in done.stdout and "install transformerlab>=0.1.6" in done.stdout


def test_score_goes_to_lab_as_a_dict():
    assert lab_backend.score_dict('[{"type": "perplexity", "score": 3.5}, {"type": "bleu", "score": 0.25}]') == {
        "perplexity": 3.5,
        "bleu": 0.25,
    }
    assert lab_backend.score_dict({"accuracy": 1.0}) == {"accuracy": 1.0}


# ---- jobs launched as the host launches a task -------------------------------------------------------------------
def create_job(env: dict, parameters: dict, **job_data: Any) -> str:
    """What the host does on launch: a job (UUID) in the experiment, the run-time parameters in job_data."""
    script = (
        "import asyncio, json, sys\nfrom lab import Experiment\n"
        "async def main(parameters, extra):\n"
        "    experiment = await Experiment.create_or_get(sys.argv[1], create_new=True)\n"
        "    job = await experiment.create_job()\n"
        "    await job.update_job_data_fields({'parameters': parameters, **extra})\n"
        "    print(job.id)\n"
        "asyncio.run(main(json.loads(sys.argv[2]), json.loads(sys.argv[3])))\n"
    )
    args = [sys.executable, "-c", script, EXPERIMENT, json.dumps(parameters), json.dumps(job_data)]
    return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout.split()[-1]


def job_dir(workspace: Path, job_id: str) -> Path:
    return workspace / "experiments" / EXPERIMENT / "jobs" / job_id


def read_job(workspace: Path, job_id: str) -> dict:
    """The job record; `lab` rewrites it in place, so a read racing a write may see it half-written: read again."""
    for _ in range(50):
        try:
            return json.loads((job_dir(workspace, job_id) / "index.json").read_text())
        except json.JSONDecodeError:
            time.sleep(0.02)
    raise AssertionError(f"the record of job {job_id} stays unreadable")


def start_task(env: dict, tmp_path: Path, plugin_id: str, job_id: str) -> subprocess.Popen:
    """The task's files in a fresh working folder, its `run` line under tfl-remote-trap."""
    run_dir = tmp_path / f"run-{job_id}"
    shutil.copytree(REPO / "plugins" / plugin_id, run_dir / plugin_id)
    task_env = {**env, "_TFL_JOB_ID": job_id, "_TFL_EXPERIMENT_ID": EXPERIMENT}
    return subprocess.Popen(
        [str(WRAPPER), "--", task_yaml(plugin_id)["run"]],
        cwd=run_dir,
        env=task_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_task(env: dict, tmp_path: Path, plugin_id: str, job_id: str) -> tuple[int, str]:
    process = start_task(env, tmp_path, plugin_id, job_id)
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def stop_like_the_host(env: dict, job_id: str, process: subprocess.Popen) -> None:
    """transformerlab-app: job_service.job_stop sets job_data.stop and status STOPPING; the local provider then
    SIGTERMs the process tree and SIGKILLs what is left 3 s later (process_registry._terminate_process_tree).
    The two writes are half a second apart here (a slow host): a job that ended between them would lose its end."""
    script = (
        "import asyncio, sys, time\nfrom lab import Job\n"
        "async def main():\n"
        "    job = await Job.get(sys.argv[1], sys.argv[2])\n"
        "    await job.update_job_data_field('stop', True)\n"
        "    time.sleep(0.5)\n"
        "    await job.update_status('STOPPING')\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script, job_id, EXPERIMENT], env=env, check=True)
    parent = psutil.Process(process.pid)
    tree = [parent, *parent.children(recursive=True)]
    for proc in tree:
        proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=3)
    for proc in alive:
        proc.kill()


def write_chat_data(path: Path, n: int = 24) -> str:
    path.write_text(
        "".join(json.dumps({"instruction": f"What is {i} + {i}?", "output": f"{2 * i}"}) + "\n" for i in range(n))
    )
    return str(path)


def trainer_parameters(tmp_path: Path, **values: Any) -> dict:
    """Typed values, as task.yaml gives them, and strings, as the launch form gives them."""
    return {
        "model_name": "tiny-llada",
        "dataset": write_chat_data(tmp_path / "data.jsonl"),
        "train_device": "cpu",
        "batch_size": 2,
        "num_train_epochs": "0",
        "max_length": 64,
        "learning_rate": "0.001",
        "learning_rate_schedule": "constant",
        "warmup_ratio": "0",
        "logging_steps": 1,
        "dtype": "float32",
        **values,
    }


def logged_losses(output: str) -> dict[int, float]:
    return {int(step): float(loss) for step, loss in re.findall(r"step (\d+)(?:/\d+)?: train/loss=(\S+)", output)}


def metric_rows(workspace: Path, job_id: str) -> list[dict]:
    """The rows of metrics.jsonl that carry a step; while the job runs, its last line may be half-written."""
    lines = (job_dir(workspace, job_id) / "metrics.jsonl").read_text().split("\n")
    return [row for row in map(json.loads, lines[:-1]) if "step" in row]


def test_a_wrong_type_parameter_fails_the_task_with_field_value_and_rule(host, tmp_path):
    env, workspace = host
    job_id = create_job(env, {"model_name": "tiny-llada", "batch_size": "four", "lora": "maybe"})
    code, output = run_task(env, tmp_path, "diffusion_llm_trainer", job_id)
    job = read_job(workspace, job_id)
    assert code != 0, output
    assert job["status"] == "FAILED", output
    details = job["job_data"]["completion_details"]
    assert job["job_data"]["completion_status"] == "failed"
    assert "batch_size" in details and "'four'" in details and "integer" in details, details
    assert "lora" in details and "'maybe'" in details and "true or false" in details, details
    assert job["job_data"]["live_status"] == "Remote command crashed"
    assert not list(job_dir(workspace, job_id).glob("checkpoints/*")), "nothing may be written for a refused job"


@pytest.mark.slow
def test_trainer_task_succeeds_with_outputs_and_metrics(host, tmp_path):
    env, workspace = host
    job_id = create_job(env, trainer_parameters(tmp_path, train_steps=3, save_full_model=True))
    code, output = run_task(env, tmp_path, "diffusion_llm_trainer", job_id)
    job = read_job(workspace, job_id)
    data = job["job_data"]
    assert code == 0, output
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", job_id)
    assert job["status"] == "COMPLETE" and job["progress"] == 100, output
    assert data["completion_status"] == "success" and "for 3 steps" in data["completion_details"]
    assert data["live_status"] == "Remote command finished"
    # the adapter as an artifact, the merged model as a model of the job
    (adapter,) = data["artifacts"]
    assert Path(adapter).name == "diffusion_adaptor" and (Path(adapter) / "adapter_config.json").is_file()
    (model,) = data["models"]
    assert (Path(model) / "model.safetensors").is_file() and (Path(model) / "config.json").is_file()
    assert Path(model).parent == job_dir(workspace, job_id) / "models"
    assert not (job_dir(workspace, job_id) / "staging" / "models").exists() or not any(
        (job_dir(workspace, job_id) / "staging" / "models").iterdir()
    ), "the staged model is handed over, not kept twice"
    # every logged loss reached lab by value, at its step; the score is the last of them
    losses = logged_losses(output)
    assert sorted(losses) == [1, 2, 3], output
    rows = {row["step"]: row["metrics"] for row in metric_rows(workspace, job_id) if "train/loss" in row["metrics"]}
    assert {step: pytest.approx(m["train/loss"], rel=1e-5) for step, m in rows.items()} == losses
    assert data["score"]["train/loss"] == pytest.approx(losses[3], rel=1e-5)
    # checkpoints in the job's own folder, recorded as lab records them
    assert Path(data["latest_checkpoint"]) == job_dir(workspace, job_id) / "checkpoints" / "checkpoint-3"
    assert (Path(data["latest_checkpoint"]) / "trainer_state.json").is_file()


@pytest.mark.slow
def test_trainer_task_failure_says_why(host, tmp_path):
    env, workspace = host
    missing = tmp_path / "nowhere.jsonl"
    job_id = create_job(env, trainer_parameters(tmp_path, dataset=str(missing), train_steps=2))
    code, output = run_task(env, tmp_path, "diffusion_llm_trainer", job_id)
    job = read_job(workspace, job_id)
    assert code == 1, output
    assert job["status"] == "FAILED" and job["job_data"]["completion_status"] == "failed", output
    assert str(missing) in job["job_data"]["completion_details"], job["job_data"]["completion_details"]
    assert job["job_data"]["live_status"] == "Remote command crashed"


@pytest.mark.slow
def test_trainer_task_stops_with_a_checkpoint_and_a_new_job_resumes_it(host, tmp_path):
    env, workspace = host
    first = create_job(env, trainer_parameters(tmp_path, train_steps=400, save_steps=4))
    process = start_task(env, tmp_path, "diffusion_llm_trainer", first)
    deadline = time.monotonic() + 300
    metrics = job_dir(workspace, first) / "metrics.jsonl"
    while not (metrics.is_file() and any(row["step"] >= 5 for row in metric_rows(workspace, first))):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    stop_like_the_host(env, first, process)
    output, _ = process.communicate(timeout=60)
    job = read_job(workspace, first)
    assert process.returncode == 0, output
    assert job["status"] == "STOPPED", (output, job)
    assert job["job_data"]["completion_details"].startswith("Stopped by user"), job["job_data"]
    assert job["job_data"]["live_status"] == "Remote command finished"
    assert "artifacts" not in job["job_data"] and "models" not in job["job_data"], "a stopped job publishes nothing"
    checkpoint = Path(job["job_data"]["latest_checkpoint"])
    assert (checkpoint / "trainer_state.json").is_file()
    stopped_at = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    assert checkpoint.name == f"checkpoint-{stopped_at}" and 4 <= stopped_at < 400  # the periodic one at worst
    at_boundary = re.search(r"Job stopped: stopped at step (\d+)", output)
    if at_boundary:  # the step in progress ended within the grace: its own checkpoint
        assert stopped_at == int(at_boundary.group(1)), output

    # the host's resume: a new job naming the parent job and its checkpoint
    second = create_job(
        env,
        trainer_parameters(tmp_path, train_steps=stopped_at + 2, save_steps=4),
        parent_job_id=first,
        resumed_from_checkpoint=checkpoint.name,
    )
    code, output = run_task(env, tmp_path, "diffusion_llm_trainer", second)
    job = read_job(workspace, second)
    assert code == 0 and job["status"] == "COMPLETE", output
    assert f"resuming from {checkpoint}" in output
    assert f"for {stopped_at + 2} steps" in job["job_data"]["completion_details"]
    assert sorted(logged_losses(output)) == [stopped_at + 1, stopped_at + 2], output


@pytest.mark.slow
def test_grpo_task_trains_prompt_answer_rows_with_the_default_reward(host, tmp_path):
    env, workspace = host
    data = tmp_path / "sums.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(4))
    )
    parameters = {
        **trainer_parameters(tmp_path, dataset=str(data), train_steps=2),
        **{"num_generations": 2, "max_prompt_length": 32, "max_completion_length": 8, "steps": 8, "block_length": 8},
    }
    job_id = create_job(env, parameters)
    code, output = run_task(env, tmp_path, "diffusion_grpo_trainer", job_id)
    job = read_job(workspace, job_id)
    assert code == 0, output
    assert job["status"] == "COMPLETE" and "GRPO-trained" in job["job_data"]["completion_details"], output
    rows = [row["metrics"] for row in metric_rows(workspace, job_id)]
    assert any({"train/reward", "train/rewards/answer_match", "train/kl"} <= set(m) for m in rows), rows


@pytest.mark.slow
def test_evaluator_task_reports_its_score_and_table(host, tmp_path):
    env, workspace = host
    data = tmp_path / "qa.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(3))
    )
    parameters = {
        **task_yaml("diffusion_evaluator")["parameters"],
        "model_name": "tiny-llada",
        "dataset": str(data),
        "metrics": "perplexity,task_accuracy",
        "mc_num": 4,
        "steps": 8,
        "max_new_tokens": 8,
        "block_length": 8,
        "answer_extraction": "first_number",
    }
    job_id = create_job(env, parameters)
    code, output = run_task(env, tmp_path, "diffusion_evaluator", job_id)
    job = read_job(workspace, job_id)
    data = job["job_data"]
    assert code == 0 and job["status"] == "COMPLETE", output
    score = data["score"]
    assert {"perplexity", "task_accuracy"} <= set(score)
    (table,) = data["eval_results"]
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"input", "output", "expected_output", "score"} <= set(rows[0])
    # the score the host ranks on is the model's metric rows of the table, by value
    for metric in ("perplexity", "task_accuracy"):
        (row,) = [r for r in rows if r["metric_name"] == metric and r["test_case_id"] == "tiny-llada"]
        assert float(row["score"]) == pytest.approx(score[metric])
    answers = [r for r in rows if r["metric_name"] == "answer_correct"]
    assert [r["expected_output"] for r in answers] == ["0", "2", "4"]
    assert score["task_accuracy"] == pytest.approx(sum(float(r["score"]) for r in answers) / 3)
    assert (Path(data["artifacts"][0]) / "results.json").is_file()


def lab_initialized(data: dict) -> bool:  # lab.init() has attached to the job; parameters not yet checked
    return data.get("live_status") == "Lab initialized"


def parameters_accepted(data: dict) -> bool:  # the job's work (data, model loading) begins
    return "config" in data


@pytest.mark.slow
@pytest.mark.parametrize("moment", [lab_initialized, parameters_accepted])
def test_a_stop_while_the_job_starts_ends_stopped_with_nothing_half_written(host, tmp_path, moment):
    env, workspace = host
    job_id = create_job(env, trainer_parameters(tmp_path, train_steps=400, save_full_model=True))
    process = start_task(env, tmp_path, "diffusion_llm_trainer", job_id)
    deadline = time.monotonic() + 300
    while not moment(read_job(workspace, job_id).get("job_data", {})):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.02)
    stop_like_the_host(env, job_id, process)
    output, _ = process.communicate(timeout=60)
    job = read_job(workspace, job_id)
    assert process.returncode == 0 and job["status"] == "STOPPED", output
    assert "artifacts" not in job["job_data"] and "models" not in job["job_data"], job["job_data"]
    staged = job_dir(workspace, job_id) / "staging"
    assert not list(staged.glob("models/*")) and not list(staged.glob("adaptors/*"))
    for folder in job_dir(workspace, job_id).glob("checkpoints/checkpoint-*"):  # at most the first step's, complete
        assert (folder / "trainer_state.json").is_file(), f"{folder} is half-written"
    assert len(logged_losses(output)) <= 1, output


class FakeLab:
    """The few `lab` facade calls the backend makes, recorded."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir, self.calls = job_dir, []
        self.job = type("FakeJob", (), {"id": "5f0c", "update_status": self._update_status})()
        self.experiment = type("FakeExperiment", (), {"id": EXPERIMENT})()

    async def _update_status(self, status):
        self.calls.append(("update_status", status))

    def init(self):
        self.calls.append(("init",))

    def get_checkpoints_dir(self):
        (self.job_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        return str(self.job_dir / "checkpoints")

    def __getattr__(self, name):  # set_job_data_field, capture_wandb_url, finish, error, update_progress, ...
        return lambda *args, **kwargs: self.calls.append((name, *args, *sorted(kwargs.items())))


@pytest.fixture
def fake_lab(tmp_path, monkeypatch):
    monkeypatch.setenv("TFL_HOME_DIR", str(tmp_path))
    monkeypatch.setenv("TFL_WORKSPACE_DIR", str(tmp_path))
    fake = FakeLab(tmp_path / "jobs" / "5f0c")
    return fake, lab_backend.LabBackend(fake)


def test_job_data_and_endings_map_onto_labs_calls(fake_lab):
    fake, backend = fake_lab
    backend.set_data("wandb_run_url", "https://wandb.ai/x/y/runs/z")
    backend.set_data("tensorboard_output_dir", "/tb")
    backend.set_data("score", json.dumps([{"type": "perplexity", "score": 3.5}]))
    backend.set_data("completion_details", "evaluated")
    backend.set_status("RUNNING")  # lab.init did: nothing written
    backend.set_status("COMPLETE")
    assert fake.calls == [
        ("init",),
        ("capture_wandb_url", "https://wandb.ai/x/y/runs/z"),
        ("set_job_data_field", "tensorboard_output_dir", "/tb"),
        ("set_job_data_field", "completion_details", "evaluated"),
        ("finish", "evaluated", ("score", {"perplexity": 3.5})),
    ]


def test_progress_metrics_and_a_failure_map_onto_labs_calls(fake_lab):
    fake, backend = fake_lab
    backend.set_progress(40)
    backend.log_metrics({"train/loss": 2.0, "train/lr": 0.1}, step=4)
    backend.log_metrics({"train/epoch": 1.0}, step=4)  # a row with some metrics keeps the others current
    backend.set_data("completion_details", "dataset not found")
    backend.set_status("FAILED")
    assert fake.calls[1:] == [
        ("update_progress", 40),
        ("update_progress", 40, ("metrics", {"train/loss": 2.0, "train/lr": 0.1}), ("step", 4)),
        ("update_progress", 40, ("metrics", {"train/loss": 2.0, "train/lr": 0.1, "train/epoch": 1.0}), ("step", 4)),
        ("set_job_data_field", "completion_details", "dataset not found"),
        ("error", "dataset not found"),
    ]
