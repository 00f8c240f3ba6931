"""The SFT trainer end to end on tiny presets: exact gradient accumulation and resume, outputs, families, bad input,
and the plugin through the local runner."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

import dlm.presets.tiny
import dlm.trainers.sft_trainer as sft_trainer
from dlm.errors import ModelError
from dlm.loading import load_model_and_tokenizer
from dlm.trainers.outputs import save_outputs
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft
from tests.helpers import Reporter, assert_same_weights, tiny_run, weights

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "diffusion_llm_trainer"


def conversations(n: int, offset: int = 0) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "user", "content": f"What is {i} + {2 * i}?"},
            {"role": "assistant", "content": f"{i} + {2 * i} = {3 * i}."},
        ]
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="session")
def workspace(workspace_with_presets) -> str:
    return str(workspace_with_presets("sft_ws"))


def config(workspace: str, out: Path, **overrides) -> SFTConfig:
    values = {**tiny_run(workspace, out), "batch_size": 2, "train_steps": 2, "warmup_ratio": 0.0}
    return SFTConfig(**{**values, **overrides})


# ---- gradient accumulation ---------------------------------------------------------------------------------------
def fixed_rows(n: int, length: int = 12) -> list[dict[str, list[int]]]:
    """Rows of one length (so padding cannot differ between micro-batches) with prompts of different lengths (so
    micro-batches hold different numbers of maskable tokens)."""
    rows = []
    for i in range(n):
        ids = [5 + (7 * i + 3 * j) % 200 for j in range(length)]
        prompt = 2 + 3 * i
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "prompt_length": prompt})
    return rows


def fixed_mask(batch, config, generator=None):
    """Masks that depend only on the row's content, so a batch and its micro-batches mask the same tokens."""
    ids = batch["input_ids"]
    t = 0.2 + (ids[:, 0] % 7).float() / 10
    positions = torch.arange(ids.shape[1], device=ids.device)
    maskable = batch["labels"] != -100
    return t, maskable & ((ids + positions) % 3 != 0)


@pytest.mark.parametrize(
    ("model", "norm"),
    # LLaDA's forward has no **kwargs, Dream's has: transformers scales the loss for accumulation differently
    [("tiny-llada", "token"), ("tiny-llada", "sequence"), ("tiny-dream", "token"), ("tiny-dream", "batch")],
)
def test_gradient_accumulation_is_exact(workspace, tmp_path, monkeypatch, model, norm):
    monkeypatch.setattr(sft_trainer, "_encode", lambda cfg, loaded, rows, what, reporter: fixed_rows(len(rows)))
    monkeypatch.setattr(sft_trainer, "draw_mask", fixed_mask)
    make_args = sft_trainer.training_arguments
    # SGD without clipping: the update is lr × gradient, so any error in how micro-batches are weighted shows
    # (Adam's first step is about lr × sign(gradient) and would hide it).
    monkeypatch.setattr(
        sft_trainer, "training_arguments", lambda *a: dataclasses.replace(make_args(*a), optim="sgd", max_grad_norm=0.0)
    )
    results = {}
    for batch_size, accumulation in [(2, 2), (4, 1)]:
        cfg = config(
            workspace,
            tmp_path / f"{batch_size}x{accumulation}",
            model_name=model,
            lora=False,
            batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            train_steps=1,
            learning_rate=1.0,
            loss_norm_type=norm,
            pad_to="batch",  # random padding draws a length per batch: a batch and its halves would differ
        )
        results[batch_size] = run_sft(cfg, conversations(4), None, Reporter())
        assert results[batch_size].global_step == 1
    before = weights(load_model_and_tokenizer(model, workspace=workspace, dtype="float32").model)
    after = {k: weights(r.model) for k, r in results.items()}
    moved = max((after[4][k] - v).abs().max().item() for k, v in before.items())
    assert moved > 1e-3  # the step did something
    assert_same_weights(after[2], after[4])


def test_accuracy_counts_answer_tokens_and_padding_apart():
    sums = {"num_masked": 10.0, "num_correct": 7.0, "padding_masked": 4.0, "padding_correct": 4.0}
    assert sft_trainer._accuracies(sums, "eval_") == {
        "eval_accuracy": 3 / 6,  # 3 of the 6 masked answer tokens; the 4 easy pads are apart
        "eval_padding_accuracy": 1.0,
        "eval_padding_share": 0.4,
    }
    assert sft_trainer._accuracies({"num_masked": 5.0, "num_correct": 2.0}, "") == {"accuracy": 0.4}  # causal


