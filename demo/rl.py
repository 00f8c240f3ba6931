"""The demo's optional RL stage (`--rl`): GRPO from an under-trained SFT checkpoint of the digit task.

A short SFT of tiny-llada (a quarter of the main SFT's steps) answers about half of the held-out problems. GRPO then
samples a group of answers per training prompt, rewards the exact sorted list (`answer_match`, the default reward, on
prompt/answer rows, as a user's JSONL would be) and moves the model towards the answers that beat their group. The
log-probabilities are DiffuCoder's coupled estimate (complementary masks of the answer, the prompt clean): on this
model and budget d1's one-step estimate (the answer fully masked, the prompt partly) left held-out accuracy where it
was (0.49 to 0.47 in 300 steps at a learning rate of 5e-5, and it collapsed at 3e-4), the coupled one raised it (0.49
to 0.71). The same evaluator job scores both models.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from plugin_sdk.safe_files import write_json_atomic, write_text_atomic
from plugin_sdk.workspace import Workspace

RL_DATASET = "demo-digit-sort-prompts"
SHORT_SFT_NAME = "demo-sft-short"
GRPO_NAME = "demo-grpo"
SHORT_SFT_STAGE = "SFT tiny-llada (short)"
GRPO_STAGE = "GRPO"
EVALUATE_STAGE = "evaluate RL"
LABELS = ("llada short SFT", "llada short SFT+GRPO")
MIN_RL_GAIN = 0.1  # held-out task accuracy GRPO must add to the short SFT's


def rl_jobs(sft: Mapping[str, Any], sft_steps: int, grpo_steps: int) -> dict[str, dict[str, Any]]:
    """The short SFT (the main SFT's settings, fewer steps) and the GRPO job, as a person would fill the forms."""
    short = {
        **sft,
        "train_steps": sft_steps,
        "save_steps": sft_steps,
        "eval_strategy": "no",
        "template_name": "demo-sft-short",
        "adaptor_name": SHORT_SFT_NAME,
    }
    grpo = {
        "dataset": RL_DATASET,
        "template_name": "demo-grpo",
        "adaptor_name": GRPO_NAME,
        "lora": False,
        "learning_rate": 1e-4,
        "num_train_epochs": 0,
        "train_steps": grpo_steps,
        "save_steps": grpo_steps,
        "logging_steps": 10,
        "batch_size": 8,
        "num_generations": 8,
        "beta": 0.0,  # no reference model: the clipped ratio keeps each update near the sampling policy
        "logp_estimator": "coupled",
        "temperature": 1.0,  # rollouts must differ for a group to have an advantage
        "max_completion_length": 6,  # the longest answer and its end token, as the evaluator's canvas
        "steps": 6,
        "block_length": 6,
    }
    return {"short_sft": short, "grpo": grpo}


def write_rl_dataset(workspace: Workspace, rows: list[dict[str, str]]) -> None:
    """The training split as prompt/answer rows, the shape a user's GRPO data takes."""
    folder = workspace.dataset_dir(RL_DATASET)
    lines = "".join(json.dumps({"prompt": r["instruction"], "answer": r["output"]}) + "\n" for r in rows)
    write_text_atomic(folder / "train.jsonl", lines)
    description = "Demo task, sort digits: prompt/answer rows for GRPO (the training split)"
    write_json_atomic(
        folder / "index.json", {"dataset_id": RL_DATASET, "location": "local", "description": description}
    )


def run_rl_stages(
    workspace: Workspace,
    jobs: Mapping[str, Mapping[str, Any]],
    evaluate: Mapping[str, Any],
    stage: Callable[[str, str, Mapping[str, Any]], Any],
) -> list[Any]:
    """Short SFT, GRPO from it, and one evaluator job scoring both."""
    short = workspace.model_dir(f"tiny-llada_{SHORT_SFT_NAME}")
    rl = workspace.model_dir(f"tiny-llada_{SHORT_SFT_NAME}_{GRPO_NAME}")
    stages = [stage(SHORT_SFT_STAGE, "diffusion_llm_trainer", jobs["short_sft"])]
    stages.append(stage(GRPO_STAGE, "diffusion_grpo_trainer", {**jobs["grpo"], "model_name": str(short)}))
    scored = {**evaluate, "model_name": str(short), "compare_with": [str(rl)], "eval_name": "demo-rl"}
    stages.append(stage(EVALUATE_STAGE, "diffusion_evaluator", scored))
    return stages


def rl_result_folders(workspace: Workspace) -> list[Any]:
    """What an earlier RL stage left in the workspace (the trainers refuse to write over a result)."""
    short = f"tiny-llada_{SHORT_SFT_NAME}"
    return [workspace.model_dir(short), workspace.model_dir(f"{short}_{GRPO_NAME}")]


def rl_checks(models: Mapping[str, Any], accuracy: Callable[[Any], float | None]) -> list[tuple]:
    """GRPO's gain in held-out task accuracy over the short SFT it started from."""
    before, after = (accuracy(models[label]) for label in LABELS)
    gain = None if before is None or after is None else after - before
    return [("task accuracy gained by GRPO", gain, f">= {MIN_RL_GAIN}", lambda v: v >= MIN_RL_GAIN)]
