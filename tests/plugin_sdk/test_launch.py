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


# ---- several machines ------------------------------------------------------------------------------------------
MACHINES = {"train_device": "cpu", "num_processes": 1, "num_machines": 2, "main_process_ip": "127.0.0.1"}


def test_machines_multiply_the_processes_and_reach_the_command(gpus):
    plan = plan_processes({**MACHINES, "machine_rank": 1, "main_process_port": 29555})
    assert (plan.num_processes, plan.num_machines, plan.machine_rank) == (2, 2, 1)
    command = accelerate_command(plan, ["m.py"])
    assert command[-1] == "m.py" and "--multi_gpu" in command
    flags = ("--num_processes", "--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port")
    assert [command[command.index(flag) + 1] for flag in flags] == ["2", "2", "1", "127.0.0.1", "29555"]
    gpus(4)
    on_gpus = {**MACHINES, "train_device": "cuda", "gpu_ids": "0,1", "main_process_port": 1}
    assert plan_processes(on_gpus).num_processes == 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"machine_rank": 2, "main_process_port": 1}, r"machine_rank=2 is out of range for num_machines=2: .* 0 to 1"),
        ({"machine_rank": -1, "main_process_port": 1}, r"machine_rank=-1 is out of range"),
        ({"machine_rank": 1}, r"num_machines=2 needs main_process_ip and main_process_port"),
        ({"machine_rank": 1, "main_process_port": 1, "main_process_ip": ""}, r"needs main_process_ip"),
    ],
)
def test_bad_machine_settings_are_named(gpus, values, message):
    with pytest.raises(ParameterError, match=message):
        plan_processes({**MACHINES, **values})


def test_an_unreachable_main_process_fails_within_the_timeout_naming_it(gpus):
    import socket
    import time

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        plan = plan_processes({**MACHINES, "machine_rank": 1, "main_process_port": port, "rendezvous_timeout": 1})
        started = time.monotonic()
        with pytest.raises(ParameterError, match=rf"cannot reach the main process at 127.0.0.1:{port} within 1 s"):
            launch.wait_for_main_process(plan, poll_s=0.2)
    assert time.monotonic() - started < 3
    launch.wait_for_main_process(plan_processes({**MACHINES, "machine_rank": 0, "main_process_port": port}))


@pytest.mark.slow
def test_two_machines_on_localhost_equal_two_processes_on_one(tmp_path):
    """Machine 0 and machine 1 (one CPU process each, both on this host) train exactly as two processes on one."""
    import json
    import os
    import subprocess
    from pathlib import Path

    import torch

    from dlm.presets.tiny import ensure_preset

    repo = Path(__file__).resolve().parents[2]
    workspace = str(tmp_path / "ws")
    ensure_preset("tiny-llada", workspace)
    script = str(repo / "tests" / "scripts" / "sft_rank_probe.py")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(repo)}
    one, two = tmp_path / "one_machine", tmp_path / "two_machines"
    one.mkdir(), two.mkdir()
    single = plan_processes({"train_device": "cpu", "num_processes": 2})
    done = subprocess.run(
        accelerate_command(single, [script, workspace, str(one)]), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    port = launch._free_port()
    machines = []
    for rank in (0, 1):
        plan = plan_processes({**MACHINES, "machine_rank": rank, "main_process_port": port})
        launch.wait_for_main_process(plan)  # machine 1 starts once machine 0 listens, as relaunch does
        command = accelerate_command(plan, [script, workspace, str(two)])
        machines.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [m.communicate(timeout=300)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    for rank in (0, 1):
        assert json.loads((two / f"seen{rank}.json").read_text()) == json.loads((one / f"seen{rank}.json").read_text())
        expected, got = torch.load(one / f"weights{rank}.pt"), torch.load(two / f"weights{rank}.pt")
        assert all(torch.equal(expected[k], got[k]) for k in expected)
