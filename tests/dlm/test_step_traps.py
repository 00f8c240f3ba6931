"""Step settings that would silently do something else than asked: refused, or (logging) made to report."""

from pathlib import Path

import pytest

from dlm.errors import ConfigError
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft
from tests.helpers import Reporter, doubling_conversations, tiny_run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("traps_ws"))


def config(workspace: str, out: Path, **overrides) -> SFTConfig:
    values = {**tiny_run(workspace, out), "batch_size": 2, "train_steps": 3, "warmup_ratio": 0.0, "save_steps": 1000}
    return SFTConfig(**{**values, **overrides})


def test_the_last_step_is_logged_when_logging_steps_is_longer_than_the_run(workspace, tmp_path):
    reporter = Reporter()
    run_sft(config(workspace, tmp_path, logging_steps=100), doubling_conversations(8), None, reporter)
    assert [step for step, metrics in reporter.metrics if "train/loss" in metrics] == [3]


def test_a_warm_up_longer_than_the_run_is_said_and_the_run_goes_on(workspace, tmp_path):
    """A smoke run (2 steps) with a real run's warm-up (5 steps): the learning rate rises linearly all along."""
    from dlm.trainers.dpo_config import DPOConfig
    from dlm.trainers.dpo_trainer import run_dpo
    from tests.dlm.test_dpo import pairs

    values = {**tiny_run(workspace, tmp_path), "train_steps": 2, "warmup_steps": 5, "mc_samples": 1}
    values.update(learning_rate=1e-3, logging_steps=1, learning_rate_schedule="linear")
    reporter = Reporter()
    run_dpo(DPOConfig(**values), pairs(4), None, reporter)
    warning = "the warm-up (5 steps) is longer than the whole run (2 optimizer steps)"
    assert sum(warning in m for m in reporter.messages) == 1
    rates = [metrics["train/lr"] for _, metrics in reporter.metrics if "train/lr" in metrics]
    assert rates == pytest.approx([1e-3 * 0 / 5, 1e-3 * 1 / 5])  # the rate each step used: step k at k/5 of it


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_train_epochs": 0, "train_steps": 0}, "nothing would be trained"),
        ({"num_train_epochs": 2, "train_steps": 5}, "train_steps=5 .* counts only when num_train_epochs is 0"),
        ({"seed": 2**32}, "seed=4294967296 does not fit"),
        ({"loss_weight_type": "cart[geo_p:2]"}, "geo_p must be a number in"),
        ({"train_mode": "pretrain", "sample_every_steps": 3}, "sample_every_steps=3 samples answers"),
    ],
)
def test_settings_that_cannot_work_are_refused_when_the_config_is_built(workspace, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(workspace, tmp_path, **overrides)


def test_max_length_beyond_the_models_positions_is_refused(workspace, tmp_path):
    with pytest.raises(ConfigError, match=r"max_length=4096 is longer than tiny-llada can take \(1024 positions\)"):
        run_sft(config(workspace, tmp_path, max_length=4096), doubling_conversations(4), None, Reporter())
