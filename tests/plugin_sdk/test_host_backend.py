"""The host backend (`plugin_sdk.backends.host.HostBackend`) against a fake of the plugin-era SDK (tests/fake_host), in
CI: the probe plugin runs in this process as under the host's harness, and the fake records what reached the host.
The real harness is tests/integration/test_host_harness.py, for machines that have it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from plugin_sdk.backends.base import EXIT_FAILED, EXIT_STOPPED
from plugin_sdk.job import run_job

PROBE = Path(__file__).parents[1] / "fixtures" / "plugins" / "contract_probe"
FAKE_HOST = Path(__file__).parents[1] / "fake_host"


@pytest.fixture
def host(tmp_path, monkeypatch):
    """The fake SDK importable as `transformerlab`, a host workspace, and `DLM_BACKEND=host` (as under the
    harness); yields the fake's state module."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    monkeypatch.setenv("TFL_WORKSPACE_DIR", str(workspace))
    monkeypatch.setenv("DLM_BACKEND", "host")
    monkeypatch.syspath_prepend(str(FAKE_HOST))
    for name in [m for m in sys.modules if m == "transformerlab" or m.startswith("transformerlab.")]:
        monkeypatch.delitem(sys.modules, name)
    from transformerlab import _state

    yield _state
    for name in [m for m in sys.modules if m == "transformerlab" or m.startswith("transformerlab.")]:
        del sys.modules[name]


def host_params(workspace: Path, **values) -> dict:
    """What the host passes a trainer: its job id and output folders, and the form's values as strings."""
    return {
        "job_id": "7",
        "experiment_name": "exp",
        "template_name": "probe",
        "model_name": "org/tiny",
        "output_dir": str(workspace / "experiments" / "exp" / "tensorboards" / "probe"),
        "adaptor_output_dir": str(workspace / "adaptors" / "org_tiny" / "probe"),
        "required_note": "from the host",
        "_private": "never a parameter",
        "unset": None,
        **values,
    }


def run_probe(plugin_dir: Path = PROBE) -> int:
    spec = importlib.util.spec_from_file_location("contract_probe_main", plugin_dir / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        run_job(plugin_dir / "main.py", module.probe, argv=[])
    except SystemExit as exit:
        return int(exit.code)
    return 0


def test_a_job_reports_through_the_host_sdk(host, tmp_path):
    workspace = tmp_path / "workspace"
    host.reset(host_params(workspace, steps="4", learning_rate="0.001"))
    assert run_probe() == 0
    record = host.record
    assert record["status"] == "COMPLETE"
    assert record["progress"] == 100
    data = record["job_data"]
    assert data["completion_status"] == "success"
    assert data["completion_details"] == "probed 4 steps on 1 process(es)"
    # the host's parameters were coerced against index.json: steps is the number 4, not "4"
    assert data["config"]["steps"] == 4 and data["config"]["learning_rate"] == 0.001
    assert "_private" not in data["config"] and "unset" not in data["config"]
    statuses = [c[1] for c in host.calls if c[0] == "update_status"]
    assert statuses == ["RUNNING", "COMPLETE"]
    progress = [c[1] for c in host.calls if c[0] == "progress_update"]
    # each step's percentage, then the same again when the job asks the host whether to stop
    assert list(dict.fromkeys(progress)) == [25, 50, 75, 100]
    adapter = workspace / "adaptors" / "org_tiny" / "probe" / "adapter.json"
    assert json.loads(adapter.read_text()) == {"steps": 4}


def test_the_host_stop_flag_stops_the_job_at_a_step(host, tmp_path):
    workspace = tmp_path / "workspace"
    host.reset(host_params(workspace, steps="50", step_seconds="0"))
    host.stop = True
    assert run_probe() == EXIT_STOPPED
    assert host.record["status"] == "STOPPED"
    assert host.record["job_data"]["completion_details"].startswith("Stopped by user")
    assert "completion_status" not in host.record["job_data"]
    checkpoint = workspace / "experiments" / "exp" / "tensorboards" / "probe" / "checkpoints_job_7" / "state.json"
    assert json.loads(checkpoint.read_text()) == {"step": 1}  # stopped after the first step, with a checkpoint


def test_a_failure_reaches_the_host_with_its_reason(host, tmp_path):
    host.reset(host_params(tmp_path / "workspace", steps="3", fail_at_step="2"))
    assert run_probe() == EXIT_FAILED
    assert host.record["status"] == "FAILED"
    assert host.record["job_data"]["completion_status"] == "failed"
    assert host.record["job_data"]["completion_details"] == "RuntimeError: deliberate failure at step 2"


def test_bad_host_parameters_fail_before_the_job_runs(host, tmp_path):
    host.reset(host_params(tmp_path / "workspace", steps="many"))
    assert run_probe() == EXIT_FAILED
    assert host.record["status"] == "FAILED"
    assert "steps" in host.record["job_data"]["completion_details"]
    assert not [c for c in host.calls if c[0] == "progress_update"]


def test_an_evaluator_saves_its_results_through_the_host(host, tmp_path):
    plugin = tmp_path / "contract_probe"
    shutil.copytree(PROBE, plugin)
    manifest = json.loads((plugin / "index.json").read_text())
    (plugin / "index.json").write_text(json.dumps({**manifest, "type": "evaluator", "evalsType": "model"}))
    host.reset(host_params(tmp_path / "workspace", steps="2"))
    assert run_probe(plugin) == 0
    assert ("save_evaluation_results", 5) in host.calls
    data = host.record["job_data"]
    assert json.loads(data["score"]) == [{"type": "probe_score", "score": 0.5}]
    assert Path(data["additional_output_path"]).read_text().splitlines()[0] == "test_case_id,metric_name,score"
    assert json.loads(Path(data["plot_data_path"]).read_text())[1] == {
        "test_case_id": 1,
        "metric_name": "probe_score",
        "score": 0.25,
    }


def test_a_saved_model_is_registered_with_the_host(host, tmp_path):
    from plugin_sdk.backends.host import HostBackend

    host.reset({})
    backend = HostBackend("trainer")
    assert backend.workspace.root == tmp_path / "workspace"
    model_dir = tmp_path / "workspace" / "models" / "tiny_sft"
    backend.register_model(model_dir, name="tiny_sft", architecture="LLaDAModelLM", json_data={}, provenance={})
    assert host.calls == [
        ("create_transformerlab_model", "tiny_sft", "LLaDAModelLM", str(tmp_path / "workspace" / "models"))
    ]
