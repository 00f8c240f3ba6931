"""Several processes through accelerate: decide how many, relaunch the plugin, report the children's exit code.

The parent process relaunches the very command it was started with (the host's harness, our harness, or
`main.py`) under `accelerate launch`, marks the children with `DLM_CHILD_RUN=1`, waits, and returns their exit
code, which the caller turns into a failed job when it is not 0. CPU runs set the CPU mode explicitly: without
it each process would silently train alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugin_sdk.config_keys import without_secret_arguments
from plugin_sdk.errors import ParameterError

CHILD_ENV = "DLM_CHILD_RUN"
ACCELERATE_CONFIGS = Path(__file__).resolve().parent / "accelerate_configs"


@dataclass(frozen=True)
class LaunchPlan:
    num_processes: int  # over all machines
    use_cpu: bool
    gpu_ids: str | None = None
    config_file: Path | None = None
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None
    rendezvous_timeout: float = 300.0


def process_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def is_child_run() -> bool:
    return os.environ.get(CHILD_ENV) == "1"


def any_process(flag: bool) -> bool:
    """`flag` OR-ed over all processes when torch.distributed is running, so every rank takes the same branch."""
    if "torch" not in sys.modules:
        return flag
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def distributed_state() -> Any:
    """accelerate's `PartialState` for this process, in CPU mode when the launch asked for it.

    `PartialState` ignores `ACCELERATE_USE_CPU` (only `Accelerator` reads it) and would then leave each CPU
    process on its own; passing `cpu=True` makes the processes join one gloo group."""
    from accelerate import PartialState

    return PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"})


def shutdown_distributed(*, wait_for_all: bool) -> None:
    """Tear the process group down before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads can be destroyed while still running, which aborts the
    process ("terminate called without an active exception") after a run that had succeeded."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait_for_all:
        dist.barrier()
    dist.destroy_process_group()


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def plan_processes(params: dict[str, Any]) -> LaunchPlan:
    """How many processes the parameters ask for.

    `train_device` cpu: `num_processes` (default 1). cuda/auto: one process per id in `gpu_ids` ("0,1", or
    "auto" for every visible GPU), else `num_processes`. `distributed_strategy` names a shipped accelerate config
    (ddp, fsdp, deepspeed_zero2, deepspeed_zero3)."""
    device = str(params.get("train_device") or "auto").lower()
    use_cpu = device == "cpu" or (device == "auto" and _cuda_count() == 0)
    gpu_ids = params.get("gpu_ids")
    if isinstance(gpu_ids, list):
        gpu_ids = ",".join(str(g) for g in gpu_ids)
    gpu_ids = str(gpu_ids).strip() if gpu_ids not in (None, "") else None
    if use_cpu:
        count = int(params.get("num_processes") or 1)
        gpu_ids = None
    elif gpu_ids and gpu_ids.lower() == "auto":
        count = max(1, _cuda_count())
        gpu_ids = None
    elif gpu_ids:
        count = len([g for g in gpu_ids.split(",") if g.strip()])
    else:
        count = int(params.get("num_processes") or 1)
    machines = _machines(params)
    count *= machines["num_machines"]
    strategy = params.get("distributed_strategy") or "ddp"
    config_file = None
    if strategy != "ddp" and count > 1:
        _check_strategy(strategy, use_cpu)
        config_file = ACCELERATE_CONFIGS / f"{strategy}.yaml"
    return LaunchPlan(num_processes=count, use_cpu=use_cpu, gpu_ids=gpu_ids, config_file=config_file, **machines)


def _machines(params: dict[str, Any]) -> dict[str, Any]:
    """The multi-machine settings (`num_machines`, `machine_rank`, `main_process_ip`, `main_process_port`,
    `rendezvous_timeout`), checked: every machine runs the same job with its own rank and the main one's address."""
    machines = int(params.get("num_machines") or 1)
    rank = int(params.get("machine_rank") or 0)
    ip = str(params.get("main_process_ip") or "").strip() or None
    port = int(params.get("main_process_port") or 0) or None
    timeout = float(params.get("rendezvous_timeout") or 300.0)
    if machines < 1:
        raise ParameterError(f"num_machines must be at least 1, got {machines}")
    if not 0 <= rank < machines:
        raise ParameterError(
            f"machine_rank={rank} is out of range for num_machines={machines}: give each machine a rank from 0 "
            f"to {machines - 1} (0 on the machine at main_process_ip)"
        )
    if machines > 1 and (ip is None or port is None):
        raise ParameterError(
            f"num_machines={machines} needs main_process_ip and main_process_port: the address of the machine "
            "with machine_rank 0 and a free port on it, the same on every machine"
        )
    return {
        "num_machines": machines,
        "machine_rank": rank,
        "main_process_ip": ip,
        "main_process_port": port,
        "rendezvous_timeout": timeout,
    }


