"""The evaluator's results as today's Transformer Lab shows them: jobs the evaluator really ran as tasks (under the
real `tfl-remote-trap`, see test_lab_backend), read back by the app's own API code.

`ViewEvalResultsModal` and `CompareEvalResultsModal` (transformerlab-app, src/renderer/components/Experiment/Tasks)
take the job's `job_data.eval_results` from `GET /experiment/{id}/jobs/{job_id}` and each file through
`GET .../jobs/{job_id}/get_eval_results?task=view&file_index=i`, which returns `{"header": [...], "body": [[...]]}`;
the views heat-colour and chart the column named `score`, grouped by the first column, and compare jobs only when
their headers are equal. The router function is read from the app's `api/transformerlab/routers/experiment/jobs.py`
(a checkout named by `TLAB_APP_DIR`) and run as it is, with `lab`'s storage and folders; only the FastAPI response
classes and `job_service.job_get` (whose live path is `Job.get(...).get_json_data(uncached=True)`) are stubbed.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_lab_backend import create_job, read_job, run_task, task_yaml

ROUTER = "api/transformerlab/routers/experiment/jobs.py"
FUNCTIONS = ("_normalize_dir_for_compare", "_eval_results_storage_path", "get_eval_results")
# Runs in the task's environment (TFL_HOME_DIR, TFL_WORKSPACE_DIR): the app's functions, their globals from `lab`.
CALL_THE_APP = """
import asyncio, csv, json, posixpath, sys
from json import JSONDecodeError
from types import SimpleNamespace
from lab import Job, storage
from lab.dirs import get_job_eval_results_dir

class Response:  # fastapi.Response: a message the views treat as "no data"
    def __init__(self, content, status_code=200, media_type=None):
        self.content = content

async def job_get(job_id, experiment_id=None):  # job_service.job_get's live path
    return await (await Job.get(job_id, experiment_id)).get_json_data(uncached=True)

namespace = dict(
    asyncio=asyncio, csv=csv, json=json, posixpath=posixpath, JSONDecodeError=JSONDecodeError, storage=storage,
    get_job_eval_results_dir=get_job_eval_results_dir, Response=Response, StreamingResponse=Response,
    job_service=SimpleNamespace(job_get=job_get),
)
exec(compile(sys.argv[1], "transformerlab/routers/experiment/jobs.py", "exec"), namespace)

async def main(experiment, job_ids):
    views = {}
    for job_id in job_ids:
        job = await job_get(job_id, experiment)
        files = job["job_data"].get("eval_results") or []
        views[job_id] = {
            "eval_results": files,
            "score": job["job_data"].get("score"),
            "reports": [await namespace["get_eval_results"](job_id, experiment, "view", i) for i in range(len(files))],
        }
    print(json.dumps(views))

asyncio.run(main(sys.argv[2], sys.argv[3:]))
"""


def app_router_source() -> str:
    """The app's eval-results route and its helpers, as written in its router (decorators dropped)."""
    app = os.environ.get("TLAB_APP_DIR")
    if not app or not (Path(app) / ROUTER).is_file():
        pytest.skip(f"TLAB_APP_DIR does not name a transformerlab-app checkout with {ROUTER}")
    tree = ast.parse((Path(app) / ROUTER).read_text())
    functions = {node.name: node for node in tree.body if getattr(node, "name", None) in FUNCTIONS}
    assert set(functions) == set(FUNCTIONS), f"the app's router changed: found {sorted(functions)}"
    for node in functions.values():
        node.decorator_list = []
    return "\n\n".join(ast.unparse(functions[name]) for name in FUNCTIONS)


def what_the_views_get(env: dict, job_ids: list[str], source: str) -> dict:
    command = [sys.executable, "-c", CALL_THE_APP, source, "exp", *job_ids]
    return json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)


def evaluate(env: dict, tmp_path: Path, data: Path, model: str, compare_with: list[str]) -> str:
    parameters = {
        **task_yaml("diffusion_evaluator")["parameters"],
        "model_name": model,
        "compare_with": compare_with,
        "dataset": str(data),
        "metrics": "perplexity,task_accuracy",
        "mc_num": 4,
        "steps": 8,
        "max_new_tokens": 8,
        "block_length": 8,
        "answer_extraction": "first_number",
    }
    job_id = create_job(env, parameters)
    code, output = run_task(env, tmp_path, "diffusion_evaluator", job_id)
    assert code == 0, output
    return job_id


