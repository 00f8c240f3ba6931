"""Pre-training from a corpus: the recipe's defaults, a size preset with a tokenizer trained on the corpus, the
token file's windows through the SFT trainer, and the plugin end to end (reused corpus on resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlm.corpus import prepare_corpus
from dlm.loading import load_model_and_tokenizer
from dlm.presets.bpe import tokenizer_fingerprint
from dlm.presets.tiny import ensure_preset
from dlm.pretrain import PRETRAIN_DEFAULTS, apply_pretrain_defaults
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft
from tests.helpers import Reporter, tiny_run

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "diffusion_llm_trainer"
SFT_DEFAULTS = {
    name: prop.get("default") for name, prop in json.loads((PLUGIN / "index.json").read_text())["parameters"].items()
}


def write_corpus(folder: Path, stories: int = 120) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = ["Lily", "Tom", "Mia", "Ben"]
    text = "\n\n".join(
        f"Once upon a time {names[i % 4]} found {i} shiny stones by the river. "
        f"{names[(i + 1) % 4]} counted them and smiled."
        for i in range(stories)
    )
    (folder / "stories.txt").write_text(text + "\n")
    return folder


def test_pretrain_defaults_replace_only_values_left_at_the_fine_tuning_defaults():
    params = {**SFT_DEFAULTS, "learning_rate": 1e-3}
    lines = []
    changed = apply_pretrain_defaults(params, SFT_DEFAULTS, lines.append)
    assert changed == {"lora": False, "warmup_ratio": 0.01, "weight_decay": 0.1, "save_total_limit": 3}
    assert params["learning_rate"] == 1e-3 and params["lora"] is False and params["save_total_limit"] == 3
    assert lines == [
        "pre-training defaults: lora=False, warmup_ratio=0.01, weight_decay=0.1, save_total_limit=3 "
        "(give other values, or pretrain_defaults=false, to keep your own)"
    ]
    assert set(PRETRAIN_DEFAULTS) <= set(SFT_DEFAULTS)  # every recipe setting is a parameter of the trainer


def test_sft_trains_on_corpus_windows(tmp_path):
    workspace = str(tmp_path / "ws")
    folder = ensure_preset("tiny-llada", workspace)
    tokenizer = load_model_and_tokenizer(str(folder)).tokenizer
    prepared = prepare_corpus(
        write_corpus(tmp_path / "corpus"),
        tokenizer,
        tmp_path / "cache",
        tokenizer_id=tokenizer_fingerprint(tokenizer),
        eos_id=tokenizer.eos_token_id,
    )
    train, validation = prepared.windows(32, validation_fraction=0.1)
    values = {**tiny_run(workspace, tmp_path / "out"), "batch_size": 2, "train_steps": 3, "max_length": 32}
    config = SFTConfig(**values, train_mode="pretrain", lora=False, eval_strategy="steps", eval_steps=3)
    reporter = Reporter()
    result = run_sft(config, train, validation, reporter)
    assert result.global_step == 3
    assert not any("packed" in m for m in reporter.messages)  # the windows went to the trainer as they are
    assert reporter.last("train/mask_ratio") > 0 and reporter.last("val/loss") > 0


def run_trainer(workspace: Path, **values):
    from plugin_sdk.backends.local import JobRecord
    from plugin_sdk.runner import run_plugin
    from plugin_sdk.workspace import Workspace

    ws = Workspace(workspace)
    params = {
        "train_mode": "pretrain",
        "train_device": "cpu",
        "batch_size": "2",
        "num_train_epochs": "0",
        "max_length": "32",
        "logging_steps": "1",
        "dtype": "float32",
        "tokenizer_vocab_size": "400",
        **values,
    }
    code, job_id = run_plugin(PLUGIN, params, workspace=ws, experiment="pre", show_progress=False)
    log = (ws.job_dir(job_id) / f"output_{job_id}.txt").read_text()
    return code, JobRecord(ws, job_id).read(), log


@pytest.mark.slow
def test_plugin_pretrains_a_small_model_on_a_corpus_and_resumes_without_retokenizing(tmp_path):
    corpus = str(write_corpus(tmp_path / "corpus"))
    common = {"model_name": "small-llada", "corpus": corpus, "eval_strategy": "steps", "eval_steps": "2"}
    code, record, log = run_trainer(tmp_path / "ws", **common, train_steps="2", save_steps="2")
    assert code == 0, log
    assert "training a 400-token BPE for llada" in log
    assert "pre-training defaults: lora=False, learning_rate=0.0003" in log
    assert "built small-llada at " in log and "M parameters, vocabulary 400" in log
    assert "documents" in log and "held out for validation" in log
    assert not list((tmp_path / "ws" / "adaptors").glob("**/adapter_config.json"))  # no LoRA: full training
    first_run = record["job_data"]["tensorboard_output_dir"]
    assert Path(first_run).name == "llada-corpus-small-v1"
    code, record, log = run_trainer(
        tmp_path / "ws",
        **common,
        train_steps="4",
        save_steps="2",
        resume_from_checkpoint="latest",
        adaptor_name="resumed",  # the first job's model keeps its name: no job replaces another's result
    )
    assert code == 0, log
    assert "tokenizer: reusing" in log and "reusing" in log.split("corpus ")[1] and "resuming from" in log
    assert record["job_data"]["completion_status"] == "success"
    assert "Continuing run llada-corpus-small-v1" in log and record["job_data"]["tensorboard_output_dir"] == first_run
