"""`latest` and the checkpoint check in the cases the mutation run of `dlm/resume.py` found untested: an earlier
job that never saved a checkpoint, stray files named like checkpoints, several other runs named in the refusal, and
the advice when a checkpoint is damaged."""

import json
import re
from pathlib import Path

import pytest

from dlm.resume import CheckpointError, check_checkpoint, latest_checkpoint, write_owner

OWNER = {"trainer": "SFTConfig", "model_name": "tiny-llada"}


def fake_checkpoint(folder: Path, step: int) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def test_an_earlier_job_without_checkpoints_is_passed_over(tmp_path):
    done, failed = tmp_path / "checkpoints_job_1", tmp_path / "checkpoints_job_2"
    write_owner(done, **OWNER)
    fake_checkpoint(done, 5)
    write_owner(failed, **OWNER)  # stopped before its first checkpoint
    assert latest_checkpoint(tmp_path / "checkpoints_job_3", **OWNER, log=print) == done / "checkpoint-5"


def test_a_file_named_like_a_checkpoint_is_not_one(tmp_path):
    run = tmp_path / "checkpoints_job_1"
    write_owner(run, **OWNER)
    fake_checkpoint(run, 2)
    (run / "checkpoint-9").write_text("not a folder")
    lines = []
    assert latest_checkpoint(run, **OWNER, log=lines.append) == run / "checkpoint-2"
    assert lines == []


def test_the_refusal_names_every_other_run(tmp_path):
    for job, model in ((1, "tiny-dream"), (2, "tiny-bert")):
        write_owner(tmp_path / f"checkpoints_job_{job}", trainer="SFTConfig", model_name=model)
        fake_checkpoint(tmp_path / f"checkpoints_job_{job}", 4)
    with pytest.raises(CheckpointError) as refused:
        latest_checkpoint(tmp_path / "checkpoints_job_3", **OWNER, log=print)
    named = re.search(r"other runs: (.*); none of", str(refused.value))[1]
    assert set(named.split("; ")) == {
        "checkpoints_job_1 (SFTConfig of tiny-dream)",
        "checkpoints_job_2 (SFTConfig of tiny-bert)",
    }


def test_a_damaged_checkpoint_says_what_to_do(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "run", 3)
    (checkpoint / "trainer_state.json").write_text('{"global_step": ')
    with pytest.raises(CheckpointError, match=r"is damaged \(JSONDecodeError: .*\); resume from another checkpoint$"):
        check_checkpoint(checkpoint, **OWNER, log=print)


def test_latest_takes_the_last_run_even_when_file_times_went_back(tmp_path):
    """Runs are numbered in owner.json as they start; file times (clock skew between machines) do not decide."""
    import os

    older, newer, old_style = (tmp_path / f"checkpoints_job_{i}" for i in (1, 2, 0))
    write_owner(older, **OWNER)
    fake_checkpoint(older, 4)
    write_owner(newer, **OWNER)
    fake_checkpoint(newer, 2)
    for checkpoint in (newer / "checkpoint-2", older / "checkpoint-4"):  # the newer run's files look a day older
        os.utime(checkpoint, (1e9 if checkpoint.parent == newer else 1e9 + 86400,) * 2)
    assert [json.loads((f / "owner.json").read_text())["run"] for f in (older, newer)] == [1, 2]
    assert latest_checkpoint(tmp_path / "checkpoints_job_3", **OWNER, log=print) == newer / "checkpoint-2"
    write_owner(older, **OWNER)  # a resumed run keeps its number
    assert json.loads((older / "owner.json").read_text())["run"] == 1
    # folders of before run numbers come after numbered ones, newest files first among themselves
    (old_style / "checkpoint-9").mkdir(parents=True)
    (old_style / "checkpoint-9" / "trainer_state.json").write_text("{}")
    (old_style / "owner.json").write_text(json.dumps(OWNER))
    assert latest_checkpoint(tmp_path / "checkpoints_job_3", **OWNER, log=print) == newer / "checkpoint-2"
    write_owner(tmp_path / "checkpoints_job_4", **OWNER)
    assert json.loads((tmp_path / "checkpoints_job_4" / "owner.json").read_text())["run"] == 3
