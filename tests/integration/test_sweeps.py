"""The trainers' sweeps, with the transformerlab-app's own code (TLAB_APP_DIR, see tlab_app): each sweep is a task of
its own, `plugins/<id>/sweep/task.yaml` (generated from settings.py's SWEEP), because the app's task.yaml parsing
turns `sweeps` into the task's sweep settings, which every launch of the task then runs (the plain task stays a
single run); its launch expands them into one job's parameters per combination
(launch_sweep.launch_sweep_jobs), and its sweep results rank the finished jobs by the metric each reported in its
score (sweep_job_service.get_sweep_results); the jobs are our plugins run as the host runs a task.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab.job_status import JobStatus
from pydantic import ValidationError
from werkzeug.utils import secure_filename

from plugin_sdk.manifest import load_manifest
from plugin_sdk.params import coerce_and_validate
from tests.integration import tlab_app
from tests.integration.test_lab_backend import create_job, read_job, run_task, write_chat_data

REPO = Path(__file__).resolve().parents[2]
TRAINERS = {
    "diffusion_llm_trainer": ("val/loss", True),
    "diffusion_dpo_trainer": ("val/rewards/accuracies", False),
}


@pytest.fixture
def parse(monkeypatch):
    """The app's task.yaml → task record (routers/experiment/task.py: _parse_yaml_to_task_data)."""
    monkeypatch.setitem(sys.modules, "fastapi", tlab_app.fastapi_stub())
    schema = tlab_app.load_module(tlab_app.SCHEMA, "tlab_task_schema")
    namespace = {
        "yaml": yaml,
        "TaskYamlSpec": schema.TaskYamlSpec,
        "ValidationError": ValidationError,
        "HTTPException": tlab_app.HTTPException,
        "secure_filename": secure_filename,
    }
    parse_yaml = tlab_app.functions(tlab_app.ROUTER, ["_parse_yaml_to_task_data"], namespace)._parse_yaml_to_task_data

    def parse_task(plugin_id: str, variant: str = "sweep") -> dict[str, Any]:
        """The task record of the plugin's sweep task (`variant=""`: of its plain task)."""
        return parse_yaml((REPO / "plugins" / plugin_id / variant / "task.yaml").read_text(encoding="utf-8"))

    return parse_task


def expand(sweep_config: dict[str, list], base_parameters: dict[str, Any]) -> list[tuple[dict, dict]]:
    """(the combination, the job's parameters) for each job of the sweep, by the app's launch code."""
    namespace: dict[str, Any] = {"sweep_config": sweep_config, "product": itertools.product}
    exec(tlab_app.statements_of(tlab_app.LAUNCH_SWEEP, "launch_sweep_jobs", "param_names", "total_configs"), namespace)
    merge = tlab_app.statements_of(tlab_app.LAUNCH_SWEEP, "launch_sweep_jobs", "merged_params", "merged_params")
    jobs = []
    for config_params in namespace["configs"]:
        scope = {"base_parameters": base_parameters, "config_params": config_params}
        exec(merge, scope)
        jobs.append((config_params, scope["merged_params"]))
    return jobs


def defaults(parameters: dict[str, Any]) -> dict[str, Any]:
    """The values a launch starts from: task.yaml's defaults (a typed parameter's `default`, or the plain value)."""
    return {k: v["default"] if isinstance(v, dict) and "default" in v else v for k, v in parameters.items()}


@pytest.mark.parametrize("plugin_id", TRAINERS)
def test_the_apps_sweep_expansion_gives_valid_jobs_of_our_plugin(parse, plugin_id):
    task = parse(plugin_id)
    metric, lower_is_better = TRAINERS[plugin_id]
    assert task["run_sweeps"] is True
    assert task["name"] == f"{plugin_id.replace('_', '-')}-sweep"
    assert (task["sweep_metric"], task["lower_is_better"]) == (metric, lower_is_better)
    assert {"learning_rate", "lora_r"} <= set(task["sweep_config"])
    jobs = expand(task["sweep_config"], defaults(task["parameters"]))
    assert len(jobs) == 4 and len({json.dumps(c, sort_keys=True) for c, _ in jobs}) == 4
    schema = load_manifest(REPO / "plugins" / plugin_id)["parameters"]
    for combination, parameters in jobs:
        values = coerce_and_validate({k: v for k, v in parameters.items() if k != "model_name"}, schema)
        assert {k: values[k] for k in combination} == combination, "each job runs with its combination"


