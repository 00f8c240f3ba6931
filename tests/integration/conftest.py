"""What the integration tests share: a temporary Transformer Lab home and workspace for the tests of the `lab`
backend, and one run of the small demo."""

from __future__ import annotations

import contextlib
import io
import os
import sys
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
    workspace: Workspace
    outcome: dict[str, Any]  # what run_demo returned
    printed: str  # what it printed


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> DemoRun:
    """The small demo with its block-diffusion model, run once per session (minutes): its test checks the report,
    the fast-decoding tests decode with the tiny-llada its SFT stage trained."""
    from demo.run import run_demo

    workspace = Workspace(tmp_path_factory.mktemp("small-demo"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        outcome = run_demo(workspace, "small", block_diffusion=True)
    return DemoRun(workspace, outcome, printed.getvalue())