def _check_strategy(strategy: str, use_cpu: bool) -> None:
    import importlib.util

    if use_cpu:
        raise ParameterError(
            f"distributed_strategy={strategy} shards the model over CUDA GPUs; on the CPU use distributed_strategy=ddp"
        )
    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ParameterError(
            f"distributed_strategy={strategy} needs the deepspeed package, which is not installed: "
            "`pip install deepspeed` in the plugin's environment, or use fsdp"
        )


def accelerate_command(plan: LaunchPlan, argv: list[str]) -> list[str]:
    """The `accelerate launch` command line that reruns `argv` (script first) on `plan.num_processes` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(plan.num_processes)]
    if plan.config_file is not None:
        cmd += ["--config_file", str(plan.config_file)]
    else:
        cmd += ["--multi_gpu"] if plan.num_processes > 1 else []
    if plan.num_machines > 1:
        cmd += ["--num_machines", str(plan.num_machines), "--machine_rank", str(plan.machine_rank)]
        cmd += ["--main_process_ip", str(plan.main_process_ip), "--main_process_port", str(plan.main_process_port)]
    else:
        # A free port per run: two jobs on one machine must not meet at accelerate's default rendezvous port.
        cmd += ["--num_machines", "1", "--main_process_port", str(plan.main_process_port or _free_port())]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    if plan.use_cpu:
        cmd += ["--cpu"] if plan.num_processes == 1 else []
    elif plan.gpu_ids:
        cmd += ["--gpu_ids", plan.gpu_ids]
    return cmd + argv


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_main_process(plan: LaunchPlan, *, poll_s: float = 1.0) -> None:
    """On a machine other than the main one: wait until the main process accepts connections at its address,
    or fail after `rendezvous_timeout` seconds naming the address and port (rather than hang in the rendezvous)."""
    import socket
    import time

    if plan.num_machines == 1 or plan.machine_rank == 0:
        return
    address = (str(plan.main_process_ip), int(plan.main_process_port or 0))
    deadline = time.monotonic() + plan.rendezvous_timeout
    while True:
        try:
            with socket.create_connection(address, timeout=max(0.1, min(poll_s, deadline - time.monotonic()))):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ParameterError(
                    f"machine_rank={plan.machine_rank} cannot reach the main process at {address[0]}:{address[1]} "
                    f"within {plan.rendezvous_timeout:g} s ({exc}); start the job with machine_rank=0 on that "
                    "machine first, and check main_process_ip, main_process_port and the firewall"
                ) from None
        time.sleep(poll_s)


def relaunch(
    plan: LaunchPlan, *, job_id: str, workspace: str, argv: list[str] | None = None, env: dict[str, str] | None = None
) -> int:
    """Run this same command again on several processes (`env`: variables to add, such as the credentials);
    returns the children's exit code (never hides one)."""
    wait_for_main_process(plan)
    # Credentials the host put in the arguments reach the workers through `env` only (see secret_environment).
    script = [sys.argv[0]] + without_secret_arguments(sys.argv[1:] if argv is None else argv)
    env = {
        **os.environ,
        **(env or {}),
        CHILD_ENV: "1",
        "DLM_JOB_ID": job_id,
        "DLM_WORKSPACE": workspace,
        "PYTHONUNBUFFERED": "1",
    }
    if plan.use_cpu:
        # Without this each CPU process trains alone instead of joining the gloo group.
        env["ACCELERATE_USE_CPU"] = "1"
    completed = subprocess.run(accelerate_command(plan, script), env=env, check=False)
    return completed.returncode