# ---- exact resume ------------------------------------------------------------------------------------------------
def test_stop_and_resume_equals_uninterrupted_run(workspace, tmp_path):
    rows = conversations(16)
    whole = run_sft(config(workspace, tmp_path / "whole", train_steps=4), rows, None, Reporter())
    assert whole.global_step == 4 and not whole.stopped
    out = tmp_path / "stopped"
    first = run_sft(config(workspace, out, train_steps=4), rows, None, Reporter(stop_at=2))
    assert first.stopped and first.global_step == 2
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    resumed = run_sft(config(workspace, out, train_steps=4, resume_from_checkpoint="latest"), rows, None, Reporter())
    assert resumed.global_step == 4 and not resumed.stopped
    assert_same_weights(weights(whole.model), weights(resumed.model))


# ---- outputs -----------------------------------------------------------------------------------------------------
def test_saved_adapter_and_full_model_reload_to_the_same_logits(workspace, tmp_path):
    from peft import PeftModel

    reporter = Reporter()
    result = run_sft(config(workspace, tmp_path / "ckpt"), conversations(8), None, reporter)
    ids = torch.tensor([[5, 17, 99, 3, 42, 8, 250, 11]])
    model = result.model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    [adaptor] = save_outputs(result, adaptor_dir=tmp_path / "adaptor", full_model_dir=None)
    assert (adaptor / "adapter_config.json").is_file() and (adaptor / "adapter_model.safetensors").is_file()
    base = load_model_and_tokenizer("tiny-llada", workspace=workspace, dtype="float32").model
    reloaded = PeftModel.from_pretrained(base, adaptor).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, rtol=1e-5, atol=1e-5)
        untrained = load_model_and_tokenizer("tiny-llada", workspace=workspace, dtype="float32").model.eval()
        assert (untrained(input_ids=ids).logits - trained).abs().max() > 1e-4  # the adapter changed something
    [full] = save_outputs(result, adaptor_dir=None, full_model_dir=tmp_path / "full")
    loaded = load_model_and_tokenizer(full, dtype="float32")
    assert loaded.family.name == "llada" and not hasattr(loaded.model, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-4)
    names = {name for _, metrics in reporter.metrics for name in metrics}
    assert {"train/loss", "train/accuracy", "train/perplexity", "train/lr", "train/grad_norm"} <= names


# ---- every family ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "method"),
    [
        ("tiny-llada", "auto"),
        ("tiny-llada-moe", "llada_moe"),
        ("tiny-dream", "dream"),
        ("tiny-bert", "auto"),
        ("tiny-a2d", "a2d"),
        ("tiny-ar", "ar"),
    ],
)
def test_each_family_trains(workspace, tmp_path, model, method):
    reporter = Reporter()
    result = run_sft(
        config(workspace, tmp_path, model_name=model, training_method=method), conversations(4), None, reporter
    )
    assert result.global_step == 2
    losses = [m["train/loss"] for _, m in reporter.metrics if "train/loss" in m]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_training_method_must_match_the_model(workspace, tmp_path):
    with pytest.raises(ModelError, match="training_method=dream does not match .*llada model"):
        run_sft(config(workspace, tmp_path, training_method="dream"), conversations(4), None, Reporter())


def test_pretraining_on_text(workspace, tmp_path):
    texts = [f"Lily counts {i} apples and {i + 1} stones in the park every morning." for i in range(12)]
    reporter = Reporter()
    result = run_sft(
        config(workspace, tmp_path, train_mode="pretrain", max_length=16, random_length_ratio=0.5),
        texts,
        None,
        reporter,
    )
    assert result.global_step == 2
    assert any("texts packed into" in m for m in reporter.messages)
    # every token is maskable in pre-training: the mask ratio is the masked share of all tokens
    assert all(0 < m["train/mask_ratio"] <= 1 for _, m in reporter.metrics if "train/mask_ratio" in m)


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_all_examples_filtered_out_says_what_would_keep_them(workspace, tmp_path):
    # prompts of 25-27 tokens, answers of a few more
    with pytest.raises(ModelError, match=r"all 4 training data examples were dropped .*max_length \(now 28\)") as err:
        run_sft(config(workspace, tmp_path, max_length=28, truncation="filter"), conversations(4), None, Reporter())
    assert str(err.value).endswith("raise max_length (now 28) or use truncation=right to clip them")
    # prompts alone too long: clipping is of no help, so it is not advised
    with pytest.raises(ModelError, match=r"dropped 4 \(prompt alone longer than max_length\)") as err:
        run_sft(config(workspace, tmp_path, max_length=12), conversations(4), None, Reporter())
    assert str(err.value).endswith("raise max_length (now 12) above the prompts' length")


