"""The DPO trainer plugin end to end through the local runner (as the host launches it), on tiny-llada: a short run
saves a loadable adapter and TRL's metric names; bad data ends the job FAILED with the specific message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "diffusion_dpo_trainer"
TRL_METRICS = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
}


@pytest.fixture(scope="module")
def workspace(workspace_with_presets) -> Path:
    return workspace_with_presets("dpo_ws")


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def pairs(n: int) -> list[dict]:
    return [
        {"prompt": f"What is {i} + {i}?", "chosen": f"{i} + {i} = {2 * i}.", "rejected": f"It is {2 * i + 1}."}
        for i in range(n)
    ]


def run(workspace: Path, name: str, rows: list[dict], **values: str):
    from plugin_sdk.backends.local import JobRecord
    from plugin_sdk.runner import run_plugin
    from plugin_sdk.workspace import Workspace

    ws = Workspace(workspace)
    params = {
        "model_name": "tiny-llada",
        "dataset": write_rows(workspace / f"{name}.jsonl", rows),
        "train_device": "cpu",
        "dtype": "float32",
        "adaptor_name": name,
        **values,
    }
    code, job_id = run_plugin(PLUGIN, params, workspace=ws, experiment="dpo", show_progress=False)
    log = (ws.job_dir(job_id) / f"output_{job_id}.txt").read_text()
    return code, JobRecord(ws, job_id).read(), log, ws


@pytest.mark.slow
def test_short_run_saves_a_loadable_adapter_and_trl_metrics(workspace):
    code, record, log, ws = run(
        workspace,
        "dpo_ok",
        [*pairs(8), {"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."}],
        num_train_epochs="0",
        train_steps="2",
        batch_size="2",
        max_length="48",
        max_prompt_length="24",
        learning_rate="0.001",
        warmup_steps="0",
        logging_steps="1",
        diffusion_samples="2",  # the alias of mc_samples
        lora_r="4",
        lora_alpha="8",
        validation_fraction="0.25",
    )
    assert code == 0, log
    assert record["status"] == "COMPLETE" and record["job_data"]["completion_status"] == "success", log
    # 2 of the 9 rows are held out for validation; the identical pair is skipped wherever it lands.
    assert "training pairs: " in log and " of 7 rows of " in log and "validation pairs: " in log
    assert log.count("skipped 1 (chosen identical to rejected)") == 1
    assert record["job_data"]["config"]["mc_samples"] == 2
    adaptor = ws.adaptor_dir("tiny-llada", "dpo_ok")
    assert (adaptor / "adapter_config.json").is_file()
    metrics = json.loads((ws.trainer_output_dir("dpo", "diffusion_dpo_trainer") / "metrics.json").read_text())
    assert {f"{split}/{name}" for split in ("train", "val") for name in TRL_METRICS} <= set(metrics), sorted(metrics)

    import torch
    from peft import PeftModel

    from dlm.loading import load_model_and_tokenizer

    base = load_model_and_tokenizer("tiny-llada", workspace=str(workspace)).model
    model = PeftModel.from_pretrained(base, str(adaptor))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    # LoRA's B starts at zero: trained adapters loaded back are non-zero.
    assert lora_b and any(torch.count_nonzero(p) > 0 for p in lora_b)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rows", "details"),
    [
        (
            # With the default validation hold-out the row may be carved out; it is named by its row in the file.
            [*pairs(2), {"prompt": "Hi", "chosen": "Hello."}, *pairs(3)],
            "row 3: missing 'rejected'; the row has prompt, chosen",
        ),
        (
            [{"chosen": "Paris.", "rejected": "Rome."}] * 3,
            "rows with only 'chosen' and 'rejected' text are read as Anthropic HH transcripts",
        ),
    ],
    ids=["missing field", "no prompt to split off"],
)
def test_bad_data_fails_the_job_with_the_reason(workspace, rows, details):
    code, record, log, _ = run(workspace, "dpo_bad", rows)
    assert code != 0
    assert record["status"] == "FAILED" and record["job_data"]["completion_status"] == "failed", log
    assert details in record["job_data"]["completion_details"]
    assert "Traceback" not in log
