"""Diffusion GRPO: the config from the form's strings and its errors; tiny GRPO runs on tiny-llada whose logged
metrics are checked by value against a recomputation from the very rollouts they were taken on (rewards by the toy
reward itself, lengths by counting tokens), KL 0 at the first step for the reference by disabled adapters and for
the frozen copy, and an exact resume."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

import dlm.trainers.grpo_trainer as grpo_trainer
from dlm.errors import DlmError, ModelError
from dlm.loading import load_model_and_tokenizer
from dlm.trainers.grpo_config import GRPOConfig
from dlm.trainers.grpo_trainer import completion_mask, run_grpo
from plugin_sdk.params import coerce_and_validate
from plugin_sdk.prompts import PromptExample
from tests.helpers import Reporter, max_difference, tiny_run, weights

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "diffusion_grpo_trainer"
GROUP = 4
# The toy reward: the share of the completion's characters that are digits (a float, and varied within a group).
TOY_REWARD = """
def reward(prompts, completions, **columns):
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]
"""


def toy_reward(text: str) -> float:
    return sum(c.isdigit() for c in text) / max(len(text), 1)


def prompts(n: int) -> list[PromptExample]:
    return [
        PromptExample(
            str(i), [{"role": "user", "content": f"What is {i} + {i}?" + " Please." * (i % 3)}], {"answer": str(2 * i)}
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def workspace(preset_workspace: Path) -> str:
    return str(preset_workspace)


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("rewards") / "toy_reward.py"
    path.write_text(TOY_REWARD)
    return str(path)


def config(workspace: str, out: Path, reward_file: str, **overrides) -> GRPOConfig:
    values = {
        **tiny_run(workspace, out),
        "train_steps": 1,
        "batch_size": 2,
        "num_generations": GROUP,
        "max_prompt_length": 32,
        "max_completion_length": 8,
        "steps": 8,
        "block_length": 8,
        "reward_funcs": (),
        "reward_file": reward_file,
        "trust_remote_code": True,
        "lora_r": 4,
        "lora_alpha": 8,
    }
    return GRPOConfig(**{**values, **overrides})


# ---- the config --------------------------------------------------------------------------------------------------
def form_config(edits: dict[str, str], tmp_path: Path) -> GRPOConfig:
    manifest = json.loads((PLUGIN / "index.json").read_text())
    params = coerce_and_validate(edits, manifest["parameters"], aliases=manifest.get("parameter_aliases"))
    return GRPOConfig.from_params(params, model_name="tiny-llada", output_dir=str(tmp_path))


def test_the_config_from_the_forms_strings(tmp_path):
    built = form_config(
        {
            "num_generations": "6",
            "num_iterations": "2",
            "beta": "0",
            "epsilon_high": "0.28",
            "scale_rewards": "false",
            "leave_one_out": "true",
            "reward_funcs": "answer_match,soft_format",
            "reward_weights": "1, 0.5",
            "logp_estimator": "coupled",
            "cache": "prefix",
            "parallel_threshold": "0.9",
        },
        tmp_path,
    )
    assert (built.num_generations, built.num_iterations, built.beta) == (6, 2, 0.0)
    assert (built.epsilon, built.clip_high, built.scale_rewards, built.leave_one_out) == (0.2, 0.28, False, True)
    assert built.reward_funcs == ("answer_match", "soft_format") and built.reward_weights == (1.0, 0.5)
    sampler = built.sampler_settings()
    assert (sampler.max_new_tokens, sampler.cache, sampler.parallel_threshold) == (128, "prefix", 0.9)
    assert (sampler.top_p, sampler.top_k, sampler.alg_temp) == (None, None, None)  # the form's "off" values


def test_the_default_config_trains_answer_match_alone(tmp_path):
    built = form_config({}, tmp_path)
    assert built.reward_funcs == ("answer_match",) and built.reward_weights == () and built.reward_file == ""
    assert built.clip_high == built.epsilon


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_generations": 1}, "num_generations=1"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"max_completion_length": 600}, "max_prompt_length=256 \\+ max_completion_length=600 .* max_length=512"),
        ({"epsilon_high": 0.1}, "epsilon_high=0.1 is below epsilon=0.2"),
        ({"loss_type": "ppo"}, "loss_type='ppo' is not one of"),
        ({"logp_estimator": "exact"}, "logp_estimator='exact' is not one of"),
        ({"reward_funcs": ("answer_matsh",)}, "answer_matsh"),
        ({"reward_funcs": ("answer_match", "soft_format"), "reward_weights": (1.0,)}, "reward_weights"),
        ({"reward_file": "/nonexistent/reward.py", "trust_remote_code": True}, "reward_file"),
        ({"reward_weights": (float("nan"),)}, "reward_weights: \\[nan\\] are not all finite"),
        ({"cache": "always"}, "cache='always' is unknown"),
    ],
)
def test_bad_settings_are_named_when_the_config_is_built(tmp_path, overrides, message):
    with pytest.raises(DlmError, match=message):
        GRPOConfig(model_name="tiny-llada", output_dir=str(tmp_path), **overrides)


def test_a_reward_file_runs_only_with_trust_remote_code(tmp_path, reward_file):
    with pytest.raises(DlmError, match="trust_remote_code"):
        GRPOConfig(model_name="tiny-llada", output_dir=str(tmp_path), reward_file=reward_file)


def test_completion_mask_ends_at_the_first_end_token_included():
    ids = torch.tensor([[5, 6, 1, 7, 1], [5, 6, 7, 8, 9], [2, 1, 1, 1, 1]])
    assert completion_mask(ids, (1, 2)).tolist() == [
        [True, True, True, False, False],
        [True] * 5,
        [True, False, False, False, False],
    ]


# ---- tiny runs -----------------------------------------------------------------------------------------------------
@pytest.fixture
def recorded(monkeypatch):
    """Every rollout batch the trainer buffers, as it buffered it."""
    batches: list[dict] = []
    original = grpo_trainer.DiffusionGRPOTrainer._generate_and_score_completions

    def record(self, inputs, step, micro):
        out = original(self, inputs, step, micro)
        batches.append(out)
        return out

    monkeypatch.setattr(grpo_trainer.DiffusionGRPOTrainer, "_generate_and_score_completions", record)
    return batches


def completion_texts(workspace: str, completion_ids: torch.Tensor) -> tuple[list[str], list[int]]:
    """Each completion's text up to its first end token and its length counting that token, recomputed here."""
    loaded = load_model_and_tokenizer("tiny-llada", workspace=workspace)
    ends = {loaded.special_ids.eos, loaded.special_ids.eot}
    texts, lengths = [], []
    for row in completion_ids.tolist():
        cut = next((i for i, token in enumerate(row) if token in ends), None)
        texts.append(loaded.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        lengths.append(len(row) if cut is None else cut + 1)
    return texts, lengths


@pytest.mark.parametrize("lora", [True, False], ids=["disabled adapters", "frozen copy"])
def test_logged_metrics_are_those_of_the_rollouts(workspace, tmp_path, reward_file, recorded, lora):
    reporter = Reporter()
    steps = 2
    result = run_grpo(
        config(workspace, tmp_path, reward_file, train_steps=steps, lora=lora, learning_rate=0.01 if lora else 1e-3),
        prompts(8),
        reporter,
    )
    assert result.global_step == steps and not result.stopped
    assert len(recorded) == steps  # one rollout batch per step (num_iterations 1, no accumulation)
    logged = [m for _, m in reporter.metrics if "train/reward" in m]
    assert len(logged) == steps
    for batch, metrics in zip(recorded, logged, strict=True):
        texts, lengths = completion_texts(workspace, batch["rollouts"].completion_ids.cpu())
        rewards = [toy_reward(text) for text in texts]
        groups = [rewards[i : i + GROUP] for i in range(0, len(rewards), GROUP)]
        assert metrics["train/reward"] == pytest.approx(statistics.mean(rewards), rel=1e-5, abs=1e-7)
        assert metrics["train/rewards/reward"] == pytest.approx(statistics.mean(rewards), rel=1e-5, abs=1e-7)
        expected_std = statistics.mean(statistics.stdev(group) for group in groups)
        assert metrics["train/reward_std"] == pytest.approx(expected_std, rel=1e-5, abs=1e-7)
        assert metrics["train/completion_length"] == pytest.approx(statistics.mean(lengths), rel=1e-6)
        advantages = [(r - statistics.mean(g)) / (statistics.stdev(g) + 1e-4) for g in groups for r in g]
        assert batch["advantages"].tolist() == pytest.approx(advantages, rel=1e-4, abs=1e-5)
        assert metrics["train/rollout_time"] > 0 and metrics["train/update_time"] > 0
    # the policy starts as the reference: KL exactly 0 at the first step, then it moves away
    assert logged[0]["train/kl"] == 0.0
    assert logged[1]["train/kl"] > 0.0
    assert logged[0]["train/clip_ratio"] == 0.0  # one update per rollout: the ratio is 1
    assert any("reference disabled adapters" in m for m in reporter.messages) == lora


def test_several_updates_per_rollout_reuse_it_with_new_masks(workspace, tmp_path, reward_file, recorded):
    """Two micro-batches per step (accumulation), each sampled once and updated on twice."""
    reporter = Reporter()
    overrides = {"train_steps": 4, "num_iterations": 2, "beta": 0.0, "gradient_accumulation_steps": 2, "batch_size": 1}
    run_grpo(config(workspace, tmp_path, reward_file, **overrides), prompts(4), reporter)
    assert len(recorded) == 4  # steps 0 and 2 sample both micro-batches; steps 1 and 3 reuse them
    first, second = recorded[0], recorded[1]
    assert not torch.equal(first["rollouts"].prompt_ids, second["rollouts"].prompt_ids)
    assert first["ref_logps"] is None and first["old_logps"].shape[:2] == (2, GROUP)
    assert len({*first["seeds"], *second["seeds"]}) == 4  # a mask seed per iteration and micro-batch
    logged = [m for _, m in reporter.metrics if "train/loss" in m]
    assert "train/kl" not in logged[0]  # beta 0: no reference scored
    assert [("train/reward" in m) for m in logged] == [True, False, True, False]
    assert logged[0]["train/clip_ratio"] == 0.0  # the first update on a rollout: the ratio is 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_name", ["tiny-dream", "tiny-bert", "tiny-a2d", "tiny-bd3lm", "tiny-sdar", "tiny-llada2", "tiny-llada-moe"]
)
def test_every_family_trains_a_step_from_its_reference(workspace, tmp_path, reward_file, model_name):
    reporter = Reporter()
    run_grpo(config(workspace, tmp_path, reward_file, model_name=model_name), prompts(4), reporter)
    assert reporter.first("train/kl") == 0.0 and math.isfinite(reporter.first("train/loss"))


