"""Diffusion LLM Trainer: masked-diffusion SFT / pre-training of LLaDA, Dream, ModernBERT and converted LMs."""

from plugin_sdk import Job, JobStopped, run_job
from plugin_sdk.data import dataset_source, load_dataset_splits
from plugin_sdk.errors import ParameterError
from plugin_sdk.templates import build_messages, row_text


def read_rows(job: Job) -> tuple[list, list | None]:
    """Training and validation rows: conversations in SFT mode, texts in pre-training mode."""
    p = job.params
    splits = load_dataset_splits(
        dataset_source(p),
        workspace=job.workspace.root,
        validation_split="auto" if p.eval_strategy != "no" or p.sample_every_steps else None,
        validation_fraction=p.validation_fraction,
        max_samples=p.max_samples or None,
        seed=p.seed,
    )
    if p.train_mode == "pretrain":
        convert = row_text
    else:

        def convert(row):
            return build_messages(
                row,
                instruction_template=p.get("instruction_template"),
                input_template=p.get("input_template"),
                output_template=p.get("output_template"),
                system_message=p.get("system_message") or None,
            )

    validation = [convert(r) for r in splits.validation] if splits.validation is not None else None
    return [convert(r) for r in splits.train], validation


def train(job: Job) -> str:
    from dlm.outputs import check_outputs_free, publish_outputs
    from dlm.sft import SFTConfig, run_sft

    p = job.params
    if not p.get("model_name"):
        raise ParameterError(
            "no model: set model_name (a local checkpoint, a hub id, or a tiny preset such as tiny-llada)"
        )
    config = SFTConfig.from_params(p, output_dir=str(job.checkpoint_dir), workspace=str(job.workspace.root))
    full_model = p.save_full_model or p.merge_adapter or not p.lora
    check_outputs_free(job, lora=p.lora, full_model=full_model)
    train_rows, validation_rows = read_rows(job)
    job.progress(3)
    result = run_sft(config, train_rows, validation_rows, job)
    if result.stopped:
        raise JobStopped(f"stopped at step {result.global_step}; resume with resume_from_checkpoint=latest")
    job.progress(96)
    publish_outputs(result, job, lora=p.lora, full_model=full_model)
    return result.summary


def main() -> None:
    run_job(__file__, train)


if __name__ == "__main__":
    main()
