"""Each logged training metric against an independent computation from the losses the trainer computed (recorded
by wrapping its loss function): SFT perplexity, accuracy and mask ratio per step, and DPO rewards and reward
accuracy, where a tie (the first step, policy = reference) is not a correct preference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import dlm.trainers.dpo_trainer as dpo_trainer
import dlm.trainers.sft_trainer as sft_trainer
from dlm.trainers.dpo_config import DPOConfig
from dlm.trainers.dpo_trainer import run_dpo
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft
from tests.dlm.test_dpo import pairs
from tests.helpers import Reporter, doubling_conversations, tiny_run

STEPS = 3


@pytest.fixture(scope="module")
def workspace(preset_workspace: Path) -> str:
    return str(preset_workspace)


def logged(reporter: Reporter, name: str) -> list[float]:
    return [metrics[name] for _, metrics in reporter.metrics if name in metrics]


# ---- SFT: one micro-batch per logged step, so each logged value is that batch's ---------------------------------
@pytest.fixture(scope="module")
def sft_steps(workspace: str, tmp_path_factory: pytest.TempPathFactory):
    values = {**tiny_run(workspace, tmp_path_factory.mktemp("sft_logged")), "batch_size": 2, "train_steps": STEPS}
    config = SFTConfig(**{**values, "warmup_ratio": 0.0})
    batches = []
    real = sft_trainer.diffusion_loss

    def recording(model, inputs, **kwargs):
        out = real(model, inputs, **kwargs)
        if model.training:
            batches.append((out, inputs.get("padding_mask")))
        return out

    reporter = Reporter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sft_trainer, "diffusion_loss", recording)
        run_sft(config, doubling_conversations(2 * STEPS), None, reporter)
    assert len(batches) == STEPS
    return batches, reporter


def test_perplexity_is_exp_of_the_nll_per_maskable_token(sft_steps):
    batches, reporter = sft_steps
    expected = [math.exp(float(out.nll_sum) / float(out.num_maskable)) for out, _ in batches]
    assert all(value < math.exp(50.0) for value in expected)  # under the cap, where a wrong divisor shows
    # masked and maskable counts differ on these batches, so dividing by the masked count would not pass
    assert any(int(out.num_masked) != int(out.num_maskable) for out, _ in batches)
    assert logged(reporter, "train/perplexity") == pytest.approx(expected, rel=1e-6)


def test_mask_ratio_is_masked_over_maskable_tokens(sft_steps):
    batches, reporter = sft_steps
    expected = [float(out.num_masked) / float(out.num_maskable) for out, _ in batches]
    assert logged(reporter, "train/mask_ratio") == pytest.approx(expected, rel=1e-6)


def test_accuracy_counts_masked_answer_tokens_without_padding(sft_steps):
    batches, reporter = sft_steps
    expected = []
    for out, padding in batches:
        answer = out.masked & ~padding if padding is not None else out.masked
        expected.append(float((out.correct & answer).sum()) / max(float(answer.sum()), 1.0))
    assert logged(reporter, "train/accuracy") == pytest.approx(expected, rel=1e-6)


def test_loss_is_the_nll_per_maskable_token(sft_steps):
    batches, reporter = sft_steps
    expected = [float(out.nll_sum) / float(out.num_maskable) for out, _ in batches]
    assert logged(reporter, "train/loss") == pytest.approx(expected, rel=1e-4)


# ---- DPO ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dpo_steps(workspace: str, tmp_path_factory: pytest.TempPathFactory):
    values = {**tiny_run(workspace, tmp_path_factory.mktemp("dpo_logged")), "batch_size": 4, "train_steps": STEPS}
    config = DPOConfig(**{**values, "warmup_steps": 0, "mc_samples": 2, "sft_weight": 0.0})
    outputs = []
    real = dpo_trainer.elbo_dpo_loss

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        outputs.append(out)
        return out

    reporter = Reporter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dpo_trainer, "elbo_dpo_loss", recording)
        run_dpo(config, pairs(4 * STEPS), None, reporter)
    assert len(outputs) == STEPS
    return outputs, reporter


def test_a_tie_is_not_a_correct_preference(dpo_steps):
    """At the first step the policy is the reference: every reward is 0, every pair a tie, the accuracy 0."""
    outputs, reporter = dpo_steps
    first = outputs[0]
    assert torch.equal(first.chosen_rewards, first.rejected_rewards)
    assert logged(reporter, "train/rewards/accuracies")[0] == 0.0


@pytest.mark.parametrize(
    ("name", "compute"),
    [
        ("train/rewards/accuracies", lambda out: (out.chosen_rewards > out.rejected_rewards).double().mean()),
        ("train/rewards/chosen", lambda out: out.chosen_rewards.double().mean()),
        ("train/rewards/rejected", lambda out: out.rejected_rewards.double().mean()),
        ("train/rewards/margins", lambda out: (out.chosen_rewards - out.rejected_rewards).double().mean()),
        ("train/logps/chosen", lambda out: out.policy_logps[: len(out.chosen_rewards)].double().mean()),
        ("train/logps/rejected", lambda out: out.policy_logps[len(out.chosen_rewards) :].double().mean()),
    ],
    ids=lambda v: v.removeprefix("train/") if isinstance(v, str) else "",
)
def test_dpo_metrics_are_the_means_over_the_steps_pairs(dpo_steps, name, compute):
    outputs, reporter = dpo_steps
    expected = [float(compute(out)) for out in outputs]
    assert logged(reporter, name) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_later_steps_have_decided_pairs(dpo_steps):
    """The accuracy test above would not see a wrong comparison if every later pair were a tie too."""
    outputs, _ = dpo_steps
    assert any(not torch.equal(out.chosen_rewards, out.rejected_rewards) for out in outputs[1:])
