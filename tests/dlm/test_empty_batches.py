"""A batch with nothing to score (no masked answer token) has no loss: the logged train/loss, perplexity, accuracy and
mask ratio are checked by value against the losses of the scored batches, recomputed independently."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import dlm.trainers.sft_trainer as sft_trainer
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft
from tests.helpers import Reporter, doubling_conversations, tiny_run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("empty_batch_ws"))


def train_with_empty_steps(workspace: str, out: Path, monkeypatch, *, empty: set[int], **overrides):
    """Train 3 steps of one batch each; the masks of the steps in `empty` (1-based) mask nothing. Returns the
    reporter and each step's LossOutput."""
    draws, outputs = [], []
    real_draw, real_loss = sft_trainer.draw_mask, sft_trainer.diffusion_loss

    def draw(batch, config, generator=None):
        t, masked = real_draw(batch, config, generator)
        draws.append(masked)
        return (t, torch.zeros_like(masked)) if len(draws) in empty else (t, masked)

    def loss(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        outputs.append(out)
        return out

    monkeypatch.setattr(sft_trainer, "draw_mask", draw)
    monkeypatch.setattr(sft_trainer, "diffusion_loss", loss)
    values = {**tiny_run(workspace, out), "batch_size": 2, "train_steps": 3, "warmup_ratio": 0.0, **overrides}
    reporter = Reporter()
    result = run_sft(SFTConfig(**values), doubling_conversations(6), None, reporter)
    assert len(outputs) == 3 and [bool(o.empty) for o in outputs] == [i + 1 in empty for i in range(3)]
    return reporter, outputs, result


def test_an_empty_last_batch_is_left_out_of_the_logged_averages(workspace, tmp_path, monkeypatch):
    reporter, outs, _ = train_with_empty_steps(workspace, tmp_path / "run", monkeypatch, empty={3}, logging_steps=3)
    [(step, logged)] = [(s, m) for s, m in reporter.metrics if "train/loss" in m]
    scored = outs[:2]
    assert step == 3
    assert logged["train/loss"] == pytest.approx(sum(float(o.loss.detach()) for o in scored) / 2, rel=1e-5)
    nll = sum(float(o.nll_sum) for o in scored) / sum(float(o.num_maskable) for o in scored)
    assert logged["train/perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert logged["train/perplexity"] > 1.0
    masked = sum(float(o.num_masked) for o in scored)
    assert logged["train/mask_ratio"] == pytest.approx(masked / sum(float(o.num_maskable) for o in outs), rel=1e-6)
    assert logged["train/skipped_empty_batches"] == 1


def test_a_logging_window_with_nothing_scored_logs_no_loss_or_perplexity(workspace, tmp_path, monkeypatch):
    reporter, outs, result = train_with_empty_steps(workspace, tmp_path / "run", monkeypatch, empty={3})
    by_step = {step: metrics for step, metrics in reporter.metrics if "train/lr" in metrics}
    assert by_step[3].get("train/loss") is None and by_step[3].get("train/perplexity") is None
    assert by_step[3]["train/mask_ratio"] == 0.0 and by_step[3]["train/skipped_empty_batches"] == 1
    assert by_step[2]["train/loss"] == pytest.approx(float(outs[1].loss), rel=1e-5)
    assert f"final train/loss {by_step[2]['train/loss']:.4g}" in result.summary  # not 0


def test_only_empty_batches_log_no_loss_at_all(workspace, tmp_path, monkeypatch):
    reporter, _, result = train_with_empty_steps(workspace, tmp_path / "run", monkeypatch, empty={1, 2, 3})
    assert not [m for _, m in reporter.metrics if "train/loss" in m or "train/perplexity" in m]
    assert "final train/loss n/a" in result.summary


def test_dpo_sft_loss_is_averaged_over_scored_batches_only(workspace, tmp_path, monkeypatch):
    import dlm.trainers.dpo_trainer as dpo_trainer
    from dlm.trainers.dpo_config import DPOConfig
    from dlm.trainers.dpo_trainer import run_dpo
    from tests.dlm.test_dpo import pairs

    draws, outputs = [], []
    real_draw, real_loss = dpo_trainer.draw_mask, dpo_trainer.diffusion_loss

    def draw(batch, config, generator=None):
        t, masked = real_draw(batch, config, generator)
        draws.append(masked)
        return (t, torch.zeros_like(masked)) if len(draws) == 2 else (t, masked)

    def loss(*args, **kwargs):
        outputs.append(real_loss(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(dpo_trainer, "draw_mask", draw)
    monkeypatch.setattr(dpo_trainer, "diffusion_loss", loss)
    values = {**tiny_run(workspace, tmp_path / "run"), "batch_size": 2, "train_steps": 2, "warmup_steps": 0}
    values |= {"mc_samples": 2, "sft_weight": 0.5, "logging_steps": 2}
    reporter = Reporter()
    run_dpo(DPOConfig(**values), pairs(4), None, reporter)
    assert [bool(o.empty) for o in outputs] == [False, True]
    [logged] = [m for _, m in reporter.metrics if "train/sft_loss" in m]
    assert logged["train/sft_loss"] == pytest.approx(float(outputs[0].loss.detach()), rel=1e-5)  # not halved by 0


def test_an_empty_validation_batch_is_left_out_of_val_loss(workspace, tmp_path, monkeypatch):
    eval_outputs = []
    real_draw, real_loss = sft_trainer.draw_mask, sft_trainer.diffusion_loss

    def draw(batch, config, generator=None):
        t, masked = real_draw(batch, config, generator)
        first_eval_batch = generator is not None and not eval_outputs
        return (t, torch.zeros_like(masked)) if first_eval_batch else (t, masked)

    def loss(model, batch, **kwargs):
        out = real_loss(model, batch, **kwargs)
        if not model.training:
            eval_outputs.append(out)
        return out

    monkeypatch.setattr(sft_trainer, "draw_mask", draw)
    monkeypatch.setattr(sft_trainer, "diffusion_loss", loss)
    values = {**tiny_run(workspace, tmp_path / "run"), "batch_size": 2, "train_steps": 1, "warmup_ratio": 0.0}
    values |= {"eval_strategy": "steps", "eval_steps": 1}
    reporter = Reporter()
    run_sft(SFTConfig(**values), doubling_conversations(4), doubling_conversations(4), reporter)
    assert [bool(o.empty) for o in eval_outputs] == [True, False]
    [logged] = [m for _, m in reporter.metrics if "val/loss" in m]
    assert logged["val/loss"] == pytest.approx(float(eval_outputs[1].loss), rel=1e-5)  # not halved by the empty one
    scored = eval_outputs[1]
    assert logged["val/perplexity"] == pytest.approx(math.exp(float(scored.nll_sum / scored.num_maskable)), rel=1e-5)