@pytest.mark.parametrize("plugin_id", TRAINERS)
def test_the_plain_task_is_a_single_run(parse, plugin_id):
    """The app ORs the task's `run_sweeps` into every launch (Tasks.tsx): the plain task sets none, so a queue of
    it with the sweep switch off is one job; the sweep task is the plain one plus its sweep settings."""
    plain, sweep = parse(plugin_id, ""), parse(plugin_id)
    sweep_keys = {"run_sweeps", "sweep_config", "sweep_metric", "lower_is_better"}
    assert not sweep_keys & set(plain)
    assert {k: v for k, v in sweep.items() if k not in sweep_keys} == {**plain, "name": f"{plain['name']}-sweep"}
    assert sweep["github_repo_dir"] == plain["github_repo_dir"] == f"plugins/{plugin_id}"


def sweep_results(parent: dict, children: dict[str, dict]) -> dict:
    """The app's ranking of a sweep's finished jobs (sweep_job_service.get_sweep_results) over job records."""
    records = {"parent": parent, **children}

    async def job_get(job_id: str, experiment_id: str | None = None) -> dict:
        return records[job_id]

    async def ignore(*args: Any) -> None:
        return None

    job_service = types.SimpleNamespace(job_get=job_get, job_update_job_data_insert_key_value=ignore)
    namespace = {
        "job_service": job_service,
        "HTTPException": tlab_app.HTTPException,
        "JobStatus": JobStatus,
        "Dict": dict,
        "Any": Any,
    }
    function = tlab_app.functions(tlab_app.SWEEP_RESULTS, ["get_sweep_results"], namespace).get_sweep_results
    return asyncio.run(function("parent", "exp"))["data"]


def write_pairs(path: Path, n: int = 24) -> str:
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("plugin_id", TRAINERS)
def test_each_job_of_a_sweep_reports_the_metric_it_is_ranked_by(parse, host, tmp_path, plugin_id):
    """Two jobs of the app's expansion run as tasks; the app ranks them by the metric each put in its score, which
    is the last value of it the job logged (metrics.jsonl)."""
    env, workspace = host
    task = parse(plugin_id)
    metric = task["sweep_metric"]
    data = write_chat_data(tmp_path / "chat.jsonl") if plugin_id == "diffusion_llm_trainer" else None
    tiny = {
        "model_name": "tiny-llada",
        "dataset": data or write_pairs(tmp_path / "pairs.jsonl"),
        "train_device": "cpu",
        "dtype": "float32",
        "batch_size": 2,
        "max_length": 64,
        "num_train_epochs": 0,
        "train_steps": 2,
        "warmup_steps": 0,
        "logging_steps": 1,
        "validation_fraction": 0.25,
        "mc_samples": 2,
    }
    start = defaults(task["parameters"])
    base = {**start, **{key: value for key, value in tiny.items() if key in start}}  # what the plugin has of them
    jobs = expand(task["sweep_config"], base)[:2]
    children = {}
    for index, (combination, parameters) in enumerate(jobs):
        job_id = create_job(env, parameters, sweep_params=combination, sweep_run_index=index)
        code, output = run_task(env, tmp_path, plugin_id, job_id)
        assert code == 0, output
        children[job_id] = read_job(workspace, job_id)
        logged = [
            json.loads(line)["metrics"]
            for line in (Path(workspace) / "experiments" / "exp" / "jobs" / job_id / "metrics.jsonl")
            .read_text()
            .splitlines()
            if metric in line
        ]
        assert logged, f"{plugin_id} logged no {metric}:\n{output}"
        assert children[job_id]["job_data"]["score"][metric] == pytest.approx(logged[-1][metric])
    parent = {
        "type": "SWEEP",
        "job_data": {
            "sweep_parent": True,
            "sweep_job_ids": list(children),
            "sweep_config": task["sweep_config"],
            "sweep_metric": metric,
            "lower_is_better": task["lower_is_better"],
        },
    }
    results = sweep_results(parent, children)
    scores = {job_id: record["job_data"]["score"][metric] for job_id, record in children.items()}
    assert {r["job_id"]: r["metric_value"] for r in results["results"]} == scores
    best = (min if task["lower_is_better"] else max)(scores, key=scores.get)
    assert results["best_metric"] == {metric: scores[best]}
    assert results["best_config"] == children[best]["job_data"]["sweep_params"]
