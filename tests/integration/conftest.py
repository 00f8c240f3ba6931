"""What the integration tests of the `lab` backend share: a temporary Transformer Lab home and workspace."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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
