"""The GRPO trainer plugin end to end through `python -m plugin_sdk run diffusion_grpo_trainer` (as a person runs it
from a terminal), on tiny-llada offline: a JSONL of prompt/answer rows trains with the default reward and no reward
setting, saves a loadable adapter and TRL's metric names; a job stopped mid-run resumes from its checkpoint to the
end; a reward that fails, or data it cannot score, ends the job FAILED with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plugin_sdk.backends.local import JobRecord
from plugin_sdk.runner import request_stop
from plugin_sdk.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
TRL_METRICS = {
    "reward",
    "reward_std",
    "rewards/answer_match",
    "frac_reward_zero_std",
    "completion_length",
    "kl",
    "clip_ratio",
    "rollout_time",
    "update_time",
}
TINY = {
    "model_name": "tiny-llada",
    "train_device": "cpu",
    "dtype": "float32",
    "num_train_epochs": "0",
    "batch_size": "2",
    "num_generations": "2",
    "max_prompt_length": "32",
    "max_completion_length": "8",
    "max_length": "64",
    "steps": "8",
    "block_length": "8",
    "learning_rate": "0.001",
    "lora_r": "4",
    "lora_alpha": "8",
    "save_steps": "1000",
}


@pytest.fixture(scope="module")
def workspace(workspace_with_presets) -> Path:
    return workspace_with_presets("grpo_ws")


def sums(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} + {i}? Answer with the number.", "answer": str(2 * i)} for i in range(n)]


def start(workspace: Path, name: str, rows: list[dict], **values: str) -> tuple[subprocess.Popen, str]:
    """`python -m plugin_sdk run diffusion_grpo_trainer` on `rows` (a JSONL file), started; (process, job id)."""
    data = workspace / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    job_id = Workspace(workspace).next_job_id()
    settings = {**TINY, "dataset": str(data), "adaptor_name": name, "job_id": job_id, **values}
    command = [sys.executable, "-m", "plugin_sdk", "run", "diffusion_grpo_trainer", "--workspace", str(workspace)]
    command += [
        "--experiment",
        "grpo",
        *(arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, job_id


def finish(workspace: Path, process: subprocess.Popen, job_id: str) -> tuple[int, dict, str]:
    process.communicate(timeout=600)
    ws = Workspace(workspace)
    log = (ws.job_dir(job_id) / f"output_{job_id}.txt").read_text()
    return process.returncode, JobRecord(ws, job_id).read(), log


def run(workspace: Path, name: str, rows: list[dict], **values: str) -> tuple[int, dict, str]:
    return finish(workspace, *start(workspace, name, rows, **values))


@pytest.mark.slow
def test_prompt_answer_rows_train_with_the_default_reward(workspace):
    code, record, log = run(workspace, "grpo_ok", sums(6), train_steps="2", logging_steps="1")
    assert code == 0, log
    assert record["status"] == "COMPLETE" and record["job_data"]["completion_status"] == "success", log
    assert "training prompts: 6 of 6 rows of " in log
    assert "rewards answer_match" in log and "reference disabled adapters" in log
    assert record["job_data"]["config"]["reward_funcs"] == ["answer_match"]
    assert "GRPO-trained llada model" in record["job_data"]["completion_details"]
    ws = Workspace(workspace)
    assert (ws.adaptor_dir("tiny-llada", "grpo_ok") / "adapter_config.json").is_file()
    metrics = json.loads((ws.trainer_output_dir("grpo", "diffusion_grpo_trainer") / "metrics.json").read_text())
    assert {f"train/{name}" for name in TRL_METRICS} <= set(metrics), sorted(metrics)


@pytest.mark.slow
def test_a_stopped_job_resumes_from_its_checkpoint_to_the_end(workspace):
    process, job_id = start(workspace, "grpo_stop", sums(8), train_steps="6")
    ws = Workspace(workspace)
    deadline = time.monotonic() + 300
    # the first step is done once progress passes the 5% the trainer starts from
    while JobRecord(ws, job_id).read().get("progress", 0) <= 5 and process.poll() is None:
        assert time.monotonic() < deadline, "the job made no step"
        time.sleep(0.1)
    assert request_stop(ws, job_id) is None, "the job ended before it could be stopped"
    code, record, log = finish(workspace, process, job_id)
    assert record["status"] == "STOPPED", log
    checkpoints = list(ws.root.rglob("checkpoint-*"))
    assert checkpoints, log
    stopped_at = max(int(path.name.split("-")[1]) for path in checkpoints)
    assert 1 <= stopped_at < 6

    code, record, log = run(workspace, "grpo_stop", sums(8), train_steps="6", resume_from_checkpoint="latest")
    assert code == 0, log
    assert "resuming from " in log and f"checkpoint-{stopped_at}" in log
    assert "for 6 steps" in record["job_data"]["completion_details"]
    assert (ws.adaptor_dir("tiny-llada", "grpo_stop") / "adapter_config.json").is_file()


LENGTH_REWARD = """
def reward(prompts, completions, answer):
    return [min(len(text), 10) / 10 for text in completions]
"""


@pytest.mark.slow
def test_a_users_reward_file_adds_to_the_built_in_reward(workspace):
    path = workspace / "length_reward.py"
    path.write_text(LENGTH_REWARD)
    values = {"reward_file": str(path), "trust_remote_code": "true", "reward_weights": "1,0.5"}
    code, record, log = run(workspace, "grpo_file", sums(4), train_steps="1", **values)
    assert code == 0, log
    assert "rewards answer_match, reward" in log
    metrics = json.loads(
        (Workspace(workspace).trainer_output_dir("grpo", "diffusion_grpo_trainer") / "metrics.json").read_text()
    )
    assert {"train/rewards/answer_match", "train/rewards/reward"} <= set(metrics)


FAILING_REWARD = """
def reward(prompts, completions, **columns):
    raise ValueError("the judge is out to lunch")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rows", "values", "details"),
    [
        ([{"prompt": f"Say {i}."} for i in range(4)], {}, "needs the dataset column 'answer'"),
        (
            sums(4),
            {"reward_funcs": "", "reward_file": "FILE", "trust_remote_code": "true"},
            "the judge is out to lunch",
        ),
        ([{"text": "no prompt here"}] * 4, {}, "no prompt column among text"),
    ],
    ids=["no answer column", "a reward that raises", "no prompt"],
)
def test_what_cannot_be_rewarded_fails_the_job_with_the_reason(workspace, rows, values, details):
    if values.get("reward_file") == "FILE":
        path = workspace / "failing_reward.py"
        path.write_text(FAILING_REWARD)
        values = {**values, "reward_file": str(path)}
    code, record, log = run(workspace, "grpo_bad", rows, train_steps="1", **values)
    assert code != 0
    assert record["status"] == "FAILED" and record["job_data"]["completion_status"] == "failed", log
    assert details in record["job_data"]["completion_details"], record["job_data"]["completion_details"]
    assert "Traceback" not in log
