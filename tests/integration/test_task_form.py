"""Each plugin's task form, as the Queue Task modal of today's Transformer Lab submits it, reaches the plugin through
the `lab` backend as the intended parameters: recordings of the app's own modal in Chromium
(tests/fixtures/task_form/, made by tests/browser/task_form/check_task_form.mjs) and tests/task_form.py, the same
rules in Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from plugin_sdk.backends import lab as lab_backend
from plugin_sdk.errors import ParameterError
from plugin_sdk.manifest import load_manifest
from plugin_sdk.params import coerce_and_validate
from tests.task_form import STRIPPED, job_parameters, modal_submission

REPO = Path(__file__).resolve().parents[2]
FIXTURES = sorted((REPO / "tests" / "fixtures" / "task_form").glob("*.json"))
SCENARIOS = json.loads((REPO / "tests" / "browser" / "task_form" / "scenarios.json").read_text())
PLUGIN_IDS = ("diffusion_llm_trainer", "diffusion_dpo_trainer", "diffusion_grpo_trainer", "diffusion_evaluator")


def declared(plugin_id: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "plugins" / plugin_id / "task.yaml").read_text())["parameters"]


class RecordingLab:
    """`lab` as the task sees it: `get_config()` is `job_data.parameters`."""

    def __init__(self, parameters: dict[str, Any] | None) -> None:
        self.parameters = parameters

    def get_config(self) -> dict[str, Any]:
        return dict(self.parameters or {})

    def get_checkpoint_to_resume(self) -> None:
        return None


def read_by_plugin(plugin_id: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """What the plugin's job reads from `job_data.parameters`: the lab backend's host parameters, coerced and
    checked against index.json (plugin_sdk.job does the same)."""
    backend = object.__new__(lab_backend.LabBackend)  # without attaching to a host's job: only the reading is tested
    backend.lab, backend.job_id, backend.experiment = RecordingLab(parameters), "1", "exp"
    manifest = load_manifest(REPO / "plugins" / plugin_id)
    return coerce_and_validate(
        backend.host_parameters(), manifest["parameters"], aliases=manifest.get("parameter_aliases")
    )


def test_every_scenario_is_recorded():
    recorded = {(r["plugin"], r["scenario"]) for r in map(json.loads, (f.read_text() for f in FIXTURES))}
    assert recorded == {(plugin, s["name"]) for plugin, scenarios in SCENARIOS.items() for s in scenarios}
    assert set(SCENARIOS) == set(PLUGIN_IDS)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.stem)
def test_the_recordings_are_of_todays_task_files(fixture):
    """The page read task.yaml (js-yaml) as the app does (PyYAML); its keys, types and defaults are today's."""
    record = json.loads(fixture.read_text())
    now = declared(record["plugin"])
    assert list(record["parameters"]) == list(now), f"{fixture.name}: rerun check_task_form.mjs --fixtures"
    for key, declaration in now.items():
        shown = record["parameters"][key]
        assert (shown["type"], shown["default"], shown.get("options")) == (
            declaration["type"],
            declaration["default"],
            declaration.get("options"),
        ), f"{fixture.name}: {key} changed since the recording: rerun check_task_form.mjs --fixtures"
    assert record["json_editor_shown"] is False  # every list is a text field


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.stem)
def test_the_python_rules_submit_what_the_browser_did(fixture):
    record = json.loads(fixture.read_text())
    refused, config = modal_submission(record["parameters"], record["actions"])
    assert refused == record["refused"]
    assert config == record["config"]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.stem)
def test_recorded_submissions_reach_the_plugin_as_intended(fixture):
    record = json.loads(fixture.read_text())
    plugin_id = record["plugin"]
    if "refused" in SCENARIOS_BY_NAME[plugin_id, record["scenario"]]:
        assert record["refused"] == SCENARIOS_BY_NAME[plugin_id, record["scenario"]]["refused"]
        (key, typed), *_ = ((a[1], a[2]) for a in record["actions"] if a[0] == "fill")
        sent = job_parameters(declared(plugin_id), {key: typed})
        if record["plugin_refuses"]:  # the modal's bound is the plugin's
            with pytest.raises(ParameterError, match=key):
                read_by_plugin(plugin_id, sent)
        else:
            read_by_plugin(plugin_id, sent)
        return
    assert record["refused"] is None
    read = read_by_plugin(plugin_id, job_parameters(declared(plugin_id), record["config"]))
    intended = record["intended"]
    defaults = {key: prop["default"] for key, prop in load_manifest(REPO / "plugins" / plugin_id)["parameters"].items()}
    # the model fields: an untouched picker sends null, which the plugin reads as not given
    _, untouched = modal_submission(declared(plugin_id), [])
    host = {key: untouched[key] for key in declared(plugin_id) if key not in defaults}
    for key, default in {**host, **defaults}.items():
        expected = intended.get(key, default)
        assert read.get(key) == expected, key
        assert isinstance(read.get(key), bool | str | list) == isinstance(expected, bool | str | list), key
    assert set(intended) <= {*host, *defaults}


SCENARIOS_BY_NAME = {(plugin, s["name"]): s for plugin, scenarios in SCENARIOS.items() for s in scenarios}


@pytest.mark.parametrize("plugin_id", PLUGIN_IDS)
def test_no_parameter_is_a_setting_of_the_modal(plugin_id):
    """The modal writes its own settings into the same object as the parameters, after them: a parameter with such a
    name would be overwritten (or stripped by Tasks.tsx)."""
    assert not set(declared(plugin_id)) & {*STRIPPED, *lab_backend.MODAL_LAUNCH_KEYS}


def test_a_launch_the_modal_sent_nothing_for_reads_the_defaults_and_drops_launch_settings():
    """A job launched with the declarations alone (no `config`) reads each default; the launch settings the modal adds
    to a submission (a resource group, spot instances) do not reach the plugin as unknown parameters."""
    plugin_id = "diffusion_dpo_trainer"
    config = {"resource_group_id": "g1", "resource_group_name": "A100s", "use_spot": True, "beta": 0.3}
    read = read_by_plugin(plugin_id, job_parameters(declared(plugin_id), config))
    assert read["beta"] == 0.3 and read["learning_rate"] == 5e-06
    assert "resource_group_id" not in read and "use_spot" not in read


def test_lab_gives_a_recorded_submission_back_as_launched(tmp_path):
    """Through the real `lab` package: the job record keeps `job_data.parameters` as launched from a recorded
    submission, and `lab.get_config()` in the task's process returns them unchanged."""
    from tests.integration.test_lab_backend import EXPERIMENT, create_job

    home = tmp_path / "tfl"
    (home / "workspace").mkdir(parents=True)
    env = {**os.environ, "TFL_HOME_DIR": str(home), "TFL_WORKSPACE_DIR": str(home / "workspace")}
    env.pop("DLM_BACKEND", None)
    record = json.loads((REPO / "tests" / "fixtures" / "task_form" / "diffusion_evaluator-edited.json").read_text())
    launched = job_parameters(declared("diffusion_evaluator"), record["config"])
    job_id = create_job(env, launched)
    script = "import json\nfrom lab import lab\nlab.init()\nprint(json.dumps(lab.get_config()))\n"
    task_env = {**env, "_TFL_JOB_ID": job_id, "_TFL_EXPERIMENT_ID": EXPERIMENT}
    done = subprocess.run([sys.executable, "-c", script], env=task_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == launched
    assert read_by_plugin("diffusion_evaluator", got)["metrics"] == ["perplexity", "task_accuracy"]
