"""Block diffusion end to end: the tiny-bd3lm preset (a causal LM converted with kind=bd3lm), SFT and pre-training
with the block loss, and the plugin through the local runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dlm.block_diffusion
import dlm.losses
from dlm.convert import convert_causal_to_diffusion
from dlm.data import DiffusionCollator
from dlm.errors import ConfigError, ModelError
from dlm.families import get_family
from dlm.families.special_ids import SpecialIds
from dlm.loading import load_model_and_tokenizer
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft
from tests.helpers import Reporter, tiny_run

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "diffusion_llm_trainer"


def conversations(n: int) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "user", "content": f"What is {i} + {2 * i}?"},
            {"role": "assistant", "content": f"{i} + {2 * i} = {3 * i}."},
        ]
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def workspace(workspace_with_presets) -> str:
    return str(workspace_with_presets("bd3lm_ws"))


def config(workspace: str, out: Path, **overrides) -> SFTConfig:
    values = {**tiny_run(workspace, out), "model_name": "tiny-bd3lm", "batch_size": 2, "train_steps": 2}
    return SFTConfig(**{**values, "warmup_ratio": 0.0, **overrides})


def test_tiny_bd3lm_is_a_converted_causal_model_with_its_block_size(workspace):
    loaded = load_model_and_tokenizer("tiny-bd3lm", workspace=workspace)
    assert loaded.family.name == "bd3lm" and loaded.family.sampler == "bd3lm"
    raw = json.loads((Path(loaded.path) / "config.json").read_text())
    assert raw["is_causal"] is False and raw["block_diffusion"] is True and raw["block_size"] == 4
    assert raw["architectures"] == ["LlamaForCausalLM"] and raw["mask_token_id"] == len(loaded.tokenizer) - 1


def test_convert_kinds_are_told_apart(workspace, tmp_path):
    source = Path(workspace) / "models" / "tiny-ar"
    a2d = convert_causal_to_diffusion(source, tmp_path / "a2d")
    bd3lm = convert_causal_to_diffusion(source, tmp_path / "bd3lm", kind="bd3lm", block_size=8)
    assert load_model_and_tokenizer(str(a2d)).family.name == "a2d"
    loaded = load_model_and_tokenizer(str(bd3lm))
    assert loaded.family.name == "bd3lm" and loaded.model.config.block_size == 8
    with pytest.raises(ModelError, match="unknown conversion kind 'sdar'"):
        convert_causal_to_diffusion(source, tmp_path / "x", kind="sdar")


def test_collator_pads_to_a_block_multiple_with_trained_eos():
    special = SpecialIds(mask=9, eos=2, pad=2, bos=None, eot=None)
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5, 6, 7, 8, 2], "labels": [-100] * 5}]
    batch = DiffusionCollator(get_family("bd3lm"), special, pad_to_multiple_of=4)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2, 2, 2, 2, 2], [5, 6, 7, 8, 2, 2, 2, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7, 2, 2, 2, 2, 2], [-100] * 5 + [2, 2, 2]]


def test_sft_trains_with_the_block_loss(workspace, tmp_path, monkeypatch):
    calls = []
    original = dlm.block_diffusion.block_logits_at_positions

    def spy(model, noisy_ids, clean_ids, block_size, positions, attention_mask=None):
        calls.append((block_size, noisy_ids.shape[1]))
        return original(model, noisy_ids, clean_ids, block_size, positions, attention_mask)

    monkeypatch.setattr("dlm.losses.block_logits_at_positions", spy)
    reporter = Reporter()
    cfg = config(workspace, tmp_path, eval_strategy="steps", eval_steps=2)
    result = run_sft(cfg, conversations(4), conversations(2), reporter)
    assert result.global_step == 2
    assert calls and all(block == 4 and length % 4 == 0 for block, length in calls)
    assert any("val/loss" in m for _, m in reporter.metrics)  # validation runs the block loss too
    losses = [m["train/loss"] for _, m in reporter.metrics if "train/loss" in m]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_pretraining_with_per_block_times(workspace, tmp_path, monkeypatch):
    shapes = []
    original = dlm.losses.draw_mask

    def spy(batch, loss_config, generator=None):
        t, masked = original(batch, loss_config, generator)
        shapes.append((loss_config.block_size, tuple(t.shape), tuple(masked.shape)))
        return t, masked

    monkeypatch.setattr("dlm.trainers.sft_trainer.draw_mask", spy)
    texts = [f"Lily counts {i} apples and {i + 1} stones in the park every morning." for i in range(12)]
    cfg = config(workspace, tmp_path, train_mode="pretrain", max_length=14, block_size=2, block_time="block")
    result = run_sft(cfg, texts, None, Reporter())
    assert result.global_step == 2
    assert shapes and all(block == 2 and t == m for block, t, m in shapes)


def test_block_size_is_refused_for_full_sequence_diffusion(workspace, tmp_path):
    with pytest.raises(ConfigError, match="block_size=4 applies to block diffusion models"):
        run_sft(config(workspace, tmp_path, model_name="tiny-a2d", block_size=4), conversations(4), None, Reporter())


@pytest.mark.slow
def test_loss_falls_on_a_toy_task(workspace, tmp_path):
    reporter = Reporter()
    cfg = config(workspace, tmp_path, train_steps=30, batch_size=4, learning_rate=1e-3, seed=0, lora=False)
    run_sft(cfg, conversations(8) * 4, None, reporter)
    losses = [m["train/loss"] for _, m in reporter.metrics if "train/loss" in m]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, [round(x, 2) for x in losses]


@pytest.mark.slow
def test_plugin_trains_tiny_bd3lm(workspace, tmp_path):
    from plugin_sdk.backends.local import JobRecord
    from plugin_sdk.runner import run_plugin
    from plugin_sdk.workspace import Workspace

    data = tmp_path / "data.jsonl"
    data.write_text(
        "\n".join(json.dumps({"instruction": f"What is {i} + {i}?", "output": f"{2 * i}"}) for i in range(8))
    )
    ws = Workspace(Path(workspace))
    params = {
        "model_name": "tiny-bd3lm",
        "dataset": str(data),
        "train_device": "cpu",
        "batch_size": "2",
        "num_train_epochs": "0",
        "train_steps": "2",
        "max_length": "64",
        "logging_steps": "1",
        "dtype": "float32",
        "block_size": "4",
        "adaptor_name": tmp_path.name,
    }
    code, job_id = run_plugin(PLUGIN, params, workspace=ws, experiment="bd3lm", show_progress=False)
    log = (ws.job_dir(job_id) / f"output_{job_id}.txt").read_text()
    assert code == 0, log
    record = JobRecord(ws, job_id).read()
    assert record["job_data"]["completion_status"] == "success", log
    assert "bd3lm" in log
