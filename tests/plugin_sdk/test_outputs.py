"""Publishing a trained model's outputs (`plugin_sdk.outputs.publish_outputs`): where the trainer's save writes,
what is logged, and the registered architecture, with a recording job and save function."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from plugin_sdk.outputs import publish_outputs


class RecordingJob:
    def __init__(self, root: Path, *, main: bool = True) -> None:
        self.is_main_process = main
        self.params = SimpleNamespace(model_name="org/tiny-llada", adaptor_name="sft")
        self.adaptor_dir = root / "adaptors" / "org_tiny-llada" / "sft"
        self.root = root
        self.workspace = SimpleNamespace(root=root)  # the outputs are checked for links below it
        self.messages: list[str] = []
        self.phases: list[str] = []
        self.registered: list[tuple[Path, str]] = []

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def log(self, message: str) -> None:
        self.messages.append(message)

    def report_status(self, phase: str) -> None:
        self.phases.append(phase)

    def register_model(self, model_dir: Path, *, architecture: str) -> None:
        self.registered.append((model_dir, architecture))


def recording_save(calls: list[dict]):
    def save(*, adaptor_dir: Path | None, full_model_dir: Path | None) -> list[Path]:
        calls.append({"adaptor_dir": adaptor_dir, "full_model_dir": full_model_dir})
        if full_model_dir is not None:
            full_model_dir.mkdir(parents=True)
            (full_model_dir / "config.json").write_text(json.dumps({"architectures": ["LLaDAModelLM"]}))
        return [d for d in (adaptor_dir, full_model_dir) if d is not None]

    return save


def test_adapter_and_full_model_are_saved_logged_and_the_model_registered(tmp_path):
    job, calls = RecordingJob(tmp_path), []
    written = publish_outputs(job, recording_save(calls), lora=True, full_model=True)
    full = tmp_path / "models" / "tiny-llada_sft"
    assert calls == [{"adaptor_dir": job.adaptor_dir, "full_model_dir": full}]
    assert written == [job.adaptor_dir, full]
    assert job.messages == [f"saved {job.adaptor_dir}", f"saved {full}"]
    assert job.phases == ["saving outputs"]
    assert job.registered == [(full, "LLaDAModelLM")]


def test_without_lora_or_full_model_nothing_is_asked_for_or_registered(tmp_path):
    job, calls = RecordingJob(tmp_path), []
    publish_outputs(job, recording_save(calls), lora=False, full_model=False)
    assert calls == [{"adaptor_dir": None, "full_model_dir": None}]
    assert job.registered == []


def test_only_the_main_process_saves(tmp_path):
    job, calls = RecordingJob(tmp_path, main=False), []
    assert publish_outputs(job, recording_save(calls), lora=True, full_model=True) == []
    assert calls == [] and job.messages == []
