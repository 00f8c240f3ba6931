"""What the plugin mains share (plugin_sdk.plugin): the "no model" check, a trainer's outputs planned before training
and its ending (stopped, or outputs published), with a recording job."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from plugin_sdk.errors import JobStopped, ParameterError
from plugin_sdk.outputs import OutputTaken
from plugin_sdk.plugin import PlannedOutputs, finish_training, plan_outputs, require_model


class RecordingJob:
    def __init__(self, root: Path, *, lora: bool, save_full_model: bool) -> None:
        self.is_main_process = True
        self.params = SimpleNamespace(
            model_name="org/tiny-llada", adaptor_name="sft", lora=lora, save_full_model=save_full_model
        )
        self.adaptor_dir = root / "adaptors" / "org_tiny-llada" / "sft"
        self.root = root
        self.workspace = SimpleNamespace(root=root)  # the outputs are checked for links below it
        self.progress_reported: list[float] = []
        self.registered: list[tuple[Path, str]] = []

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def log(self, message: str) -> None:
        pass

    def report_status(self, phase: str) -> None:
        pass

    def progress(self, percent: float) -> None:
        self.progress_reported.append(percent)

    def register_model(self, model_dir: Path, *, architecture: str) -> None:
        self.registered.append((model_dir, architecture))


def recording_save(calls: list[dict]):
    def save(result, *, adaptor_dir: Path | None, full_model_dir: Path | None) -> list[Path]:
        calls.append({"result": result, "adaptor_dir": adaptor_dir, "full_model_dir": full_model_dir})
        if full_model_dir is not None:
            full_model_dir.mkdir(parents=True)
            (full_model_dir / "config.json").write_text(json.dumps({"architectures": ["LLaDAModelLM"]}))
        return [d for d in (adaptor_dir, full_model_dir) if d is not None]

    return save


def test_no_model_says_how_to_name_one():
    assert require_model("tiny-llada") == "tiny-llada"
    with pytest.raises(ParameterError) as trainer:
        require_model(None)
    assert str(trainer.value) == (
        "no model: set model_name (a local checkpoint, a hub id, or a tiny preset such as tiny-llada)"
    )
    with pytest.raises(ParameterError, match=r"or a preset such as tiny-llada\)$"):
        require_model("", presets="a preset such as tiny-llada")


@pytest.mark.parametrize(
    ("lora", "save_full_model", "planned"),
    [
        (True, False, PlannedOutputs(lora=True, full_model=False)),
        (True, True, PlannedOutputs(lora=True, full_model=True)),
        (False, False, PlannedOutputs(lora=False, full_model=True)),  # without LoRA the model is the result
    ],
)
def test_outputs_follow_lora_and_save_full_model(tmp_path, lora, save_full_model, planned):
    assert plan_outputs(RecordingJob(tmp_path, lora=lora, save_full_model=save_full_model)) == planned


def test_an_earlier_result_in_the_adaptor_folder_is_refused_before_training(tmp_path):
    job = RecordingJob(tmp_path, lora=True, save_full_model=False)
    job.adaptor_dir.mkdir(parents=True)
    (job.adaptor_dir / "adapter_model.safetensors").write_text("earlier")
    with pytest.raises(OutputTaken, match="already holds a result of an earlier job"):
        plan_outputs(job)


def test_a_stopped_run_ends_stopped_and_saves_nothing(tmp_path):
    job, calls = RecordingJob(tmp_path, lora=True, save_full_model=False), []
    result = SimpleNamespace(stopped=True, global_step=7, summary="unused")
    with pytest.raises(JobStopped, match="stopped at step 7; resume with resume_from_checkpoint=latest"):
        finish_training(job, result, recording_save(calls), PlannedOutputs(lora=True, full_model=False))
    assert calls == [] and job.progress_reported == []


def test_a_finished_run_publishes_its_outputs_and_returns_its_summary(tmp_path):
    job, calls = RecordingJob(tmp_path, lora=True, save_full_model=True), []
    result = SimpleNamespace(stopped=False, global_step=7, summary="trained 7 steps")
    planned = PlannedOutputs(lora=True, full_model=True)
    assert finish_training(job, result, recording_save(calls), planned) == "trained 7 steps"
    full = tmp_path / "models" / "tiny-llada_sft"
    assert calls == [{"result": result, "adaptor_dir": job.adaptor_dir, "full_model_dir": full}]
    assert job.progress_reported == [96]
    assert job.registered == [(full, "LLaDAModelLM")]
