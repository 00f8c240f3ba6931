"""What reaches the job record and the trackers: configuration without credentials; result files others can read."""

import csv
import json
import stat

import pytest

from plugin_sdk.safe_files import write_json_atomic
from plugin_sdk.tracking import RunSettings, Tracker, default_run_name, public_config, run_settings


def test_credentials_are_dropped_and_ordinary_names_kept():
    config = {
        "hf_token": "hf_x",
        "wandb_api_key": "k",
        "WANDB-API-KEY": "k",
        "db_password": "p",
        "client_secret": "s",
        "max_new_tokens": 32,
        "tokenizer_name": "t",
        "keyword": "x",
        "learning_rate": 1e-3,
    }
    assert public_config(config) == {
        "max_new_tokens": 32,
        "tokenizer_name": "t",
        "keyword": "x",
        "learning_rate": 1e-3,
    }


def test_json_results_are_written_whole_and_readable_by_others(tmp_path):
    target = tmp_path / "out" / "results.json"
    target.parent.mkdir()
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]


# ---- run names, W&B settings, resumed runs, CSV ------------------------------------------------------------------

W_AND_B_ENV = ("WANDB_PROJECT", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_TAGS")


@pytest.fixture
def clean_env(monkeypatch):
    for name in W_AND_B_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_default_run_names_count_versions(tmp_path):
    params = {"model_name": "small-llada", "corpus": "/data/TinyStories-train.txt.gz"}
    assert default_run_name(params, tmp_path) == "llada-TinyStories-train-small-v1"
    (tmp_path / "llada-TinyStories-train-small-v1").mkdir()
    (tmp_path / "llada-TinyStories-train-small-v7").mkdir()
    (tmp_path / "llada-TinyStories-train-small-v2x").mkdir()
    assert default_run_name(params, tmp_path) == "llada-TinyStories-train-small-v8"
    checkpoint = {"model_name": "GSAI-ML/LLaDA-8B-Instruct", "dataset": "alpaca.jsonl"}
    assert default_run_name(checkpoint, tmp_path) == "LLaDA-8B-Instruct-alpaca-v1"
    baseline = {"model_name": "tiny-ar", "training_method": "ar", "dataset_name": "hf:tatsu-lab/alpaca"}
    assert default_run_name(baseline, tmp_path) == "ar-alpaca-tiny-v1"


def test_parameters_win_over_the_environment_which_wins_over_defaults(tmp_path, clean_env):
    params = {"model_name": "tiny-llada", "dataset": "d.jsonl"}
    assert run_settings(params, tmp_path) == RunSettings("llada-d-tiny-v1", "dlm-plugins", None, [])
    for name, value in zip(W_AND_B_ENV, ("envproj", "envname", "envgroup", "a, b"), strict=True):
        clean_env.setenv(name, value)
    assert run_settings(params, tmp_path) == RunSettings("envname", "envproj", "envgroup", ["a", "b"])
    given = {**params, "wandb_project": "p", "wandb_run_name": "r/1", "wandb_group": "g", "wandb_tags": "x,y"}
    assert run_settings(given, tmp_path) == RunSettings("r_1", "p", "g", ["x", "y"])


def make_tracker(out, job_id, params, records, log_to_wandb=True):
    return Tracker(
        out,
        log_to_wandb=log_to_wandb,
        run=run_settings(params, out),
        config=params,
        set_job_data=lambda k, v: records.__setitem__(k, v),
        log=lambda m: None,
        state_dir=out / f"checkpoints_job_{job_id}",
        csv_name=f"metrics_job_{job_id}.csv",
    )


def test_a_resumed_job_continues_the_same_run_and_writes_its_own_csv(tmp_path, clean_env):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    params = {"model_name": "small-ar", "corpus": "web.txt", "wandb_tags": "seed"}
    first_data: dict = {}
    first = make_tracker(tmp_path, 1, params, first_data)
    first.log_metrics({"train/loss": 2.5, "train/lr": 1e-4}, step=1)
    first.log_metrics({"train/loss": 2.0, "val/loss": 2.2}, step=2)
    first.close()
    checkpoint = tmp_path / "checkpoints_job_1" / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    state = json.loads((tmp_path / "checkpoints_job_1" / "run.json").read_text())
    assert state["name"] == "ar-web-small-v1" and state["wandb_id"] and state["tags"] == ["seed"]

    second_data: dict = {}
    second = make_tracker(tmp_path, 2, {**params, "resume_from_checkpoint": "latest"}, second_data)
    second.log_metrics({"train/loss": 1.5}, step=3)
    second.close()
    assert second.run.resumed and second.run.name == "ar-web-small-v1" and second.run.wandb_id == state["wandb_id"]
    assert second_data["tensorboard_output_dir"] == first_data["tensorboard_output_dir"]
    assert json.loads((tmp_path / "checkpoints_job_2" / "run.json").read_text())["wandb_id"] == state["wandb_id"]
    # one TensorBoard folder holds the whole curve
    events = EventAccumulator(first_data["tensorboard_output_dir"])
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    # the CSVs: one per job, the same metric names as TensorBoard, exact values
    rows = {}
    for job in (1, 2):
        with open(tmp_path / "ar-web-small-v1" / f"metrics_job_{job}.csv") as handle:
            rows[job] = [(int(r["step"]), r["metric"], float(r["value"])) for r in csv.DictReader(handle)]
    assert rows[1] == [(1, "train/loss", 2.5), (1, "train/lr", 1e-4), (2, "train/loss", 2.0), (2, "val/loss", 2.2)]
    assert rows[2] == [(3, "train/loss", 1.5)]
    assert {name for _, name, _ in rows[1]} == set(events.Tags()["scalars"])
    # the latest values: per job, and the host's shared metrics.json as the last job left it
    run_dir = tmp_path / "ar-web-small-v1"
    assert json.loads((run_dir / "metrics_job_1.json").read_text()) == {
        "train/loss": 2.0,
        "train/lr": 1e-4,
        "val/loss": 2.2,
    }
    assert json.loads((run_dir / "metrics_job_2.json").read_text()) == {"train/loss": 1.5}
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"train/loss": 1.5}
    # a new job that does not resume starts version 2
    assert run_settings(params, tmp_path).name == "ar-web-small-v2"
