"""Our plugins under the real Transformer Lab host harness (`plugin_harness.py` + its SDK).

Needs a local copy of the host's plugin SDK folder (the one holding `plugin_harness.py`), named by
`TLAB_SDK_DIR`, and the host's `lab` package (`pip install --no-deps transformerlab==0.1.1 aiofiles`), importable
directly or from `TLAB_PYTHONPATH`. Skips cleanly without them.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from plugin_sdk.manifest import DISPATCHED_TRAIN_TYPES

PROBE = Path(__file__).parents[1] / "fixtures" / "plugins" / "contract_probe"
REPO = Path(__file__).resolve().parents[2]
TRAINER = REPO / "plugins" / "diffusion_llm_trainer"
SDK_DIR = os.environ.get("TLAB_SDK_DIR")

pytestmark = pytest.mark.skipif(
    not SDK_DIR or not (Path(SDK_DIR) / "plugin_harness.py").is_file(),
    reason="TLAB_SDK_DIR does not name a folder with the host's plugin_harness.py",
)


@pytest.fixture
def host(tmp_path):
    home, workspace = tmp_path / "home", tmp_path / "home" / "workspace"
    workspace.mkdir(parents=True)
    path = os.pathsep.join(p for p in (os.environ.get("TLAB_PYTHONPATH"), str(REPO)) if p)
    env = {**os.environ, "TFL_HOME_DIR": str(home), "TFL_WORKSPACE_DIR": str(workspace), "PYTHONPATH": path}
    env.pop("DLM_BACKEND", None)
    probe = subprocess.run([sys.executable, "-c", "import lab"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the host's lab package is not importable: {probe.stderr.strip().splitlines()[-1]}")
    return env, workspace


def ui_job_type(plugin: Path) -> str:
    """The job type the training form gives a job (TrainingModalLoRA.tsx): index.json's train_type, else "LoRA"."""
    return json.loads((plugin / "index.json").read_text()).get("train_type") or "LoRA"


def start_trainer(env, workspace: Path, job_id: str, config: dict, plugin: Path = PROBE) -> subprocess.Popen:
    """What the host does: create the job, write the input file, start the harness, for the job types its
    dispatch (shared.py run_job) starts."""
    job_type = ui_job_type(plugin)
    if job_type not in DISPATCHED_TRAIN_TYPES:
        pytest.fail(
            f'the host never starts a {job_type!r} job: it prints "I don\'t know what to do with this job type"'
        )
    create = f"import asyncio; from lab import Job; asyncio.run(Job.create({job_id!r}))"
    subprocess.run([sys.executable, "-c", create], env=env, check=True)
    input_file = workspace / "temp" / f"plugin_input_{job_id}.json"
    input_file.parent.mkdir(exist_ok=True)
    output_dir = workspace / "experiments" / "exp" / "tensorboards" / "probe"
    output_dir.mkdir(parents=True)
    config = {
        "job_id": job_id,
        "template_name": "probe",
        "model_name": "org/tiny",
        "type": job_type,
        "output_dir": str(output_dir),
        "adaptor_output_dir": str(workspace / "adaptors" / "org_tiny" / "probe"),
        **config,
    }
    input_file.write_text(json.dumps({"experiment": {"name": "exp"}, "config": config}))
    cmd = [
        sys.executable,
        str(Path(SDK_DIR) / "plugin_harness.py"),
        "--plugin_dir",
        str(plugin),
        "--input_file",
        str(input_file),
        "--experiment_name",
        "exp",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_record(workspace: Path, job_id: str) -> dict:
    return json.loads((workspace / "jobs" / job_id / "index.json").read_text())


def launch_trainer(env, workspace: Path, job_id: str, config: dict, plugin: Path = PROBE) -> tuple[Any, dict]:
    process = start_trainer(env, workspace, job_id, config, plugin)
    stdout, _ = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, ""), read_record(workspace, job_id)


