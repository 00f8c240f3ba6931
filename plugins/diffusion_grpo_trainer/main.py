"""Diffusion GRPO Trainer: reinforcement learning with verifiable rewards (d1's diffu-GRPO, coupled-GRPO) of
masked-diffusion LMs."""

from __future__ import annotations

from plugin_sdk import Job, run_job
from plugin_sdk.data import dataset_source, load_dataset_splits
from plugin_sdk.model_index import model_location
from plugin_sdk.plugin import finish_training, plan_outputs, require_model
from plugin_sdk.prompts import read_prompts

ROW = "__source_row__"  # the column load_dataset_splits adds with each row's number in its file


def read_prompt_rows(job: Job) -> list:
    """The training prompts, each with its row's other columns for the rewards; skipped rows are counted."""
    p = job.params
    splits = load_dataset_splits(
        dataset_source(p),
        workspace=job.workspace.root,
        split=p.dataset_split,
        validation_split=None,
        max_samples=p.random_sample_size or None,
        seed=p.seed,
        row_numbers=ROW,
    )
    rows = splits.train
    prompts, skipped = read_prompts(rows.remove_columns(ROW), splits.source, row_numbers=rows[ROW])
    counts = "; skipped " + ", ".join(f"{n} ({why})" for why, n in skipped.items()) if skipped else ""
    job.log(f"training prompts: {len(prompts)} of {len(rows)} rows of {splits.source}{counts}")
    return prompts


def train(job: Job) -> str:
    p = job.params
    require_model(p.get("model_name"))
    from dlm.trainers.grpo_config import GRPOConfig
    from dlm.trainers.grpo_trainer import run_grpo
    from dlm.trainers.outputs import save_outputs

    config = GRPOConfig.from_params(
        p,
        model_name=model_location(p.model_name, job.workspace.root),
        output_dir=str(job.checkpoint_dir),
        workspace=str(job.workspace.root),
    )
    outputs = plan_outputs(job)
    job.report_status("loading data")
    prompts = read_prompt_rows(job)
    job.progress(2)
    result = run_grpo(config, prompts, job)
    return finish_training(job, result, save_outputs, outputs)


def main() -> None:
    run_job(__file__, train)


if __name__ == "__main__":
    main()
