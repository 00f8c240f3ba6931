"""The catalogue of hostile inputs: each one ends as a failed job (or a refused command) whose message names the
field, file or line at fault, with a non-zero exit code and nothing left where a later run would pick it up.

Jobs run in this process through each plugin's own `run_job` entry, so every case is refused before a model or
dataset loads; the fault cases (signals, dead processes) run the contract probe plugin in a child process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plugin_sdk.__main__ import main as cli
from plugin_sdk.backends.base import EXIT_FAILED, EXIT_STOPPED
from plugin_sdk.backends.local import JobRecord, settle_stale_jobs
from plugin_sdk.job import run_job
from plugin_sdk.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
PROBE = Path(__file__).parents[1] / "fixtures" / "plugins" / "contract_probe"
WORK = {"diffusion_llm_trainer": "train", "diffusion_dpo_trainer": "train", "diffusion_evaluator": "run"}
MODEL = ["--model_name", "tiny-llada"]


def plugin_work(plugin: str):
    spec = importlib.util.spec_from_file_location(f"bad_inputs_{plugin}", PLUGINS / plugin / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, WORK[plugin])


def leftovers(root: Path) -> list[str]:
    """Files a later run could take for a result or resume from."""
    found = [p for folder in ("adaptors", "models", "temp") for p in (root / folder).rglob("*") if p.is_file()]
    found += [p for p in root.rglob("checkpoint-*") if p.is_dir()]
    return [str(p.relative_to(root)) for p in found]


def run_plugin_job(plugin: str, argv: list[str], workspace: Path) -> tuple[int, dict | None, str]:
    """(exit code, job record or None when none was made, what it printed)."""
    before = set((workspace / "jobs").glob("*/index.json"))
    with pytest.raises(SystemExit) as ended:
        run_job(PLUGINS / plugin / "main.py", plugin_work(plugin), ["--workspace", str(workspace), *argv])
    records = set((workspace / "jobs").glob("*/index.json")) - before
    record = json.loads(records.pop().read_text()) if records else None
    return ended.value.code, record, ""


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


SFT, DPO, EVAL = "diffusion_llm_trainer", "diffusion_dpo_trainer", "diffusion_evaluator"

# (plugin, arguments, fragments the job's completion_details must contain)
JOB_CASES = [
    (SFT, [*MODEL, "--learning_rat", "1e-4"], ["learning_rat: is not a parameter", "learning_rate"]),
    (SFT, [*MODEL, "--per_device_batch_size", "2"], ["per_device_batch_size", "batch_size"]),
    (SFT, [*MODEL, "--batch_size", "four"], ["batch_size", "expected an integer"]),
    (SFT, [*MODEL, "--batch_size", "0"], ["batch_size", "at least 1"]),
    (SFT, [*MODEL, "--learning_rate", "nan"], ["learning_rate", "finite"]),
    (SFT, [*MODEL, "--eval_strategy", "sometimes"], ["eval_strategy", "must be one of"]),
    (SFT, [*MODEL, "--lora", "maybe"], ["lora", "true or false"]),
    (SFT, [*MODEL, "--lora_dropout", "0.9"], ["lora_dropout", "at most 0.5"]),
    (SFT, [*MODEL, "--num_train_epochs", "0"], ["num_train_epochs is 0 and train_steps is 0"]),
    (SFT, [*MODEL, "--max_steps", "5"], ["train_steps=5", "num_train_epochs"]),
    (SFT, [*MODEL, "--seed", str(2**64)], ["seed=18446744073709551616"]),
    (SFT, [*MODEL, "--seed", "-1"], ["seed", "at least 0"]),
    (
        SFT,
        [*MODEL, "--seed", "9" * 5000],
        ["seed", "a number of 5000 digits (at most 4300 can be read)", "characters)"],
    ),
    (SFT, [*MODEL, "--adaptor_name", "run\udc80"], ["adaptor_name", "\\udc80, a lone surrogate escape"]),
    (SFT, [*MODEL, "--lora", "true", "--adaptor_name", "a" * 300], ["adaptor_name is 300 bytes long", "at most 200"]),
    (DPO, [*MODEL, "--adaptor_name", "ab" * 101], ["adaptor_name is 202 bytes long"]),
    (SFT, [*MODEL, "--wandb_run_name", "r" * 256], ["wandb_run_name (the run's name, a TensorBoard folder) is 256"]),
    (SFT, [*MODEL, "--loss_weight_type", "bogus"], ["loss_weight_type"]),
    (SFT, [*MODEL, "--training_method", "gpt"], ["training_method", "must be one of"]),
    (SFT, [*MODEL, "--train_mode", "pretrain", "--sample_every_steps", "5"], ["sample_every_steps=5"]),
    (SFT, [*MODEL, "--bf16", "true", "--fp16", "true"], ["bf16=true and fp16=true"]),
    (SFT, [*MODEL, "--bf16", "true", "--dtype", "float32"], ["dtype: given as 'float32'"]),
    (SFT, [*MODEL, "--max_steps", "5", "--train_steps", "6"], ["train_steps: given twice"]),
    (SFT, ["--dataset", "x.jsonl"], ["no model: set model_name"]),
    (SFT, [*MODEL, "--dataset", "/no/such/file.jsonl"], ["/no/such/file.jsonl"]),
    (DPO, [*MODEL, "--mc_samples", "0"], ["mc_samples", "at least 1"]),
    (DPO, [*MODEL, "--loss_type", "hinge"], ["loss_type", "must be one of"]),
    (DPO, [*MODEL, "--beta", "0"], ["beta must be positive"]),
    (DPO, [*MODEL, "--reference", "disabled_adapters", "--lora", "false"], ["reference=disabled_adapters"]),
    (DPO, [*MODEL, "--load_in_4bit", "true", "--lora", "false"], ["load_in_4bit"]),
    (DPO, [*MODEL, "--diffusion_step", "4"], ["diffusion_step: is not a parameter", "mc_samples"]),
    (DPO, [*MODEL, "--preference_data_path", "/no/pairs.jsonl"], ["/no/pairs.jsonl"]),
    (DPO, [*MODEL, "--seed", str(2**40)], ["seed=1099511627776"]),
    (EVAL, [*MODEL, "--metrics", '["bogus"]'], ["metrics", "bogus"]),
    (EVAL, [*MODEL, "--temperatur", "0.5"], ["temperatur: is not a parameter", "temperature"]),
    (EVAL, [*MODEL, "--remasking", "sometimes"], ["remasking", "must be one of"]),
    (EVAL, [*MODEL, "--top_p", "2"], ["top_p", "at most 1"]),
    (EVAL, [*MODEL, "--mc_num", "0"], ["mc_num", "at least 1"]),
    (EVAL, [*MODEL, "--steps", "1.5"], ["steps", "whole number"]),
    (
        EVAL,
        [*MODEL, "--metrics", "task_accuracy", "--answer_extraction", "regex", "--answer_regex", "answer is (\\d+"],
        ["answer_regex 'answer is (\\\\d+' is not a valid regular expression: missing ), unterminated subpattern"],
    ),
    (EVAL, [*MODEL, "--metrics", "task_accuracy", "--answer_extraction", "regex"], ["answer_extraction=regex needs"]),
]


@pytest.mark.parametrize(("plugin", "argv", "fragments"), JOB_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_hostile_job_input_fails_naming_the_field(tmp_path, plugin, argv, fragments):
    workspace = tmp_path / "ws"
    code, record, _ = run_plugin_job(plugin, argv, workspace)
    assert code == EXIT_FAILED
    assert record["status"] == "FAILED"
    assert record["job_data"]["completion_status"] == "failed"
    details = record["job_data"]["completion_details"]
    for fragment in fragments:
        assert fragment in details
    assert leftovers(workspace) == []


def test_cuda_without_a_gpu_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    code, record, _ = run_plugin_job(SFT, [*MODEL, "--train_device", "cuda"], tmp_path / "ws")
    assert code == EXIT_FAILED and "train_device=cuda" in record["job_data"]["completion_details"]


def test_evaluation_without_validation_data_is_refused(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(4)))
    argv = [*MODEL, "--dataset", str(rows), "--eval_strategy", "steps", "--validation_fraction", "0"]
    code, record, _ = run_plugin_job(SFT, argv, tmp_path / "ws")
    assert code == EXIT_FAILED
    assert "eval_strategy=steps needs validation data" in record["job_data"]["completion_details"]


def test_sampling_without_validation_data_is_refused(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(4)))
    argv = [*MODEL, "--dataset", str(rows), "--sample_every_steps", "2", "--validation_fraction", "0"]
    code, record, _ = run_plugin_job(SFT, argv, tmp_path / "ws")
    assert code == EXIT_FAILED
    assert "sample_every_steps=2" in record["job_data"]["completion_details"]


DATA_CASES = [
    ('{"instruction": "q \\ud800", "output": "a"}\n', ["rows.jsonl, line 2", "field 'instruction': \\ud800"]),
    ('{"instruction": "q", "output": "a", "n": ' + "9" * 5000 + "}\n", ["rows.jsonl, line 2: a number of 5000"]),
]


@pytest.mark.parametrize(("bad_row", "fragments"), DATA_CASES, ids=["lone-surrogate", "long-number"])
def test_unreadable_value_in_a_data_row_fails_naming_file_line_and_field(tmp_path, bad_row, fragments):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n" + bad_row, encoding="utf-8")
    code, record, _ = run_plugin_job(SFT, [*MODEL, "--dataset", str(rows)], tmp_path / "ws")
    details = record["job_data"]["completion_details"]
    assert code == EXIT_FAILED and all(fragment in details for fragment in fragments), details
    assert leftovers(tmp_path / "ws") == []


def test_a_set_whose_every_answer_is_empty_is_refused_before_loading(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"q{i}", "output": " " * i}) + "\n" for i in range(3)))
    code, record, _ = run_plugin_job(SFT, [*MODEL, "--dataset", str(rows)], tmp_path / "ws")
    details = record["job_data"]["completion_details"]
    assert code == EXIT_FAILED and "every one of the 3 training examples has an empty answer" in details, details
    assert not (tmp_path / "ws" / "models").exists(), "refused before the model was built"


def test_an_output_folder_that_cannot_be_made_is_refused_before_loading(tmp_path, monkeypatch):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "adaptors").write_text("not a folder")
    code, record, _ = run_plugin_job(SFT, [*MODEL, "--lora", "true"], workspace)
    details = record["job_data"]["completion_details"]
    assert (
        code == EXIT_FAILED
        and details == f"{workspace / 'adaptors'} is a file, not a folder: results go inside it; move the file away"
    )
    assert not (workspace / "models").exists(), "refused before the model was built"
    # a read-only folder (simulated: the tests may run as root, who may write anywhere)
    (workspace / "adaptors").unlink()
    (workspace / "adaptors").mkdir()
    monkeypatch.setattr("plugin_sdk.outputs.os.access", lambda path, mode: Path(path).name != "adaptors")
    code, record, _ = run_plugin_job(SFT, [*MODEL, "--lora", "true"], workspace)
    assert code == EXIT_FAILED
    assert (
        record["job_data"]["completion_details"]
        == f"cannot write in {workspace / 'adaptors'} (no permission): results go inside it"
    )


@pytest.mark.parametrize("job_id", ["../../x", "a/b", ".", "..", "-x", "x y", "ü"])
def test_job_id_that_is_not_a_plain_name_leaves_no_record(tmp_path, capsys, job_id):
    workspace = tmp_path / "ws"
    code, record, _ = run_plugin_job(SFT, [*MODEL, "--job_id", job_id], workspace)
    assert code == EXIT_FAILED and record is None
    assert f"job_id={job_id!r} is not a plain name" in capsys.readouterr().out
    assert not (tmp_path / "x").exists() and leftovers(workspace) == []


# ------------------------------------------------------------------------------------------------ config files


CONFIG_CASES = [
    ("dup.yaml", "seed: 1\nbatch_size: 2\nseed: 3\n", ["dup.yaml: seed is given twice, at lines 1 and 3"]),
    ("blocks.yaml", "a:\n  seed: 1\nb:\n  seed: 2\n", ["blocks.yaml: seed is set twice (a and b)"]),
    ("broken.yaml", "seed: [1\n", ["broken.yaml: invalid YAML at line 2"]),
    ("broken.json", '{"seed": 1,}', ["broken.json: invalid JSON at line 1"]),
    ("notes.txt", "seed: 1\n", ["must end with .yaml, .yml or .json"]),
    ("list.yaml", "- seed\n", ["list.yaml: expected a mapping"]),
    ("long.yaml", "batch_size: 2\nseed: " + "9" * 5000 + "\n", ["long.yaml, line 2: a number of 5000 digits"]),
    ("long.json", '{"seed": ' + "9" * 5000 + "}", ["long.json: a number of 5000 digits"]),
]


@pytest.mark.parametrize(("name", "text", "fragments"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_file_is_refused_by_the_cli_naming_file_and_line(tmp_path, capsys, name, text, fragments):
    path = write(tmp_path / name, text)
    code = cli(["run", SFT, "--workspace", str(tmp_path / "ws"), "--config_file", path])
    err = capsys.readouterr().err
    assert code == 2
    assert all(fragment in err for fragment in fragments), err
    assert "Traceback" not in err
    assert not (tmp_path / "ws" / "jobs").exists() or not list((tmp_path / "ws" / "jobs").glob("*/index.json"))


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--set", "seed"], "--set expects name=value"),
        (["stray"], "unexpected command-line argument 'stray'"),
        (["--config", "missing.yaml"], "missing.yaml does not exist"),
        (["--set", "job_id=../../x"], "job_id='../../x' is not a plain name"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(tmp_path, capsys, argv, fragment):
    code = cli(["run", SFT, "--workspace", str(tmp_path / "ws"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_stopping_a_missing_job_is_one_line(tmp_path, capsys):
    code = cli(["stop", "999", "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"error: there is no job 999 in {tmp_path / 'ws' / 'jobs'}"


def test_stopping_a_finished_job_says_it_has_finished(tmp_path, capsys):
    ws = Workspace(tmp_path / "ws")
    record = JobRecord(ws, "4")
    record.create(job_type="TRAIN", experiment="e")
    record.update(status="COMPLETE")
    code = cli(["stop", "4", "--workspace", str(ws.root)])
    assert code == 0
    assert capsys.readouterr().out == "job 4 has already finished (COMPLETE); there is nothing to stop\n"
    assert "stop" not in record.read()["job_data"]


# ------------------------------------------------------------------------------------------------ faults


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_job_whose_process_is_gone_is_marked_failed_with_its_last_log_line(tmp_path, capsys):
    ws = Workspace(tmp_path / "ws")
    record = JobRecord(ws, "7")
    record.create(job_type="TRAIN", experiment="e")
    record.update(status="RUNNING", pid=dead_pid())
    (record.dir / "output_7.txt").write_text("step 3: train/loss=1.5\nsaving checkpoint-3\n\n")
    alive = JobRecord(ws, "8")
    alive.create(job_type="TRAIN", experiment="e")  # owned by this (living) process
    alive.update(status="RUNNING")
    code = cli(["stop", "8", "--workspace", str(ws.root)])
    assert code == 0
    data = record.read()
    assert data["status"] == "FAILED"
    assert data["job_data"]["completion_details"] == "the process ended without reporting: saving checkpoint-3"
    assert alive.read()["status"] == "RUNNING"
    assert settle_stale_jobs(ws) == []  # settled once


def test_secrets_never_reach_files_or_argv(tmp_path):
    ws = Workspace(tmp_path / "ws")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    secret = "hf_SECRET_VALUE_123"
    cmd = [sys.executable, "-m", "plugin_sdk", "run", str(PROBE), "--workspace", str(ws.root)]
    cmd += ["--set", "required_note=x", "--set", "steps=2", "--set", f"hfToken={secret}"]
    cmd += ["--set", f"wandb_api_key={secret}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    files = [p for p in ws.root.rglob("*") if p.is_file()]
    assert files
    assert not [p for p in files if secret.encode() in p.read_bytes()]


def start_runner(ws: Workspace, job_id: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "plugin_sdk", "run", str(PROBE), "--workspace", str(ws.root)]
    cmd += ["--set", "steps=200", "--set", "step_seconds=0.05", "--set", "required_note=x", "--set", f"job_id={job_id}"]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while JobRecord(ws, job_id).read().get("progress", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    return process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_runner_stops_the_job_with_a_checkpoint(tmp_path, sig):
    ws = Workspace(tmp_path / "ws")
    process = start_runner(ws, "5")
    process.send_signal(sig)
    out, _ = process.communicate(timeout=60)
    record = JobRecord(ws, "5").read()
    assert record["status"] == "STOPPED", out
    assert process.returncode == EXIT_STOPPED
    checkpoint = ws.trainer_output_dir("default", "contract_probe") / "checkpoints_job_5" / "state.json"
    assert 0 < json.loads(checkpoint.read_text())["step"] < 200


def test_a_killed_plugin_ends_the_runner_with_the_failed_exit_code(tmp_path):
    ws = Workspace(tmp_path / "ws")
    process = start_runner(ws, "7")
    os.kill(JobRecord(ws, "7").read()["job_data"]["pid"], signal.SIGKILL)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == EXIT_FAILED, out  # not 247, the shell's view of -9
    record = JobRecord(ws, "7").read()
    assert record["status"] == "FAILED" and "exited with code -9" in record["job_data"]["completion_details"]


def test_a_double_ctrl_c_ends_the_runner_with_a_documented_exit_code(tmp_path):
    ws = Workspace(tmp_path / "ws")
    process = start_runner(ws, "9")
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    status = JobRecord(ws, "9").read()["status"]
    assert (status, process.returncode) in (("STOPPED", EXIT_STOPPED), ("FAILED", EXIT_FAILED)), out


@pytest.mark.parametrize(
    ("code", "forwarded", "status"),
    [
        (-signal.SIGTERM, True, "STOPPED"),
        (-signal.SIGINT, True, "STOPPED"),
        (-signal.SIGTERM, False, "FAILED"),
        (-signal.SIGKILL, True, "FAILED"),
        (1, True, "FAILED"),
    ],
)
def test_a_plugin_the_forwarded_stop_ended_while_starting_was_stopped(tmp_path, code, forwarded, status):
    """Before the plugin takes signals (importing, loading), the runner's forwarded SIGTERM ends it at once."""
    from plugin_sdk.runner import exit_code, settle

    record = JobRecord(Workspace(tmp_path / "ws"), "3")
    record.create(job_type="TRAIN", experiment="e")
    record.update(status="RUNNING")
    settled = settle(record, code, stop_forwarded=forwarded)
    assert settled["status"] == status and record.read()["status"] == status
    assert exit_code(status, code) == (EXIT_STOPPED if status == "STOPPED" else EXIT_FAILED)
    if status == "STOPPED":
        assert settled["job_data"]["completion_details"].startswith("Stopped by user while starting")


