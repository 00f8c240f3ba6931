"""Every command in the README works: each shell block is either run here as written, or named as exercised
elsewhere (CI runs the test and lint commands; tests/integration/test_demo.py runs the demo command)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)

# Blocks run elsewhere, by their first command.
ELSEWHERE = {
    "./setup.sh demo": "the demo itself: tests/integration/test_demo.py at the small size (python -m demo, run by "
    "conftest.py's small_demo); its wiring: test_setup_runs_the_demo",
    "./setup.sh test": ".ci/run",
    "examples/seed_workflow.sh": "tests/integration/test_seed_workflow.py, at the smallest settings",
    ".venv/bin/python -m dlm.lm_eval_cli": "tests/dlm/test_lm_eval_adapter.py::test_stock_lm_eval_command_line_runs_"
    "dlm_diffusion_on_the_cpu (on a tiny model and a local task: the hub is not reachable here)",
}


def block(first_command: str) -> str:
    found = [b for b in BLOCKS if b.lstrip().startswith(first_command)]
    assert len(found) == 1, f"expected one README block starting with {first_command!r}, found {len(found)}"
    return found[0]


RUN_HERE = [
    "cat > sft.yaml",
    ".venv/bin/python -m plugin_sdk run diffusion_dpo_trainer",
    ".venv/bin/python -m plugin_sdk run diffusion_grpo_trainer",
    ".venv/bin/python -m plugin_sdk list",
    ".venv/bin/python -m plugin_sdk run diffusion_llm_trainer --config sft.yaml",
    "for p in plugins/*/",
]


def test_every_block_is_run_here_or_named_as_run_elsewhere():
    starts = [*ELSEWHERE, *RUN_HERE]
    unaccounted = [b for b in BLOCKS if not any(b.lstrip().startswith(s) for s in starts)]
    assert not unaccounted, f"README blocks that no test runs: {unaccounted}"
    ci = (REPO / ".ci" / "run").read_text()
    assert "./setup.sh test" in ci and ".venv/bin/ruff check . && .venv/bin/ruff format --check ." in ci
    assert ".venv/bin/ruff check . && .venv/bin/ruff format --check ." in block("./setup.sh test -m")
    # test_demo.py's run of the demo command
    assert '"-m", "demo", "--size", "small"' in (REPO / "tests" / "integration" / "conftest.py").read_text()


@pytest.mark.slow
def test_setup_runs_the_demo_command():
    # the demo's run itself is tests/integration/test_demo.py; here: ./setup.sh demo reaches `python -m demo`
    done = bash("./setup.sh demo --help", REPO)
    assert "--size" in done.stdout and "environment up to date" in done.stdout


def bash(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{script}\n---\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def jobs(workspace: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted((workspace / "jobs").glob("*/index.json"))]
    return sorted(records, key=lambda r: int(r["id"]))


@pytest.mark.slow
def test_terminal_commands_as_written(tmp_path):
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"instruction": f"What is {i} + {i}?", "output": str(2 * i)}) + "\n" for i in range(16))
    )
    (tmp_path / "pairs.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"What is {i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)}) + "\n"
            for i in range(8)
        )
    )
    (tmp_path / "qa.jsonl").write_text(
        "".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(4))
    )
    workspace = tmp_path / "workspace"

    bash(block("cat > sft.yaml"), tmp_path)
    bash(block(".venv/bin/python -m plugin_sdk run diffusion_dpo_trainer"), tmp_path)
    trained = jobs(workspace)
    assert [(r["type"], r["status"]) for r in trained] == [
        ("TRAIN", "COMPLETE"),
        ("TRAIN", "COMPLETE"),
        ("EVAL", "COMPLETE"),
    ]
    assert (workspace / "adaptors" / "tiny-llada" / "my_dpo" / "adapter_config.json").is_file()
    results = next(workspace.glob("experiments/*/evals/*/*/results.json"))
    models = [m["label"] for m in json.loads(results.read_text())["models"]]
    assert models == ["tiny-llada+my_dpo", "tiny-ar"]

    listed = bash(block(".venv/bin/python -m plugin_sdk list"), tmp_path).stdout
    for plugin in ("diffusion_llm_trainer", "diffusion_dpo_trainer", "diffusion_grpo_trainer", "diffusion_evaluator"):
        assert plugin in listed
    assert "gallery and plugins valid" in listed

    bash(block(".venv/bin/python -m plugin_sdk run diffusion_llm_trainer --config sft.yaml"), tmp_path)
    assert jobs(workspace)[-1]["status"] == "COMPLETE"
    assert "Relaunching on 2 processes" in (workspace / "jobs" / "4" / "output_4.txt").read_text()

    bash(block(".venv/bin/python -m plugin_sdk run diffusion_grpo_trainer"), tmp_path)
    assert jobs(workspace)[-1]["status"] == "COMPLETE"
    assert (workspace / "adaptors" / "tiny-llada" / "my_grpo" / "adapter_config.json").is_file()


def test_installing_into_transformer_lab(tmp_path):
    bash(block("for p in plugins/*/"), REPO, HOME=str(tmp_path))
    installed = tmp_path / ".transformerlab" / "workspace" / "plugins"
    assert sorted(p.name for p in installed.iterdir()) == sorted(
        p.name for p in (REPO / "plugins").iterdir() if p.is_dir()
    )
    for plugin in installed.iterdir():
        assert {"index.json", "main.py", "setup.sh", "info.md"} <= {p.name for p in plugin.iterdir()}
        assert (plugin / ".dlm_source").read_text().strip() == str(REPO)
