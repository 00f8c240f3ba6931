"""Hostile inputs, secrets: credentials under any name (glued ones too) or in the form of a token never reach a file,
a parameter file is the owner's only and is gone once the job is refused, and no child's command line holds one."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from plugin_sdk import launch
from plugin_sdk.config_keys import SECRETS_ENV, secret_environment
from plugin_sdk.launch import LaunchPlan
from plugin_sdk.manifest import load_manifest
from plugin_sdk.runner import plugin_command, run_plugin
from plugin_sdk.workspace import Workspace

PROBE = Path(__file__).parents[1] / "fixtures" / "plugins" / "contract_probe"
# The names the filter missed, a glued camel-case one, and a token under an ordinary-looking name.
SECRETS = {
    "hftoken": "s3cret-hftoken-value",
    "wandbkey": "s3cret-wandbkey-value",
    "hub_passphrase": "s3cret-passphrase-value",
    "githubAuthtoken": "s3cret-authtoken-value",
    "note_for_later": "hf_" + "A" * 34,
}


def files_holding(root: Path, values: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode("utf-8", "replace")
            found += [f"{path}: {value}" for value in values if value in text]
    return found


def test_a_trainers_parameter_file_is_owner_only_and_holds_no_secret(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    values = {"steps": "2", "required_note": "n", **SECRETS}
    cmd = plugin_command(PROBE, load_manifest(PROBE), values, workspace, "7", "exp")
    handed = workspace.input_file("7")
    assert stat.S_IMODE(handed.stat().st_mode) == 0o600
    assert json.loads(handed.read_text())["config"] == {"steps": "2", "required_note": "n", "job_id": "7"}
    assert not [arg for arg in cmd if any(value in arg for value in SECRETS.values())]
    assert json.loads(secret_environment(values)[SECRETS_ENV]) == SECRETS  # they travel in the environment


def test_an_evaluators_arguments_hold_no_secret(tmp_path):
    manifest = {**load_manifest(PROBE), "type": "evaluator"}
    cmd = plugin_command(PROBE, manifest, {"steps": "2", **SECRETS}, Workspace(tmp_path / "ws"), "3", "exp")
    assert "--steps" in cmd
    assert not [arg for arg in cmd if any(name in arg or value in arg for name, value in SECRETS.items())]


def test_a_refused_job_leaves_no_parameter_file_and_no_secret_on_disk(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    values = {"steps": "not-a-number", "required_note": "n", **SECRETS}
    code, job_id = run_plugin(PROBE, values, workspace=workspace, show_progress=False)
    assert code != 0
    log = (workspace.job_dir(job_id) / f"output_{job_id}.txt").read_text()
    assert "steps" in log  # refused for its bad value, not for the credentials
    assert not workspace.input_file(job_id).exists()
    assert files_holding(workspace.root, list(SECRETS.values())) == []


def test_a_relaunched_childs_command_line_holds_no_secret(monkeypatch):
    launched = {}

    def run(command, env, check):
        launched.update(command=command, env=env)
        return type("Completed", (), {"returncode": 0})()

    monkeypatch.setattr(launch, "wait_for_main_process", lambda plan: None)
    monkeypatch.setattr(launch.subprocess, "run", run)
    monkeypatch.setattr(
        sys,
        "argv",
        ["main.py", "--steps", "3", "--hftoken", SECRETS["hftoken"], f"--wandbkey={SECRETS['wandbkey']}"]
        + ["--note_for_later", SECRETS["note_for_later"], "--flag"],
    )
    env = secret_environment({"hftoken": SECRETS["hftoken"], "wandbkey": SECRETS["wandbkey"]})
    assert launch.relaunch(LaunchPlan(num_processes=2, use_cpu=True), job_id="1", workspace="/w", env=env) == 0
    command = launched["command"]
    assert command[command.index("main.py") :] == ["main.py", "--steps", "3", "--flag"]
    assert json.loads(launched["env"][SECRETS_ENV]) == {"hftoken": SECRETS["hftoken"], "wandbkey": SECRETS["wandbkey"]}


@pytest.mark.parametrize("name", ["hftoken", "wandbkey", "hub_passphrase", "HubPassphrase", "dbpassword"])
def test_each_missed_name_is_a_secret(name):
    from plugin_sdk.config_keys import is_secret

    assert is_secret(name)