def test_success_under_the_host(host):
    env, workspace = host
    done, record = launch_trainer(
        env, workspace, "7", {"steps": "3", "flag": "True", "tags": "a,b", "required_note": "x"}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert record["progress"] == 100
    assert record["job_data"]["completion_status"] == "success"
    assert record["job_data"]["completion_details"] == "probed 3 steps on 1 process(es)"
    output_dir = workspace / "experiments" / "exp" / "tensorboards" / "probe"
    assert json.loads((output_dir / "metrics.json").read_text())["train/loss"] == pytest.approx(1 / 3)
    assert (workspace / "adaptors" / "org_tiny" / "probe" / "adapter.json").is_file()
    assert 'params {"steps": 3' in done.stdout and '"flag": true' in done.stdout


def test_failure_under_the_host(host):
    env, workspace = host
    done, record = launch_trainer(env, workspace, "8", {"steps": "3", "fail_at_step": "2", "required_note": "x"})
    assert done.returncode == 1
    assert record["job_data"]["completion_status"] == "failed"
    assert record["job_data"]["completion_details"] == "RuntimeError: deliberate failure at step 2"


def test_bad_parameters_under_the_host(host):
    env, workspace = host
    done, record = launch_trainer(env, workspace, "9", {"steps": "0"})
    assert done.returncode == 1
    details = record["job_data"]["completion_details"]
    assert "steps" in details and "required_note" in details


# ---- the diffusion trainer itself --------------------------------------------------------------------------------
def write_chat_data(path: Path, n: int = 24) -> str:
    path.write_text(
        "".join(json.dumps({"instruction": f"What is {i} + {i}?", "output": f"{2 * i}"}) + "\n" for i in range(n))
    )
    return str(path)


def trainer_config(tmp_path: Path, **values: str) -> dict:
    return {
        "model_name": "tiny-llada",
        "dataset": write_chat_data(tmp_path / "data.jsonl"),
        "train_device": "cpu",
        "batch_size": "2",
        "num_train_epochs": "0",
        "max_length": "64",
        "learning_rate": "0.001",
        "logging_steps": "1",
        "lora": "True",
        "dtype": "float32",
        **values,
    }


def test_diffusion_trainer_under_the_host(host, tmp_path):
    env, workspace = host
    done, record = launch_trainer(env, workspace, "21", trainer_config(tmp_path, train_steps="3"), TRAINER)
    assert done.returncode == 0, done.stdout
    assert record["status"] == "COMPLETE" and record["progress"] == 100, done.stdout
    assert record["job_data"]["completion_status"] == "success"
    assert "for 3 steps" in record["job_data"]["completion_details"]
    adaptor = workspace / "adaptors" / "org_tiny" / "probe"
    assert (adaptor / "adapter_config.json").is_file() and (adaptor / "adapter_model.safetensors").is_file()
    output_dir = workspace / "experiments" / "exp" / "tensorboards" / "probe"
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert {"train/loss", "train/accuracy", "train/lr", "train/grad_norm"} <= set(metrics)


def test_diffusion_trainer_stops_under_the_host(host, tmp_path):
    env, workspace = host
    process = start_trainer(env, workspace, "22", trainer_config(tmp_path, train_steps="400"), TRAINER)
    deadline = time.monotonic() + 240
    while read_record(workspace, "22").get("progress", 0) < 10:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.5)
    stop = "import asyncio; from lab import Job; asyncio.run(Job('22').update_job_data_field('stop', True))"
    subprocess.run([sys.executable, "-c", stop], env=env, check=True)
    stdout, _ = process.communicate(timeout=240)
    record = read_record(workspace, "22")
    assert process.returncode == 3, stdout
    assert record["status"] == "STOPPED", stdout
    assert "resume with resume_from_checkpoint=latest" in record["job_data"]["completion_details"]
    assert not (workspace / "adaptors" / "org_tiny" / "probe" / "adapter_config.json").exists()
    assert list(workspace.rglob("checkpoint-*/trainer_state.json")), "the stop must leave a resumable checkpoint"


# ---- the evaluator -----------------------------------------------------------------------------------------------
EVALUATOR = REPO / "plugins" / "diffusion_evaluator"


