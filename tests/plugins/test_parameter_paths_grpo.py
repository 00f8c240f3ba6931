"""The GRPO trainer's settings reach their effects: values as the host sends them (strings, `--key value`), through the
plugin's own `run_job` entry and `GRPOConfig.from_params`, to the config `run_grpo` is handed AND to where each is
consumed in one real step on tiny-llada: the rollout sampler the trainer builds, the `WeightedRewards` built, the
prompts kept and cut, and the arguments `group_advantages`, `completion_logps` and `grpo_loss` receive. The loss
call is recorded and then ends the job (no update, no saving), so the whole path costs one rollout and a few passes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import dlm.trainers.grpo_config as grpo_config
import dlm.trainers.grpo_trainer as grpo_trainer
from dlm.families import get_family
from dlm.generation import build_sampler
from dlm.presets.tiny import ensure_preset
from tests.plugins import test_bad_inputs
from tests.plugins.test_parameter_paths_eval_data import Recorded, form_params, run_recorded, write_jsonl

GRPO = "diffusion_grpo_trainer"
REWARD_FILE = "def reward(prompts, completions, **columns):\n    return [0.5] * len(completions)\n"
# every GRPO-specific setting, edited away from its default, as a form sends it
GRPO_EDITS = {
    "reward_funcs": "answer_match,tag_count,code_tests",
    "reward_weights": "1.0, 0.5, 0.25, 2.0",
    "reward_file": "",  # set to the written file in the fixture
    "trust_remote_code": "true",
    "code_seconds_per_test": "2.5",
    "code_memory_mib": "256",
    "num_generations": "2",
    "num_iterations": "2",
    "beta": "0.1",
    "epsilon": "0.1",
    "epsilon_high": "0.3",
    "scale_rewards": "false",
    "leave_one_out": "true",
    "loss_type": "bnpo",
    "logp_estimator": "coupled",
    "p_mask_prompt": "0.15",
    "mc_samples": "2",
    "steps": "4",
    "block_length": "4",
    "temperature": "0.7",
    "remasking": "random",
    "alg": "maskgit_plus",
    "alg_temp": "0.3",
    "top_p": "0.9",
    "top_k": "5",
    "cache": "prefix",
    "parallel_threshold": "0.9",
    "max_completion_length": "8",
    "max_prompt_length": "6",
    "dataset_split": "test",
    "random_sample_size": "3",
}
# the tiny run around them (not under test here)
TINY = {"train_steps": "1", "num_train_epochs": "0", "batch_size": "1", "max_length": "64", "lora_r": "4"}


def prompt_rows(count: int, tag: str) -> list[dict[str, str]]:
    """Prompt rows with the columns the chosen rewards read; every prompt is longer than max_prompt_length."""
    return [
        {
            "prompt": f"{tag} {i}: what is {i} plus {i}? Answer with one number.",
            "answer": str(2 * i),
            "tests": "assert 2 + 2 == 4",
        }
        for i in range(count)
    ]


@dataclass
class GRPOCall:
    """What the job handed on: `run_grpo`'s config and prompts, then in the trainer's step the prompts encoded,
    the rewards built, the sampler built and the arguments of the advantage, log-probability and loss functions."""

    config: Any = None
    prompts: list[Any] = field(default_factory=list)
    encoded: Any = None
    rewards: list[Any] = field(default_factory=list)
    samplers: list[Any] = field(default_factory=list)
    advantages: list[dict[str, Any]] = field(default_factory=list)
    logps: list[dict[str, Any]] = field(default_factory=list)
    loss: dict[str, Any] = field(default_factory=dict)


def grpo_job(workspace: Path, data: Path, values: dict[str, str]) -> GRPOCall:
    call = GRPOCall()
    real = {name: getattr(grpo_trainer, name) for name in ("run_grpo", "encode_prompt_rows", "build_sampler")}
    real |= {name: getattr(grpo_trainer, name) for name in ("group_advantages", "completion_logps")}
    real_build_rewards = grpo_config.build_rewards

    def run_grpo(config, prompts, reporter):
        call.config, call.prompts = config, list(prompts)
        return real["run_grpo"](config, prompts, reporter)

    def encode_prompt_rows(*args):
        call.encoded = real["encode_prompt_rows"](*args)
        return call.encoded

    def build_rewards(*args, **kwargs):
        call.rewards.append(real_build_rewards(*args, **kwargs))
        return call.rewards[-1]

    def sampler(*args):
        call.samplers.append(real["build_sampler"](*args))
        return call.samplers[-1]

    def advantages(*args, **kwargs):
        call.advantages.append(kwargs)
        return real["group_advantages"](*args, **kwargs)

    def logps(*args, **kwargs):
        call.logps.append(kwargs)
        return real["completion_logps"](*args, **kwargs)

    def loss(*args, **kwargs):
        positional = ("logps", "old_logps", "ref_logps", "advantages", "completion_mask")
        call.loss = dict(zip(positional, args, strict=False)) | kwargs
        raise Recorded

    spies = {
        (grpo_trainer, "run_grpo"): run_grpo,
        (grpo_trainer, "encode_prompt_rows"): encode_prompt_rows,
        (grpo_config, "build_rewards"): build_rewards,
        (grpo_trainer, "build_sampler"): sampler,
        (grpo_trainer, "group_advantages"): advantages,
        (grpo_trainer, "completion_logps"): logps,
        (grpo_trainer, "grpo_loss"): loss,
    }
    base = {"model_name": "tiny-llada", "dataset": str(data), "train_device": "cpu", "dtype": "float32", **TINY}
    with pytest.MonkeyPatch.context() as patch:  # the shared runner's table of each plugin's work function
        patch.setitem(test_bad_inputs.WORK, GRPO, "train")
        run_recorded(GRPO, workspace, {**base, "adaptor_name": f"paths_{data.name}", **values}, spies)
    return call


@pytest.fixture(scope="module")
def grpo_workspace(preset_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace of its own (no other test's adapters or records) whose tiny-llada is the shared preset."""
    root = tmp_path_factory.mktemp("grpo_paths_ws")
    (root / "models").mkdir()
    (root / "models" / "tiny-llada").symlink_to(ensure_preset("tiny-llada", preset_workspace), target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def grpo_call(grpo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> GRPOCall:
    data = tmp_path_factory.mktemp("grpo_data") / "prompts"
    write_jsonl(data / "train.jsonl", prompt_rows(4, "train"))
    write_jsonl(data / "test.jsonl", prompt_rows(8, "test"))
    reward_file = data.parent / "my_reward.py"
    reward_file.write_text(REWARD_FILE)
    return grpo_job(grpo_workspace, data, {**GRPO_EDITS, "reward_file": str(reward_file)})


# ---- the observables -------------------------------------------------------------------------------------------
def config(call: GRPOCall) -> Any:
    return call.config


def rollout_sampler(call: GRPOCall) -> Any:
    """The sampler the trainer built and sampled the rollouts with (tiny-llada: a LLaDA sampler)."""
    return call.samplers[-1]


def dream_sampler(call: GRPOCall) -> Any:
    """The sampler the same settings build for a Dream model (its own settings: alg, alg_temp, top_p, top_k)."""
    return build_sampler(get_family("dream"), call.config.sampler_settings())


def rewards(call: GRPOCall) -> Any:
    return call.rewards[-1]


def code_limits(call: GRPOCall) -> dict[str, float]:
    """The limits the code_tests reward is called with."""
    [spec] = [spec for spec in rewards(call).specs if spec.name == "code_tests"]
    return spec.function.keywords


def file_reward_values(call: GRPOCall) -> list[float]:
    """The reward file's function, as built: its values on two completions."""
    [spec] = [spec for spec in rewards(call).specs if spec.name == "reward"]
    return list(spec.function(["p", "q"], ["a", "b"]))


def advantage_arguments(call: GRPOCall) -> dict[str, Any]:
    [arguments] = call.advantages  # one rollout batch
    return arguments


def logp_arguments(call: GRPOCall) -> dict[str, Any]:
    """The arguments of every log-probability estimate (old policy, reference, policy), which must agree."""
    distinct = {tuple(sorted((k, v) for k, v in a.items() if k not in ("seed", "family"))) for a in call.logps}
    assert len(distinct) == 1, distinct
    return call.logps[0]


def loss_arguments(call: GRPOCall) -> dict[str, Any]:
    return call.loss


def attribute(part: Any, name: str) -> Any:
    """The observable `part(call).name` (or `part(call)[name]` for arguments), named so in the test ids."""

    def observable(call: GRPOCall) -> Any:
        value = part(call)
        return value[name] if isinstance(value, dict) else getattr(value, name)

    observable.__name__ = f"{part.__name__}.{name}"
    return observable


def logp_estimates(call: GRPOCall) -> int:
    """Estimates made before the loss: each of num_iterations masks scored under the rollout policy and the
    reference (num_iterations > 1, beta > 0), then the policy's on the first iteration's masks."""
    return len(call.logps)


def group_of_completions(call: GRPOCall) -> int:
    """Completions per prompt sampled: the rollouts' rows per prompt of the micro-batch (batch_size 1)."""
    return len(call.loss["completion_mask"])


def completion_width(call: GRPOCall) -> int:
    return call.loss["completion_mask"].shape[1]


def prompt_lengths(call: GRPOCall) -> list[int]:
    return [len(row["prompt_ids"]) for row in call.encoded.rows]


def prompt_tags(call: GRPOCall) -> set[str]:
    return {p.prompt[-1]["content"].split()[0] for p in call.prompts}


def prompt_count(call: GRPOCall) -> int:
    return len(call.prompts)


GRPO_CASES = [
    ("reward_funcs", attribute(config, "reward_funcs"), ("answer_match", "tag_count", "code_tests")),
    ("reward_funcs", attribute(rewards, "names"), ("answer_match", "tag_count", "code_tests", "reward")),
    ("reward_weights", attribute(config, "reward_weights"), (1.0, 0.5, 0.25, 2.0)),
    ("reward_weights", attribute(rewards, "weights"), (1.0, 0.5, 0.25, 2.0)),
    ("reward_file", file_reward_values, [0.5, 0.5]),
    ("trust_remote_code", attribute(rewards, "trust_remote_code"), True),
    ("code_seconds_per_test", attribute(config, "code_seconds_per_test"), 2.5),
    ("code_seconds_per_test", attribute(code_limits, "seconds_per_test"), 2.5),
    ("code_memory_mib", attribute(config, "code_memory_mib"), 256),
    ("code_memory_mib", attribute(code_limits, "memory_mib"), 256),
    ("num_generations", attribute(config, "num_generations"), 2),
    ("num_generations", group_of_completions, 2),
    ("num_iterations", attribute(config, "num_iterations"), 2),
    ("num_iterations", logp_estimates, 2 + 2 + 1),
    ("beta", attribute(config, "beta"), 0.1),
    ("beta", attribute(loss_arguments, "beta"), 0.1),
    ("epsilon", attribute(config, "epsilon"), 0.1),
    ("epsilon", attribute(loss_arguments, "epsilon_low"), 0.1),
    ("epsilon_high", attribute(config, "epsilon_high"), 0.3),
    ("epsilon_high", attribute(loss_arguments, "epsilon_high"), 0.3),
    ("scale_rewards", attribute(config, "scale_rewards"), False),
    ("scale_rewards", attribute(advantage_arguments, "scale_rewards"), False),
    ("leave_one_out", attribute(config, "leave_one_out"), True),
    ("leave_one_out", attribute(advantage_arguments, "leave_one_out"), True),
    ("loss_type", attribute(config, "loss_type"), "bnpo"),
    ("loss_type", attribute(loss_arguments, "loss_type"), "bnpo"),
    ("logp_estimator", attribute(config, "logp_estimator"), "coupled"),
    ("logp_estimator", attribute(logp_arguments, "estimator"), "coupled"),
    ("p_mask_prompt", attribute(config, "p_mask_prompt"), 0.15),
    ("p_mask_prompt", attribute(logp_arguments, "p_mask_prompt"), 0.15),
    ("mc_samples", attribute(config, "mc_samples"), 2),
    ("mc_samples", attribute(logp_arguments, "mc_samples"), 2),
    ("steps", attribute(config, "steps"), 4),
    ("steps", attribute(rollout_sampler, "steps"), 4),
    ("block_length", attribute(config, "block_length"), 4),
    ("block_length", attribute(rollout_sampler, "block_length"), 4),
    ("temperature", attribute(config, "temperature"), 0.7),
    ("temperature", attribute(rollout_sampler, "temperature"), 0.7),
    ("remasking", attribute(config, "remasking"), "random"),
    ("remasking", attribute(rollout_sampler, "remasking"), "random"),
    ("alg", attribute(config, "alg"), "maskgit_plus"),
    ("alg", attribute(dream_sampler, "alg"), "maskgit_plus"),
    ("alg_temp", attribute(config, "alg_temp"), 0.3),
    ("alg_temp", attribute(dream_sampler, "alg_temp"), 0.3),
    ("top_p", attribute(config, "top_p"), 0.9),
    ("top_p", attribute(dream_sampler, "top_p"), 0.9),
    ("top_k", attribute(config, "top_k"), 5),
    ("top_k", attribute(dream_sampler, "top_k"), 5),
    ("cache", attribute(config, "cache"), "prefix"),
    ("cache", attribute(rollout_sampler, "cache"), "prefix"),
    ("parallel_threshold", attribute(config, "parallel_threshold"), 0.9),
    ("parallel_threshold", attribute(rollout_sampler, "parallel_threshold"), 0.9),
    ("max_completion_length", attribute(config, "max_completion_length"), 8),
    ("max_completion_length", attribute(rollout_sampler, "gen_length"), 8),
    ("max_completion_length", completion_width, 8),
    ("max_prompt_length", attribute(config, "max_prompt_length"), 6),
    ("max_prompt_length", prompt_lengths, [6, 6, 6]),  # every prompt is longer: all cut to 6
    ("dataset_split", attribute(config, "dataset_split"), "test"),
    ("dataset_split", prompt_tags, {"test"}),  # the test file's prompts, not the train file's
    ("random_sample_size", attribute(config, "random_sample_size"), 3),
    ("random_sample_size", prompt_count, 3),
]


@pytest.mark.parametrize(
    ("parameter", "observable", "expected"), GRPO_CASES, ids=[f"{p}-{o.__name__}" for p, o, _ in GRPO_CASES]
)
def test_every_grpo_parameter_reaches_its_effect(grpo_call, parameter, observable, expected):
    assert parameter in GRPO_EDITS
    assert observable(grpo_call) == expected


def test_every_grpo_edit_differs_from_the_default_and_is_checked(tmp_path):
    """A case whose edited value is the default proves nothing about the value being passed on; an edit without a
    case is a parameter whose path is not checked."""
    edits = {**GRPO_EDITS, "reward_file": str(tmp_path / "my_reward.py")}
    defaults, edited = form_params(GRPO, {}), form_params(GRPO, edits)
    assert [name for name in edits if edited[name] == defaults[name]] == []
    assert set(GRPO_EDITS) == {parameter for parameter, _, _ in GRPO_CASES}


def test_the_grpo_defaults_reach_the_sampler_as_off():
    """The form's "off" values (alg_temp 0, top_p 1, top_k 0, parallel_threshold 0) reach the sampler as None, and
    epsilon_high 0 clips as epsilon."""
    settings = grpo_config.GRPOConfig.from_params(form_params(GRPO, {}), model_name="m", output_dir="o", workspace="w")
    sampler = build_sampler(get_family("dream"), settings.sampler_settings())
    assert (sampler.alg_temp, sampler.top_p, sampler.top_k, sampler.parallel_threshold) == (None, None, None, None)
    assert settings.clip_high == settings.epsilon == 0.2
