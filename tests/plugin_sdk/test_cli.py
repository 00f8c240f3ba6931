"""`python -m plugin_sdk`: the gallery, validation and the errors a terminal user meets first."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_sdk.__main__ import main
from plugin_sdk.errors import PluginError
from plugin_sdk.workspace import Workspace, child_path, safe_name

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).parents[1] / "fixtures" / "plugins" / "contract_probe"


def test_validate_passes_on_the_repository(capsys):
    assert main(["validate"]) == 0
    assert "valid" in capsys.readouterr().out


def test_list_shows_every_gallery_plugin(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for entry in json.loads((REPO / "index.json").read_text()):
        assert entry["uniqueId"] in out


def test_unknown_plugin_lists_the_known_ones(capsys, tmp_path):
    assert main(["run", "no_such_plugin", "--workspace", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_plugin" in err
    for entry in json.loads((REPO / "index.json").read_text()):
        assert entry["uniqueId"] in err


def test_malformed_config_names_file_and_line(capsys, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("steps: 3\nmode: [unclosed\n")
    assert main(["run", str(PROBE), "--workspace", str(tmp_path / "ws"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "line" in err


def test_workspace_on_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PluginError, match="not writable"):
        Workspace(blocker / "ws")


@pytest.mark.parametrize("name", ["..", "../..", "/", "", " "])
def test_names_that_would_escape_are_refused(name, tmp_path):
    with pytest.raises(PluginError):
        child_path(tmp_path, name, field="adaptor_name")


def test_names_become_one_safe_component(tmp_path):
    assert safe_name("org/model", field="model_name") == "org_model"
    assert child_path(tmp_path, "../../etc/passwd", field="adaptor_name").parent == tmp_path.resolve()


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "plugin_sdk", "--help"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and "run" in done.stdout


def run_in_terminal(command: list[str], env: dict[str, str], columns: int = 100, timeout: float = 600) -> str:
    """Everything `command` writes to a pseudo-terminal `columns` wide, as a user's terminal would receive it."""
    import fcntl
    import os
    import pty
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    process.wait(timeout=10)
    return b"".join(chunks).decode("utf-8", errors="replace")


def shown_lines(terminal: str) -> list[str]:
    """What stays visible on each screen line and each state of the redrawn status line."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", terminal).replace("\r\n", "\n")
    return [state for line in text.split("\n") for state in line.split("\r") if state.strip()]


@pytest.mark.slow
def test_a_training_job_in_a_terminal_shows_phases_steps_and_no_library_noise(tmp_path):
    import os

    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"{i} + {i}?", "output": f"{2 * i}"}) for i in range(8)))
    settings = {"model_name": "tiny-llada", "dataset": str(data), "train_device": "cpu", "num_train_epochs": 0}
    settings |= {"train_steps": 4, "logging_steps": 1, "max_length": 64, "batch_size": 2, "adaptor_name": "a"}
    command = [sys.executable, "-m", "plugin_sdk", "run", "diffusion_llm_trainer", "--workspace", str(tmp_path / "ws")]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    # WANDB_MODE=offline makes transformers print a line to stdout at import: a stray print the terminal must not get
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "COLUMNS": "100"}
    lines = shown_lines(run_in_terminal(command, env))
    text = "\n".join(lines)
    for phase in (
        "loading data ...",
        "loading model tiny-llada ...",
        "encoding data ...",
        "training 4 steps ...",
        "saving outputs ...",
    ):
        assert phase in lines, text
    for step in range(1, 5):
        assert any(line.startswith(f"step {step}/4  loss ") for line in lines), text
    assert any(line.startswith("training  step ") and " loss " in line for line in lines), text  # the status line
    assert lines[-1].startswith("Job 1: COMPLETE - trained llada model tiny-llada for 4 steps"), text
    for noise in ("kernels", "Loading weights", "Writing model shards", "Warning", "WANDB", "it/s"):
        assert noise not in text, noise
    assert max(len(line) for line in lines if line.startswith(("step ", "training  step "))) <= 80, text
    log = (tmp_path / "ws" / "jobs" / "1" / "output_1.txt").read_text()
    assert "train/grad_norm=" in log and "Loading weights" in log and "WANDB offline" in log  # the log keeps all