def test_a_table_without_models_or_generated_text_shows_too(host, tmp_path):
    """Any plugin's `job.save_eval_results(rows)` under lab: `lab.save_artifact(type="evals")` wants input, output,
    expected_output and score columns, which a plain table (the contract probe's) lacks."""
    source = app_router_source()
    env, _ = host
    job_id = create_job(env, {})
    save = (
        "import sys\nfrom pathlib import Path\nfrom plugin_sdk.backends.lab import LabBackend\n"
        "from plugin_sdk.eval_results import results_table\n"
        "backend = LabBackend()\n"
        "rows = [{'test_case_id': i, 'metric_name': 'probe_score', 'score': i / 4} for i in range(3)]\n"
        "backend.save_eval_results(results_table(rows), Path(sys.argv[1]), backend.job_id)\n"
    )
    task_env = {**env, "_TFL_JOB_ID": job_id, "_TFL_EXPERIMENT_ID": "exp"}
    subprocess.run([sys.executable, "-c", save, str(tmp_path / "report")], env=task_env, check=True)
    view = what_the_views_get(env, [job_id], source)[job_id]
    assert [Path(p).name for p in view["eval_results"]] == ["eval_results.csv"]
    (report,) = view["reports"]
    assert report["header"] == ["metric_name", "score", "input", "output", "expected_output", "test_case_id"]
    assert [row[:2] + row[5:] for row in report["body"]] == [["probe_score", str(i / 4), str(i)] for i in range(3)]


def records(report: dict) -> list[dict]:
    return [dict(zip(report["header"], row, strict=True)) for row in report["body"]]


@pytest.mark.slow
def test_the_apps_result_views_get_each_models_table_the_comparison_and_the_score(host, tmp_path):
    source = app_router_source()
    env, workspace = host
    data = tmp_path / "qa.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(3))
    )
    compared = evaluate(env, tmp_path, data, "tiny-llada", ["tiny-ar"])
    alone = evaluate(env, tmp_path, data, "tiny-a2d", [])
    views = what_the_views_get(env, [compared, alone], source)
    if os.environ.get("DLM_EVAL_VIEWS_RECORD"):  # what tests/browser/eval_views renders the app's modals with
        Path(os.environ["DLM_EVAL_VIEWS_RECORD"]).write_text(json.dumps(views, indent=1, ensure_ascii=False))

    view = views[compared]
    assert [Path(p).name for p in view["eval_results"]] == [
        "eval_results_tiny-llada.csv",
        "eval_results_tiny-ar.csv",
        "eval_results_comparison.csv",
    ]
    assert all(Path(p).parent.name == "eval_results" for p in view["eval_results"])
    llada, ar, comparison = (records(report) for report in view["reports"])
    # the first column is what the views chart by, `score` what they colour and chart
    assert view["reports"][0]["header"][:5] == ["metric_name", "score", "input", "output", "expected_output"]
    answers = [r for r in llada if r["metric_name"] == "answer_correct"]
    assert [(r["input"], r["expected_output"]) for r in answers] == [
        (f"What is {i} + {i}?", str(2 * i)) for i in range(3)
    ]
    assert all(r["output"] and r["score"] in {"0.0", "1.0"} for r in answers)
    # the job's score (what the jobs list shows and sweeps rank on) is the main model's metrics, by value
    score = {metric: value for metric, value in view["score"].items() if metric != "discard"}  # lab adds discard
    assert next(iter(score)) == "task_accuracy"  # the jobs list shows the first: the headline metric
    assert {"perplexity", "task_accuracy"} <= set(score)
    for metric, value in score.items():
        (row,) = [r for r in llada if r["metric_name"] == metric]
        assert float(row["score"]) == pytest.approx(value)
    assert score["task_accuracy"] == pytest.approx(sum(float(r["score"]) for r in answers) / 3)
    # the comparison: every metric of each model, side by side, with the value of the model's own table
    assert {r["model"] for r in ar} == {"tiny-ar"} and {r["metric_name"] for r in ar} >= {
        "perplexity",
        "answer_correct",
    }
    metric_rows = {(r["metric_name"], r["model"]): r["score"] for r in (*llada, *ar) if r["test_case_id"] == r["model"]}
    assert {(r["metric_name"], r["model"]): r["score"] for r in comparison} == metric_rows
    assert all(r["metric_and_model"] == f"{r['metric_name']} · {r['model']}" for r in comparison)
    names = [r["metric_name"] for r in comparison]
    assert names == sorted(names, key=names.index)  # a metric's models side by side

    # CompareEvalResultsModal compares the jobs' first files only when their headers are equal
    other = views[alone]
    assert [Path(p).name for p in other["eval_results"]] == ["eval_results_tiny-a2d.csv"]
    assert other["reports"][0]["header"] == view["reports"][0]["header"]
    assert read_job(workspace, alone)["status"] == "COMPLETE"
