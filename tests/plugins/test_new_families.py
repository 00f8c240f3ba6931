"""The block-diffusion and mixture-of-experts families through the three plugins, as a user runs them from the
terminal on their tiny presets: SFT with LoRA and in full, ELBO-DPO on the SFT adapter's base, and an evaluation with
likelihood and generation. (Their numbers are held by the golden and brute-force tests of `tests/dlm`.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin_sdk.__main__ import main as cli
from plugin_sdk.backends.local import JobRecord
from plugin_sdk.workspace import Workspace

NEW_FAMILIES = {"tiny-bd3lm": "bd3lm", "tiny-sdar": "sdar", "tiny-llada2": "llada2", "tiny-llada-moe": "llada_moe"}


def run(plugin: str, workspace: Path, job_id: str, **values: object) -> dict:
    argv = ["run", plugin, "--workspace", str(workspace)]
    for key, value in {**values, "job_id": job_id}.items():
        argv += ["--set", f"{key}={value}"]
    code = cli(argv)
    record = JobRecord(Workspace(workspace), job_id).read()
    assert code == 0 and record["status"] == "COMPLETE", record["job_data"].get("completion_details")
    return record


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(NEW_FAMILIES))
def test_a_new_family_trains_aligns_and_evaluates_through_the_plugins(tmp_path, preset_workspace, preset):
    family = NEW_FAMILIES[preset]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        "".join(json.dumps({"instruction": f"What is {i} + {i}?", "output": str(2 * i)}) + "\n" for i in range(8))
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": f"What is {i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)}) + "\n"
                for i in range(8))
    )  # fmt: skip
    common = {"model_name": preset, "num_train_epochs": 0, "train_steps": 2, "warmup_ratio": 0, "max_length": 64}
    workspace = Path(preset_workspace)
    for lora in ("true", "false"):
        record = run("diffusion_llm_trainer", workspace, f"sft-{family}-{lora}", dataset=chat, lora=lora,
                     adaptor_name=f"sft_{family}_{lora}", **common)  # fmt: skip
        assert record["job_data"]["completion_details"].startswith(f"trained {family} model {preset} for 2 steps")
    adapter = workspace / "adaptors" / preset / f"sft_{family}_true"
    assert (adapter / "adapter_model.safetensors").is_file()
    run("diffusion_dpo_trainer", workspace, f"dpo-{family}", dataset=pairs, mc_samples=2, warmup_steps=0,
        adaptor_name=f"dpo_{family}", **{**common, "warmup_ratio": 0})  # fmt: skip
    assert (workspace / "adaptors" / preset / f"dpo_{family}" / "adapter_model.safetensors").is_file()
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(3))
    )
    record = run("diffusion_evaluator", workspace, f"eval-{family}", model_name=preset, dataset=qa,
                 metrics="perplexity,task_accuracy", mc_num=2, steps=8, max_new_tokens=8, block_length=4,
                 answer_extraction="first_number", model_adapter=f"sft_{family}_true")  # fmt: skip
    report = Path(record["job_data"]["completion_details"].rsplit("Report: ", 1)[1])
    (model,) = json.loads((report.parent / "results.json").read_text())["models"]
    values = {m["name"]: m["value"] for m in model["metrics"]}
    assert values["perplexity"] > 1 and 0 <= values["task_accuracy"] <= 1, values
