"""The block-diffusion and mixture-of-experts families through the three plugins, as a user runs them from the
terminal on their tiny presets: SFT with LoRA and in full, ELBO-DPO on the SFT adapter's base, and an evaluation with
likelihood and generation. (Their numbers are held by the golden and brute-force tests of `tests/dlm`.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlm.presets.tiny import ensure_preset
from plugin_sdk.__main__ import main as cli
from plugin_sdk.backends.local import JobRecord
from plugin_sdk.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
NEW_FAMILIES = {"tiny-bd3lm": "bd3lm", "tiny-sdar": "sdar", "tiny-llada2": "llada2", "tiny-llada-moe": "llada_moe"}


def arguments(plugin: str, workspace: Path, job_id: str, values: dict[str, object]) -> list[str]:
    argv = ["run", plugin, "--workspace", str(workspace)]
    for key, value in {**values, "job_id": job_id}.items():
        argv += ["--set", f"{key}={value}"]
    return argv


def finished(workspace: Path, job_id: str, code: int, output: str = "") -> dict:
    record = JobRecord(Workspace(workspace), job_id).read()
    assert code == 0 and record["status"] == "COMPLETE", (record["job_data"].get("completion_details"), output)
    return record


def run(plugin: str, workspace: Path, job_id: str, **values: object) -> dict:
    """A job run here, as `python -m plugin_sdk run` runs it."""
    return finished(workspace, job_id, cli(arguments(plugin, workspace, job_id, values)))


class Beside:
    """A job run meanwhile in its own `python -m plugin_sdk run` process: CI's second core runs it while this
    process runs another (never two of one plugin at once: they would share its output folder)."""

    def __init__(self, plugin: str, workspace: Path, job_id: str, **values: object) -> None:
        self.workspace, self.job_id = workspace, job_id
        command = [sys.executable, "-m", "plugin_sdk", *arguments(plugin, workspace, job_id, values)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self) -> dict:
        output, _ = self.process.communicate(timeout=600)
        return finished(self.workspace, self.job_id, self.process.returncode, output)


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
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(3))
    )
    common = {"model_name": preset, "num_train_epochs": 0, "train_steps": 2, "warmup_ratio": 0, "max_length": 64}
    workspace = Path(preset_workspace)
    ensure_preset(preset, workspace)  # built once, before two jobs read it at once
    # two at a time: DPO on the base beside the LoRA SFT, then the full SFT beside the evaluation of the LoRA SFT
    dpo = Beside("diffusion_dpo_trainer", workspace, f"dpo-{family}", dataset=pairs, mc_samples=2, warmup_steps=0,
                 adaptor_name=f"dpo_{family}", **common)  # fmt: skip
    sft = {
        lora: dict(dataset=chat, lora=lora, adaptor_name=f"sft_{family}_{lora}", **common) for lora in ("true", "false")
    }
    trained = {"true": run("diffusion_llm_trainer", workspace, f"sft-{family}-true", **sft["true"])}
    dpo.result()
    adapter = workspace / "adaptors" / preset / f"sft_{family}_true"
    assert (adapter / "adapter_model.safetensors").is_file()
    full = Beside("diffusion_llm_trainer", workspace, f"sft-{family}-false", **sft["false"])
    record = run("diffusion_evaluator", workspace, f"eval-{family}", model_name=preset, dataset=qa,
                 metrics="perplexity,task_accuracy", mc_num=2, steps=8, max_new_tokens=8, block_length=4,
                 answer_extraction="first_number", model_adapter=f"sft_{family}_true")  # fmt: skip
    trained["false"] = full.result()
    for lora in ("true", "false"):
        details = trained[lora]["job_data"]["completion_details"]
        assert details.startswith(f"trained {family} model {preset} for 2 steps"), details
    assert (workspace / "adaptors" / preset / f"dpo_{family}" / "adapter_model.safetensors").is_file()
    report = Path(record["job_data"]["completion_details"].rsplit("Report: ", 1)[1])
    (model,) = json.loads((report.parent / "results.json").read_text())["models"]
    values = {m["name"]: m["value"] for m in model["metrics"]}
    assert values["perplexity"] > 1 and 0 <= values["task_accuracy"] <= 1, values