def test_killed_runner_and_plugin_leave_a_failed_job(tmp_path):
    ws = Workspace(tmp_path / "ws")
    process = start_runner(ws, "6")
    plugin_pid = JobRecord(ws, "6").read()["job_data"]["pid"]
    assert plugin_pid != process.pid  # the plugin process recorded itself
    os.kill(plugin_pid, signal.SIGKILL)
    process.kill()
    process.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while not settle_stale_jobs(ws) and time.monotonic() < deadline:
        time.sleep(0.2)  # the killed plugin is reaped by init
    details = JobRecord(ws, "6").read()["job_data"]["completion_details"]
    assert details.startswith("the process ended without reporting: ")


def function_task(folder: Path) -> Path:
    folder.mkdir()
    (folder / "utils.py").write_text("def process(doc):\n    return doc\n")
    task = "task: code_task\ndataset_path: json\n# a comment about !function is no code\nprocess_docs: !function utils.process\n"
    return Path(write(folder / "task.yaml", task))


def test_task_yaml_with_function_needs_trust_remote_code(tmp_path):
    from dlm.lm_eval.errors import LmEvalError
    from dlm.lm_eval.tasks import load_tasks

    task = function_task(tmp_path / "tasks")
    for spec in (str(task), str(task.parent)):
        with pytest.raises(LmEvalError, match=rf"runs Python code \(!function\) at {task}:4.*trust_remote_code"):
            load_tasks([spec])