def test_eval_without_validation_data(workspace, tmp_path):
    with pytest.raises(ModelError, match="eval_strategy=steps needs validation data"):
        run_sft(config(workspace, tmp_path, eval_strategy="steps"), conversations(4), None, Reporter())


@pytest.mark.parametrize("where", ["latest", "missing"])
def test_resume_from_nothing(workspace, tmp_path, where):
    target = "latest" if where == "latest" else str(tmp_path / "nowhere")
    expected = "hold a checkpoint yet" if where == "latest" else "is not a checkpoint folder"
    with pytest.raises(ModelError, match=expected):
        run_sft(config(workspace, tmp_path / "out", resume_from_checkpoint=target), conversations(4), None, Reporter())


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(workspace, tmp_path, monkeypatch):
    real_loss = sft_trainer.diffusion_loss
    calls = []

    def poisoned(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        calls.append(1)
        return dataclasses.replace(out, loss=out.loss * float("nan")) if len(calls) == 3 else out

    monkeypatch.setattr(sft_trainer, "diffusion_loss", poisoned)
    with pytest.raises(FloatingPointError, match="at step 3"):
        run_sft(config(workspace, tmp_path, train_steps=5, save_steps=1), conversations(12), None, Reporter())
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


# ---- sample generations during training ---------------------------------------------------------------------------
def test_samples_are_logged_every_n_steps_with_the_family_sampler(workspace, tmp_path):
    from dlm.generation import SamplerSettings, answer

    reporter = Reporter()
    validation = conversations(3, offset=50)
    result = run_sft(
        config(workspace, tmp_path, train_steps=4, sample_every_steps=2, num_samples=2),
        conversations(8),
        validation,
        reporter,
    )
    assert len(reporter.texts) == 2  # steps 2 and 4
    prompts = [conv[:-1] for conv in validation[:2]]
    final = answer(
        result.model,
        result.tokenizer,
        result.loaded.family,
        result.loaded.special_ids,
        prompts,
        SamplerSettings(steps=32, max_new_tokens=32, block_length=32),
    )
    expected = "\n\n".join(f"PROMPT: {p[-1]['content']}\nANSWER: {a}" for p, a in zip(prompts, final, strict=True))
    assert reporter.texts[-1] == expected
    assert any(m.startswith("samples at step 4:") for m in reporter.messages)


# ---- the plugin through the local runner ---------------------------------------------------------------------------
def write_dataset(path: Path, n: int) -> Path:
    rows = [{"instruction": f"What is {i} + {i}?", "output": f"{2 * i}"} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run_trainer(workspace: str, tmp_path: Path, **values):
    from plugin_sdk.backends.local import JobRecord
    from plugin_sdk.runner import run_plugin
    from plugin_sdk.workspace import Workspace

    ws = Workspace(Path(workspace))
    params = {
        "model_name": "tiny-llada",
        "dataset": str(write_dataset(tmp_path / "data.jsonl", 24)),
        "train_device": "cpu",
        "batch_size": "2",
        "num_train_epochs": "0",
        "train_steps": "4",
        "max_length": "64",
        "learning_rate": "0.001",
        "logging_steps": "1",
        "dtype": "float32",
        "adaptor_name": tmp_path.name,
        **values,
    }
    code, job_id = run_plugin(PLUGIN, params, workspace=ws, experiment="sft", show_progress=False)
    log = (ws.job_dir(job_id) / f"output_{job_id}.txt").read_text()
    return code, JobRecord(ws, job_id).read(), log, ws


@pytest.mark.slow
def test_plugin_run_writes_adapter_metrics_and_tensorboard(workspace, tmp_path):
    code, record, log, ws = run_trainer(
        workspace,
        tmp_path,
        eval_strategy="steps",
        eval_steps="2",
        validation_fraction="0.25",
        lora="true",
        save_full_model="true",
        pad_to="max_length",
    )
    assert code == 0, log
    assert record["status"] == "COMPLETE" and record["job_data"]["completion_status"] == "success", log
    assert (ws.adaptor_dir("tiny-llada", tmp_path.name) / "adapter_config.json").is_file()
    # the merged model is registered under its own class, not the LoRA wrapper's
    registered = json.loads((ws.model_dir(f"tiny-llada_{tmp_path.name}") / "index.json").read_text())
    assert registered["json_data"]["architecture"] == "LLaDAModelLM"
    metrics = json.loads((ws.trainer_output_dir("sft", "diffusion_llm_trainer") / "metrics.json").read_text())
    assert {"train/loss", "train/accuracy", "train/perplexity", "train/lr", "val/loss"} <= set(metrics)
    # LLaDA trains on its end-of-text padding (here every batch padded to max_length): reported apart from the
    # answer tokens
    assert {"train/padding_accuracy", "train/padding_share", "val/padding_accuracy"} <= set(metrics)
    assert 0.3 < metrics["train/padding_share"] < 1  # rows of ~20 tokens padded to 64
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(record["job_data"]["tensorboard_output_dir"])
    events.Reload()
    assert len(events.Scalars("train/loss")) == 4 and len(events.Scalars("val/loss")) == 2


@pytest.mark.slow
def test_two_processes_see_different_data_and_end_with_identical_weights(workspace, tmp_path):
    import os
    import subprocess

    from plugin_sdk.launch import LaunchPlan, accelerate_command

    dlm.presets.tiny.ensure_preset("tiny-llada", workspace)
    script = str(REPO / "tests" / "scripts" / "sft_rank_probe.py")
    command = accelerate_command(LaunchPlan(num_processes=2, use_cpu=True), [script, workspace, str(tmp_path)])
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen{rank}.json").read_text()) for rank in (0, 1)]
    assert [s["world"] for s in seen] == [2, 2]
    # at least 3 steps x batch 2 on each rank (the loader may collate a batch ahead), and no example on both
    assert all(len(s["seen"]) >= 6 for s in seen)
    assert not {tuple(x) for x in seen[0]["seen"]} & {tuple(x) for x in seen[1]["seen"]}
    ranks = [torch.load(tmp_path / f"weights{rank}.pt") for rank in (0, 1)]
    before = weights(load_model_and_tokenizer("tiny-llada", workspace=workspace, dtype="float32").model)
    assert max((ranks[0][k] - v).abs().max().item() for k, v in before.items()) > 1e-4  # training happened
    assert_same_weights(ranks[0], ranks[1], atol=0.0)


@pytest.mark.slow
def test_plugin_two_cpu_processes(workspace, tmp_path):
    code, record, log, ws = run_trainer(workspace, tmp_path, num_processes="2")
    assert code == 0, log
    assert record["job_data"]["completion_status"] == "success", log
    assert log.count("saved ") == 1, log
    assert (ws.adaptor_dir("tiny-llada", tmp_path.name) / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_plugin_stopped_from_the_runner_resumes_in_a_new_job(workspace, tmp_path):
    import subprocess
    import sys
    import time

    from plugin_sdk.backends.local import JobRecord
    from plugin_sdk.runner import request_stop
    from plugin_sdk.workspace import Workspace

    ws = Workspace(Path(workspace))
    job_id = ws.next_job_id()
    data = str(write_dataset(tmp_path / "data.jsonl", 24))
    settings = ["--set", "model_name=tiny-llada", "--set", f"dataset={data}", "--set", "train_device=cpu"]
    for key, value in [("train_steps", 40), ("num_train_epochs", 0), ("max_length", 64), ("save_steps", 1000)]:
        settings += ["--set", f"{key}={value}"]
    command = [sys.executable, "-m", "plugin_sdk", "run", str(PLUGIN), "--workspace", workspace, "--experiment", "stop"]
    process = subprocess.Popen(
        [*command, *settings, "--set", f"job_id={job_id}"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while JobRecord(ws, job_id).read().get("progress", 0) < 10:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    request_stop(ws, job_id)
    out, _ = process.communicate(timeout=120)
    record = JobRecord(ws, job_id).read()
    assert process.returncode == 3 and record["status"] == "STOPPED", out
    assert "resume with resume_from_checkpoint=latest" in record["job_data"]["completion_details"]
    stopped_at = int(record["job_data"]["completion_details"].split("stopped at step ")[1].split(";")[0])
    assert 0 < stopped_at < 40
    resumed = subprocess.run(
        [*command, *settings, "--set", "resume_from_checkpoint=latest"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"checkpoint-{stopped_at}" in resumed.stdout and "for 40 steps" in resumed.stdout
