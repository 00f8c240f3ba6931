"""What the integration tests share: a temporary Transformer Lab home and workspace for the tests of the `lab`
backend, and one run of the small demo."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plugin_sdk.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
WRAPPER = Path(sys.executable).with_name("tfl-remote-trap")


@pytest.fixture
def host(tmp_path):
    """A temporary Transformer Lab home and workspace, and the environment a task's processes get."""
    home = tmp_path / "tfl"
    (home / "workspace").mkdir(parents=True)
    env = {
        **os.environ,
        "TFL_HOME_DIR": str(home),
        "TFL_WORKSPACE_DIR": str(home / "workspace"),
        "PYTHONPATH": str(REPO),
        "PATH": f"{WRAPPER.parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("DLM_BACKEND", None)
    return env, home / "workspace"


@dataclass(frozen=True)
class DemoRun:
    """`python -m demo --size small --block-diffusion` in its own workspace: its exit code and what it printed."""

    workspace: Workspace
    returncode: int
    printed: str


@dataclass(frozen=True)
class RlStageRun:
    """The demo's RL stage (`demo.rl`) in its own workspace: its stages, or the error that ended it."""

    workspace: Workspace
    stages: list[Any]
    error: Exception | None
    printed: str


def _run_rl_stage(workspace: Workspace) -> RlStageRun:
    """The RL stage as `--rl` runs it, on the small demo's task."""
    from demo import rl
    from demo.run import SIZES, recipe, run_stage, write_datasets

    size = SIZES["small"]
    jobs = recipe(size, rl_stage=True)
    printed, stages, error = io.StringIO(), [], None

    def stage(name: str, plugin: str, params: Mapping[str, Any]) -> Any:
        return run_stage(name, plugin, params, workspace, verbose=False)

    with contextlib.redirect_stdout(printed):
        try:
            write_datasets(workspace, size, 0, rl_stage=True)
            stages = rl.run_rl_stages(workspace, jobs, jobs["evaluate"], stage)
        except Exception as exc:  # the RL test reports it; the demo's own test still gets its run
            error = exc
    return RlStageRun(workspace, stages, error, printed.getvalue())


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory) -> tuple[DemoRun, RlStageRun]:
    """The small demo with its block-diffusion model and, side by side with it (minutes each, one process each, so
    CI's two cores run both at once), its RL stage; once per session."""
    demo = Workspace(tmp_path_factory.mktemp("small-demo"))
    log = demo.root / "demo-terminal.txt"
    with log.open("w") as terminal:
        command = [sys.executable, "-m", "demo", "--size", "small", "--block-diffusion", "--workspace", str(demo.root)]
        process = subprocess.Popen(command, cwd=REPO, stdout=terminal, stderr=subprocess.STDOUT)
        try:
            rl_run = _run_rl_stage(Workspace(tmp_path_factory.mktemp("demo-rl")))
        except BaseException:  # interrupted: the demo need not finish
            process.kill()
            raise
        returncode = process.wait()
    return DemoRun(demo, returncode, log.read_text()), rl_run


@pytest.fixture(scope="session")
def small_demo(demo_runs: tuple[DemoRun, RlStageRun]) -> DemoRun:
    """The small demo's run: its test checks the report, the fast-decoding tests decode with the tiny-llada its SFT
    stage trained."""
    return demo_runs[0]


@pytest.fixture(scope="session")
def small_demo_rl(demo_runs: tuple[DemoRun, RlStageRun]) -> RlStageRun:
    return demo_runs[1]
