"""Checkpoints: pruned to save_total_limit, `latest` skips a cut-off one and never takes another model's, and a
damaged file is named."""

import json
import shutil
from pathlib import Path

import pytest

from dlm.resume import CheckpointError, check_checkpoint, latest_checkpoint, write_owner
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft
from tests.helpers import Reporter, doubling_conversations, tiny_run

OWNER = {"trainer": "SFTConfig", "model_name": "tiny-llada"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("checkpoint_ws"))


def config(workspace: str, out: Path, **overrides) -> SFTConfig:
    values = {**tiny_run(workspace, out), "batch_size": 2, "train_steps": 3, "warmup_ratio": 0.0, "save_steps": 1}
    return SFTConfig(**{**values, **overrides})


def fake_checkpoint(folder: Path, step: int, *, complete: bool = True) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    if complete:
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def test_latest_skips_an_incomplete_checkpoint_with_a_log_line(tmp_path):
    run = tmp_path / "checkpoints_job_1"
    write_owner(run, **OWNER)
    fake_checkpoint(run, 2)
    fake_checkpoint(run, 10)
    cut_off = fake_checkpoint(run, 12, complete=False)
    lines = []
    assert latest_checkpoint(run, **OWNER, log=lines.append) == run / "checkpoint-10"
    assert lines == [f"skipping {cut_off}: incomplete (no readable trainer_state.json; cut off while being written)"]


def test_latest_takes_an_earlier_job_of_the_same_model_and_never_another_models(tmp_path):
    mine, other, new = tmp_path / "checkpoints_job_1", tmp_path / "checkpoints_job_2", tmp_path / "checkpoints_job_3"
    write_owner(mine, **OWNER)
    fake_checkpoint(mine, 4)
    write_owner(other, trainer="SFTConfig", model_name="tiny-dream")
    fake_checkpoint(other, 8)  # newer, but of another base model
    assert latest_checkpoint(new, **OWNER, log=print) == mine / "checkpoint-4"
    shutil.rmtree(mine)
    with pytest.raises(
        CheckpointError,
        match=r"other runs: checkpoints_job_2 \(SFTConfig of tiny-dream\); none of SFTConfig of tiny-llada",
    ):
        latest_checkpoint(new, **OWNER, log=print)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("adapter_model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}"),
        ("optimizer.pt", b"PK\x03\x04 truncated"),
        ("trainer_state.json", b'{"global_step": '),
    ],
)
def test_a_damaged_checkpoint_file_is_named(tmp_path, name, content):
    checkpoint = fake_checkpoint(tmp_path / "run", 3)
    (checkpoint / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{checkpoint / name} is damaged"):
        check_checkpoint(checkpoint, **OWNER, log=print)


def test_save_total_limit_keeps_the_newest_checkpoints(workspace, tmp_path):
    run_sft(config(workspace, tmp_path / "all"), doubling_conversations(8), None, Reporter())
    run_sft(config(workspace, tmp_path / "two", save_total_limit=2), doubling_conversations(8), None, Reporter())
    assert sorted(p.name for p in (tmp_path / "all").glob("checkpoint-*")) == [f"checkpoint-{i}" for i in (1, 2, 3)]
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


def test_resume_refuses_another_base_model_and_a_truncated_adapter(workspace, tmp_path):
    out = tmp_path / "run"
    run_sft(config(workspace, out), doubling_conversations(8), None, Reporter(stop_at=2))
    dream = {"model_name": "tiny-dream"}
    with pytest.raises(
        CheckpointError, match=r"other runs: run \(SFTConfig of tiny-llada\); none of SFTConfig of tiny-d"
    ):
        run_sft(config(workspace, out, **dream, resume_from_checkpoint="latest"), [], None, Reporter())
    explicit = str(out / "checkpoint-2")
    with pytest.raises(
        CheckpointError, match="written by SFTConfig training tiny-llada; this run is SFTConfig training"
    ):
        run_sft(config(workspace, out, **dream, resume_from_checkpoint=explicit), [], None, Reporter())
    weights = out / "checkpoint-2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{weights} is damaged"):
        run_sft(config(workspace, out, resume_from_checkpoint="latest"), doubling_conversations(8), None, Reporter())


