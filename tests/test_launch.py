"""How many processes a job asks for, the accelerate command that starts them, and the shipped strategy configs."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import yaml

from plugin_sdk import launch
from plugin_sdk.errors import ParameterError
from plugin_sdk.launch import ACCELERATE_CONFIGS, LaunchPlan, accelerate_command, plan_processes


@pytest.fixture
def gpus(monkeypatch):
    def set_count(n: int) -> None:
        monkeypatch.setattr(launch, "_cuda_count", lambda: n)

    return set_count


def test_cpu_runs_take_num_processes_and_ignore_gpu_ids(gpus):
    gpus(4)
    plan = plan_processes({"train_device": "cpu", "num_processes": 3, "gpu_ids": "0,1"})
    assert plan == LaunchPlan(num_processes=3, use_cpu=True, gpu_ids=None, config_file=None)


def test_auto_device_without_gpus_is_the_cpu(gpus):
    gpus(0)
    assert plan_processes({"train_device": "auto", "gpu_ids": "0,1"}) == LaunchPlan(1, use_cpu=True)


@pytest.mark.parametrize(
    ("gpu_ids", "expected_count", "expected_ids"),
    [("0,2", 2, "0,2"), ([1, 3, 5], 3, "1,3,5"), ("auto", 4, None), ("", 1, None), (None, 1, None)],
)
def test_gpu_ids_pick_the_processes(gpus, gpu_ids, expected_count, expected_ids):
    gpus(4)
    plan = plan_processes({"train_device": "cuda", "gpu_ids": gpu_ids})
    assert (plan.num_processes, plan.use_cpu, plan.gpu_ids) == (expected_count, False, expected_ids)


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_strategies_select_their_shipped_config(gpus, monkeypatch, strategy):
    gpus(2)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # as if deepspeed were installed
    plan = plan_processes({"train_device": "cuda", "gpu_ids": "0,1", "distributed_strategy": strategy})
    assert plan.config_file == ACCELERATE_CONFIGS / f"{strategy}.yaml"
    config = yaml.safe_load(plan.config_file.read_text())
    assert config["distributed_type"] == ("FSDP" if strategy == "fsdp" else "DEEPSPEED")
    if strategy != "fsdp":
        assert config["deepspeed_config"]["zero_stage"] == int(strategy[-1])
    command = accelerate_command(plan, ["main.py", "--x"])
    assert command[command.index("--config_file") + 1] == str(plan.config_file)
    assert "--multi_gpu" not in command and command[-2:] == ["main.py", "--x"]
    assert command[command.index("--gpu_ids") + 1] == "0,1"


def test_sharded_strategies_refuse_the_cpu(gpus):
    gpus(0)
    with pytest.raises(ParameterError, match="distributed_strategy=fsdp shards the model over CUDA GPUs"):
        plan_processes({"train_device": "cpu", "num_processes": 2, "distributed_strategy": "fsdp"})


def test_deepspeed_without_the_package_is_named(gpus, monkeypatch):
    gpus(2)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ParameterError, match="needs the deepspeed package, which is not installed"):
        plan_processes({"train_device": "cuda", "gpu_ids": "0,1", "distributed_strategy": "deepspeed_zero3"})


def test_a_single_process_needs_no_strategy_config(gpus):
    gpus(1)
    plan = plan_processes({"train_device": "cuda", "gpu_ids": "0", "distributed_strategy": "fsdp"})
    assert plan.config_file is None and plan.num_processes == 1


def test_ddp_cpu_command_names_a_free_rendezvous_port():
    import socket

    command = accelerate_command(LaunchPlan(num_processes=2, use_cpu=True), ["m.py"])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in command and "--cpu" not in command  # CPU mode reaches the children via ACCELERATE_USE_CPU
    port = int(command[command.index("--main_process_port") + 1])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # nobody holds it
