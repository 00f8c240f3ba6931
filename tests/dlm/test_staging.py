"""A save killed with SIGKILL leaves its hidden staging folder: the next save beside it removes it when its process
has ended on this machine (and keeps a live process's, or another machine's), and no reader of results ever takes a
staging folder for a result (resume's `latest`, the model index, the lab's published adapters)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from dlm.resume import latest_checkpoint, write_owner
from dlm.staging import host_tag, remove_stale_staging, staging_folder
from dlm.trainers.outputs import TrainResult, save_outputs
from plugin_sdk.backends.lab import LabBackend
from plugin_sdk.model_index import registered_model

STAGING_MODULE = Path(__file__).parents[2] / "dlm" / "staging.py"
# A save that never ends: the staging module alone (no torch import, so the child starts in well under a second)
KILLED_SAVE = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("staging", sys.argv[1])
staging = importlib.util.module_from_spec(spec)
spec.loader.exec_module(staging)
folder = staging.staging_folder(Path(sys.argv[2]))
(folder / "model.safetensors").write_bytes(b"half")
print(folder, flush=True)
time.sleep(600)
"""


class SavedModel:
    """Stands in for a model and its tokenizer: `save_pretrained` writes one file, as a checkpoint's config."""

    def __init__(self, text: str) -> None:
        self.text = text

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / f"{type(self).__name__}.json").write_text(json.dumps({"text": self.text}))


def ended_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def killed_save(destination: Path) -> Path:
    """The staging folder of a save of `destination` killed with SIGKILL half-way."""
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(STAGING_MODULE), str(destination)], stdout=subprocess.PIPE, text=True
    )
    folder = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert folder.is_dir() and folder.name.startswith(f".{destination.name}.partial-{child.pid}-")
    return folder


def save_full_model(destination: Path, text: str) -> Path:
    result = TrainResult(SavedModel(text), SavedModel(text), None, 3, False, "", "")
    [written] = save_outputs(result, adaptor_dir=None, full_model_dir=destination)
    return written


def test_a_save_killed_with_sigkill_is_cleaned_up_by_the_next_save_beside_it(tmp_path) -> None:
    models = tmp_path / "models"
    left = killed_save(models / "first")
    written = save_full_model(models / "second", "the result")
    assert not left.exists()
    assert written == models / "second"
    assert json.loads((written / "SavedModel.json").read_text()) == {"text": "the result"}
    assert sorted(p.name for p in models.iterdir()) == ["second"]  # nothing hidden left


def test_only_staging_folders_of_ended_processes_of_this_machine_are_removed(tmp_path) -> None:
    here = host_tag()
    ended = tmp_path / f".adaptor.partial-{ended_pid()}-{here}-abc_12xy"
    live = tmp_path / f".adaptor.partial-{os.getppid()}-{here}-abc_12xy"
    elsewhere = tmp_path / f".adaptor.partial-{ended_pid()}-{'0' * 8 if here != '0' * 8 else '1' * 8}-abc_12xy"
    older_format = tmp_path / ".adaptor.partial-abc_12xy"  # no owner in its name: not known to be stale
    result = tmp_path / "adaptor.partial-1-00000000-x"  # not hidden: a result that happens to be named so
    for folder in (ended, live, elsewhere, older_format, result):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    assert remove_stale_staging(tmp_path) == [ended]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, elsewhere, older_format, result))


def test_a_staging_folder_is_owned_by_its_process_and_within_the_name_budget(tmp_path) -> None:
    destination = tmp_path / ("n" * 200)  # the longest name plugin_sdk.workspace accepts
    folder = staging_folder(destination)
    assert folder.parent == tmp_path and folder.name.startswith(f".{destination.name}.partial-{os.getpid()}-")
    assert len(folder.name.encode()) <= 255
    assert remove_stale_staging(tmp_path) == [] and folder.is_dir()  # this process is alive


def test_latest_never_resumes_from_a_staging_folder(tmp_path) -> None:
    owner = {"trainer": "SFTConfig", "model_name": "tiny-llada"}
    run = tmp_path / "checkpoints_job_1"
    write_owner(run, **owner)
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")
    hidden = tmp_path / f".checkpoints_job_2.partial-{ended_pid()}-{host_tag()}-abcdefgh"
    write_owner(hidden, **owner)  # numbered after run 1: it would be taken first
    (hidden / "checkpoint-9").mkdir()
    (hidden / "checkpoint-9" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path / "checkpoints_job_3", **owner, log=print) == run / "checkpoint-2"


def test_the_model_index_never_takes_a_staging_folder(tmp_path) -> None:
    hidden = tmp_path / "models" / f".tuned.partial-{ended_pid()}-{host_tag()}-abcdefgh"
    hidden.mkdir(parents=True)
    (hidden / "config.json").write_text("{}")
    (hidden / "index.json").write_text(json.dumps({"name": "tuned"}))
    assert registered_model("tuned", tmp_path) is None
    assert registered_model(hidden.name, tmp_path) is None


def test_the_lab_publishes_no_staging_folder_as_an_adapter(tmp_path) -> None:
    adaptors = tmp_path / "staging" / "adaptors"
    for name in ("my_adaptor", f".other.partial-{ended_pid()}-{host_tag()}-abcdefgh"):
        (adaptors / name).mkdir(parents=True)
        (adaptors / name / "adapter_config.json").write_text("{}")
    published = []
    backend = object.__new__(LabBackend)  # only what publishing reads: the staging folder and the lab
    backend.workspace = SimpleNamespace(staging=tmp_path / "staging")
    backend.lab = SimpleNamespace(save_artifact=lambda path, name: published.append(name))
    backend._publish_staged()
    assert published == ["my_adaptor"]
