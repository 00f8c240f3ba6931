"""Our plugins under the real Transformer Lab host harness (`plugin_harness.py` + its SDK).

Needs a local copy of the host's plugin SDK folder (the one holding `plugin_harness.py`), named by
`TLAB_SDK_DIR`, and the host's `lab` package (`pip install --no-deps transformerlab==0.1.1 aiofiles`), importable
directly or from `TLAB_PYTHONPATH`. Skips cleanly without them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).parent / "plugins" / "contract_probe"
REPO = Path(__file__).resolve().parent.parent
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


def launch_trainer(env, workspace: Path, job_id: str, config: dict) -> tuple[subprocess.CompletedProcess, dict]:
    """What the host does: create the job, write the input file, start the harness."""
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
        "output_dir": str(output_dir),
        "adaptor_output_dir": str(workspace / "adaptors" / "org_tiny" / "probe"),
        **config,
    }
    input_file.write_text(json.dumps({"experiment": {"name": "exp"}, "config": config}))
    cmd = [
        sys.executable,
        str(Path(SDK_DIR) / "plugin_harness.py"),
        "--plugin_dir",
        str(PROBE),
        "--input_file",
        str(input_file),
        "--experiment_name",
        "exp",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    record = json.loads((workspace / "jobs" / job_id / "index.json").read_text())
    return done, record


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