VOWEL_REWARD = """
def reward(prompts, completions, **columns):
    return [sum(c in "aeiou" for c in text) / max(len(text), 1) for text in completions]
"""


@pytest.mark.slow
def test_training_raises_the_reward(workspace, tmp_path):
    """The share of vowels in tiny-llada's random completions rises under GRPO (a loss of the wrong sign lowers it)."""
    reward = tmp_path / "vowels.py"
    reward.write_text(VOWEL_REWARD)
    reporter = Reporter()
    overrides = {"train_steps": 60, "learning_rate": 0.05, "num_generations": 8, "beta": 0.0, "lora_r": 8}
    run_grpo(config(workspace, tmp_path / "out", str(reward), lora_alpha=16, **overrides), prompts(16), reporter)
    rewards = [m["train/reward"] for _, m in reporter.metrics if "train/reward" in m]
    first, last = statistics.mean(rewards[:10]), statistics.mean(rewards[-10:])
    assert last > first + 0.04, (first, last)


@pytest.mark.slow
def test_stop_and_resume_equals_uninterrupted_run(workspace, tmp_path, reward_file):
    common = {"train_steps": 3, "learning_rate": 0.01}
    whole = run_grpo(config(workspace, tmp_path / "whole", reward_file, **common), prompts(8), Reporter())
    out = tmp_path / "stopped"
    first = run_grpo(config(workspace, out, reward_file, **common), prompts(8), Reporter(stop_at=1))
    assert first.stopped and first.global_step == 1
    resumed = run_grpo(
        config(workspace, out, reward_file, resume_from_checkpoint="latest", **common), prompts(8), Reporter()
    )
    assert resumed.global_step == 3 and not resumed.stopped
    assert max_difference(weights(whole.model), weights(resumed.model)) <= 1e-6


def test_a_model_without_a_mask_token_is_refused(workspace, tmp_path, reward_file):
    with pytest.raises(ModelError, match="tiny-ar is a ar model without a mask token"):
        run_grpo(config(workspace, tmp_path, reward_file, model_name="tiny-ar"), prompts(4), Reporter())


def test_fewer_prompts_than_a_step_takes_is_named(workspace, tmp_path, reward_file):
    with pytest.raises(DlmError, match="one optimizer step takes 4 prompts .* the data has 3"):
        run_grpo(config(workspace, tmp_path, reward_file, gradient_accumulation_steps=2), prompts(3), Reporter())