def test_evaluator_job_refuses_task_code_before_loading_a_model(tmp_path):
    task = function_task(tmp_path / "tasks")
    code, record, _ = run_plugin_job(EVAL, [*MODEL, "--metrics", "[]", "--tasks", str(task)], tmp_path / "ws")
    assert code == EXIT_FAILED
    assert f"runs Python code (!function) at {task}:4" in record["job_data"]["completion_details"]


# ------------------------------------------------------------------------------------------------ outputs


def test_a_taken_adaptor_name_is_refused_before_training(tmp_path):
    workspace = tmp_path / "ws"
    earlier = workspace / "adaptors" / "tiny-llada" / "diffusion_adaptor"
    earlier.mkdir(parents=True)
    (earlier / "adapter_config.json").write_text("{}")
    code, record, _ = run_plugin_job(SFT, [*MODEL, "--dataset", "unused.jsonl"], workspace)
    assert code == EXIT_FAILED
    assert f"{earlier} already holds a result of an earlier job" in record["job_data"]["completion_details"]
    assert (earlier / "adapter_config.json").read_text() == "{}"


def test_a_result_never_replaces_another_finished_meanwhile(tmp_path):
    from dlm.trainers.outputs import _claim

    destination = tmp_path / "adaptor"
    claimed = []
    for text in ("first", "second", "third"):
        staging = tmp_path / f".staging-{text}"
        staging.mkdir()
        (staging / "weights").write_text(text)
        claimed.append(_claim(staging, destination))
    assert [p.name for p in claimed] == ["adaptor", "adaptor-2", "adaptor-3"]
    assert [(p / "weights").read_text() for p in claimed] == ["first", "second", "third"]


def test_a_job_run_by_another_machine_is_not_taken_for_dead(tmp_path):
    """A multi-machine run shares the workspace: a pid recorded by another machine says nothing about this one's
    processes, so the job stays RUNNING; the same pid recorded here is gone, and the job is settled FAILED."""
    ws = Workspace(tmp_path / "ws")
    elsewhere, here = JobRecord(ws, "11"), JobRecord(ws, "12")
    for record, host in ((elsewhere, "node-7-of-the-run"), (here, None)):
        record.create(job_type="TRAIN", experiment="e")
        assert record.read()["job_data"]["host"] == socket.gethostname()  # recorded with its pid
        record.update(status="RUNNING", pid=dead_pid(), **({"host": host} if host else {}))
    assert settle_stale_jobs(ws) == ["12"]
    assert elsewhere.read()["status"] == "RUNNING" and here.read()["status"] == "FAILED"
