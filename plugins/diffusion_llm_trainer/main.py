"""Diffusion LLM Trainer: masked-diffusion SFT / pre-training of LLaDA, Dream, ModernBERT and converted LMs."""

import dataclasses

from plugin_sdk import Job, run_job
from plugin_sdk.chat import build_messages, check_answers, row_text
from plugin_sdk.data import dataset_source, load_dataset_splits
from plugin_sdk.model_index import model_location
from plugin_sdk.plugin import finish_training, plan_outputs, require_model


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
                chat_column=p.get("chat_column") or None,  # the host's dataset tab names the conversations' column
            )

    validation = [convert(r) for r in splits.validation] if splits.validation is not None else None
    train = [convert(r) for r in splits.train]
    if p.train_mode != "pretrain":
        check_answers(train, "training", job.log)
    return train, validation


def prepare_corpus(job: Job):
    """The model and the tokenized corpus of a pre-training run; the main process prepares them first, so that
    the other processes find them cached."""
    from dlm.pretrain import prepare_pretraining
    from plugin_sdk.launch import distributed_state

    p = job.params
    with distributed_state().main_process_first():
        return prepare_pretraining(
            model_name=model_location(p.model_name, job.workspace.root),
            corpus=p.corpus,
            workspace=job.workspace.root,
            max_length=p.max_length,
            validation_fraction=p.validation_fraction if p.eval_strategy != "no" else 0.0,
            tokenizer=p.tokenizer,
            tokenizer_vocab_size=p.tokenizer_vocab_size,
            tokenizer_train_chars=p.tokenizer_train_chars,
            token_dtype=p.token_dtype,
            log=job.log,
        )


def train(job: Job) -> str:
    from dlm.trainers.outputs import save_outputs
    from dlm.trainers.sft_config import SFTConfig
    from dlm.trainers.sft_trainer import run_sft

    p = job.params
    require_model(p.get("model_name"))
    if p.train_mode == "pretrain" and p.get("pretrain_defaults", True):
        from dlm.pretrain import apply_pretrain_defaults

        sft_defaults = {name: prop.get("default") for name, prop in job.manifest["parameters"].items()}
        apply_pretrain_defaults(p, sft_defaults, job.log)
    # checked before any data or model loads
    config = SFTConfig.from_params(
        p,
        model_name=model_location(p.model_name, job.workspace.root),
        output_dir=str(job.checkpoint_dir),
        workspace=str(job.workspace.root),
    )
    outputs = plan_outputs(job)
    job.report_status("loading data")
    if p.train_mode == "pretrain" and p.get("corpus"):
        prepared = prepare_corpus(job)
        config = dataclasses.replace(config, model_name=prepared.model_path)
        train_rows, validation_rows = prepared.train, prepared.validation
    else:
        train_rows, validation_rows = read_rows(job)
    job.progress(3)
    result = run_sft(config, train_rows, validation_rows, job)
    return finish_training(job, result, save_outputs, outputs)


def main() -> None:
    run_job(__file__, train)


if __name__ == "__main__":
    main()
