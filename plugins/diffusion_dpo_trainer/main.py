"""Diffusion DPO Trainer: ELBO-based preference optimisation (LLaDA 1.5's VRPO) of masked-diffusion LMs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugin_sdk import Job, run_job
from plugin_sdk.data import dataset_source, load_dataset_splits
from plugin_sdk.model_index import model_location
from plugin_sdk.plugin import finish_training, plan_outputs, require_model
from plugin_sdk.preferences import read_preferences

if TYPE_CHECKING:
    import datasets

ROW = "__source_row__"  # the column load_dataset_splits adds with each row's number in its file


def read_pairs(job: Job) -> tuple[list, list | None]:
    """Training and validation preference pairs; rows that cannot be used are counted in the log."""
    p = job.params
    splits = load_dataset_splits(
        dataset_source(p),
        workspace=job.workspace.root,
        split=p.dataset_split,
        validation_split="auto" if p.validation_fraction > 0 else None,
        validation_fraction=p.validation_fraction,
        max_samples=p.random_sample_size or None,
        seed=p.seed,
        row_numbers=ROW,
    )
    train = _pairs(job, splits.train, splits.source, "training")
    if splits.validation is None:
        return train, None
    # Rows carved out for validation keep their numbers in the training split; those of a validation split of its
    # own are numbered in that split.
    return train, _pairs(job, splits.validation, f"{splits.source} (validation)", "validation")


def _pairs(job: Job, rows: datasets.Dataset, source: str, what: str) -> list:
    pairs, skipped = read_preferences(rows.remove_columns(ROW), source, row_numbers=rows[ROW])
    counts = "; skipped " + ", ".join(f"{n} ({why})" for why, n in skipped.items()) if skipped else ""
    job.log(f"{what} pairs: {len(pairs)} of {len(rows)} rows of {source}{counts}")
    return pairs


def train(job: Job) -> str:
    p = job.params
    require_model(p.get("model_name"))
    from dlm.trainers.dpo_config import DPOConfig
    from dlm.trainers.dpo_trainer import run_dpo
    from dlm.trainers.outputs import save_outputs

    config = DPOConfig.from_params(
        p,
        model_name=model_location(p.model_name, job.workspace.root),
        output_dir=str(job.checkpoint_dir),
        workspace=str(job.workspace.root),
    )
    outputs = plan_outputs(job)
    job.report_status("loading data")
    train_pairs, validation_pairs = read_pairs(job)
    job.progress(2)
    result = run_dpo(config, train_pairs, validation_pairs, job)
    return finish_training(job, result, save_outputs, outputs)


def main() -> None:
    run_job(__file__, train)


if __name__ == "__main__":
    main()