def test_full_disk_during_a_checkpoint_removes_it_and_names_the_folder(workspace, tmp_path, monkeypatch):
    import errno

    import torch

    real_save = torch.save

    def full_disk_at_step_2(obj, f, *args, **kwargs):
        if "checkpoint-2" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_at_step_2)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"no space left on the device while writing .*checkpoint-2.*removed the"):
        run_sft(config(workspace, out), doubling_conversations(8), None, Reporter())
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]


def test_a_truncated_model_or_adapter_is_named_when_loading(workspace, tmp_path):
    from dlm.loading import load_model_and_tokenizer
    from dlm.lora import load_model_with_adapter

    out = tmp_path / "run"
    run_sft(config(workspace, out), doubling_conversations(8), None, Reporter())
    adapter = out / "checkpoint-3"
    model = Path(workspace) / "models" / "tiny-llada"
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{weights} is damaged .*save or download the model again"):
        load_model_and_tokenizer(copy)
    adapter_weights = adapter / "adapter_model.safetensors"
    adapter_weights.write_bytes(adapter_weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"{adapter_weights} is damaged"):
        load_model_with_adapter("tiny-llada", adapter, workspace=workspace)


# ------------------------------------------------------------------------------------------------ ownership


@pytest.mark.parametrize("owner_text", [None, "", "{}", '{"trainer": "SFTConfig"}', "[1]", "not json"])
def test_latest_never_takes_a_checkpoint_of_unknown_owner(tmp_path, owner_text):
    copied, new = tmp_path / "copied_from_elsewhere", tmp_path / "checkpoints_job_2"
    fake_checkpoint(copied, 5)
    if owner_text is not None:
        (copied / "owner.json").write_text(owner_text)
    with pytest.raises(
        CheckpointError, match=r"copied_from_elsewhere \(unknown: no valid owner.json\).*named explicitly"
    ):
        latest_checkpoint(new, **OWNER, log=print)


def test_an_explicit_checkpoint_of_unknown_owner_is_logged_and_left_to_the_tensor_check(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "copied", 5)
    lines = []
    check_checkpoint(checkpoint, **OWNER, log=lines.append)
    assert lines and "no valid owner.json" in lines[0] and "only if its tensors match" in lines[0]


def test_owner_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    run = tmp_path / "run"
    write_owner(run, **OWNER)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        write_owner(run, trainer="DPOConfig", model_name="tiny-dream")
    assert json.loads((run / "owner.json").read_text()) == {**OWNER, "run": 1}  # the old one, whole
    assert [p.name for p in run.iterdir()] == ["owner.json"]  # no temporary file left


def test_a_full_model_checkpoint_must_match_the_models_tensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    from dlm.resume import check_tensors

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint / "model.safetensors"))
    check_tensors(checkpoint, model)
    other = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2), torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as refused:
        check_tensors(checkpoint, other)
    message = str(refused.value)
    assert "shapes differ: 0.weight [3, 4] in the checkpoint, [5, 4] in the model" in message
    assert "missing from the checkpoint: 2.weight, 2.bias (2)" in message


def test_a_copied_checkpoint_of_another_adapter_is_refused_naming_its_tensors(workspace, tmp_path):
    out = tmp_path / "run"
    run_sft(config(workspace, out), doubling_conversations(8), None, Reporter(stop_at=2))
    copied = tmp_path / "copied" / "checkpoint-2"
    shutil.copytree(out / "checkpoint-2", copied)  # without owner.json: of unknown owner
    resumed = config(workspace, tmp_path / "again", lora_r=4, resume_from_checkpoint=str(copied))
    with pytest.raises(CheckpointError, match=r"checkpoint-2 does not fit this model \(shapes differ: .*lora_A"):
        run_sft(resumed, doubling_conversations(8), None, Reporter())
    with pytest.raises(CheckpointError, match="this run trains the full model"):
        run_sft(
            config(workspace, tmp_path / "full", lora=False, resume_from_checkpoint=str(copied)), [], None, Reporter()
        )
    reporter = Reporter()  # named explicitly and of the same tensors: resumed, with the unknown owner logged
    matching = config(workspace, tmp_path / "third", resume_from_checkpoint=str(copied))
    assert run_sft(matching, doubling_conversations(8), None, reporter).global_step == 3
    assert any("no valid owner.json" in message for message in reporter.messages)