def test_diffusion_evaluator_under_the_host(host, tmp_path):
    env, workspace = host
    subprocess.run(
        [sys.executable, "-c", "import asyncio; from lab import Job; asyncio.run(Job.create('31'))"],
        env=env,
        check=True,
    )
    data = tmp_path / "qa.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(3))
    )
    arguments = {
        "job_id": "31",
        "experiment_name": "exp",
        "eval_name": "ev",
        "model_name": "tiny-llada",
        "dataset": str(data),
        "metrics": "perplexity,task_accuracy",
        "mc_num": "4",
        "steps": "8",
        "max_new_tokens": "8",
        "block_length": "8",
        "answer_extraction": "first_number",
    }
    command = [sys.executable, str(Path(SDK_DIR) / "plugin_harness.py"), "--plugin_dir", str(EVALUATOR)]
    for key, value in arguments.items():
        command += [f"--{key}", value]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    record = read_record(workspace, "31")
    assert done.returncode == 0, done.stdout + done.stderr
    assert record["status"] == "COMPLETE" and record["job_data"]["completion_status"] == "success", done.stdout
    score = json.loads(record["job_data"]["score"])
    assert {entry["type"] for entry in score} >= {"perplexity", "task_accuracy"}
    csv_file = Path(record["job_data"]["additional_output_path"])
    assert csv_file.is_file() and "test_case_id" in csv_file.read_text().splitlines()[0]
    results = json.loads((csv_file.parent / "results.json").read_text())
    assert results["models"][0]["metrics"]


# ---- the DPO trainer ---------------------------------------------------------------------------------------------
DPO = REPO / "plugins" / "diffusion_dpo_trainer"


def test_diffusion_dpo_trainer_under_the_host(host, tmp_path):
    env, workspace = host
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": f"Say {i}", "chosen": f"{i}.", "rejected": f"{i + 1}."}) + "\n" for i in range(8))
    )
    config = {
        "model_name": "tiny-llada",
        "dataset": str(pairs),
        "train_device": "cpu",
        "num_train_epochs": "0",
        "train_steps": "2",
        "batch_size": "2",
        "max_length": "48",
        "diffusion_samples": "2",  # the name users know from other diffusion DPO trainers
        "learning_rate": "0.001",
        "warmup_steps": "0",
        "logging_steps": "1",
        "dtype": "float32",
    }
    done, record = launch_trainer(env, workspace, "41", config, DPO)
    assert done.returncode == 0, done.stdout
    assert record["status"] == "COMPLETE" and record["job_data"]["completion_status"] == "success", done.stdout
    assert record["job_data"]["config"]["mc_samples"] == 2
    assert (workspace / "adaptors" / "org_tiny" / "probe" / "adapter_model.safetensors").is_file()
    metrics = json.loads((workspace / "experiments" / "exp" / "tensorboards" / "probe" / "metrics.json").read_text())
    assert {"train/rewards/accuracies", "train/rewards/margins", "train/logps/chosen", "val/rewards/accuracies"} <= set(
        metrics
    )


# ---- the GRPO trainer --------------------------------------------------------------------------------------------
GRPO = REPO / "plugins" / "diffusion_grpo_trainer"


def test_diffusion_grpo_trainer_under_the_host(host, tmp_path):
    """A workbench GRPO job on prompt/answer rows: the default reward, no reward setting, values as the form's
    strings."""
    env, workspace = host
    rows = tmp_path / "sums.jsonl"
    rows.write_text(
        "".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(4))
    )
    config = {
        "model_name": "tiny-llada",
        "dataset": str(rows),
        "train_device": "cpu",
        "num_train_epochs": "0",
        "train_steps": "2",
        "batch_size": "2",
        "num_generations": "2",
        "max_prompt_length": "32",
        "max_completion_length": "8",
        "steps": "8",
        "block_length": "8",
        "learning_rate": "0.001",
        "dtype": "float32",
    }
    done, record = launch_trainer(env, workspace, "42", config, GRPO)
    assert done.returncode == 0, done.stdout
    assert record["status"] == "COMPLETE" and record["job_data"]["completion_status"] == "success", done.stdout
    assert record["job_data"]["config"]["reward_funcs"] == ["answer_match"]
    assert (workspace / "adaptors" / "org_tiny" / "probe" / "adapter_model.safetensors").is_file()
    metrics = json.loads((workspace / "experiments" / "exp" / "tensorboards" / "probe" / "metrics.json").read_text())
    assert {"train/reward", "train/rewards/answer_match", "train/kl", "train/rollout_time"} <= set(metrics)
