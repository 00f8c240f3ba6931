"""Runs a program's tests in a child process (`dlm.rewards.sandbox_child`) with a time limit a test and a memory
limit, in an empty temporary folder, with an isolated interpreter (`python -I`: no user site, no environment
variables read, the folder not importable) and an empty environment. Not a security boundary against hostile
code (it can still read files and use the network): it keeps the code a model writes from hanging, exhausting
memory or killing the training process; that is why it runs only with `trust_remote_code`."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("sandbox_child.py")


@dataclass(frozen=True)
class Limits:
    """What one test may use: wall time in seconds, address space in MiB; and the time the interpreter is given
    to start, on top (slow on a busy machine), before the child is ended whatever its timers say."""

    seconds: float = 2.0
    memory_mib: int = 1024
    start_seconds: float = 10.0


@dataclass(frozen=True)
class Program:
    """The code under test, the tests' shared setup (imports, helpers, test functions), and the tests: each a
    snippet that passes when it runs to its end."""

    code: str
    setup: str
    tests: tuple[str, ...]


def run_child(program: Program, first: int, folder: str, limits: Limits) -> tuple[bool, dict[int, bool]]:
    """Runs tests `first`, ... in one child process: whether the code and the setup were run, and each test's
    result that the child reported before it ended (or was ended, past its time)."""
    token = secrets.token_hex(8)
    job = {
        "code": program.code,
        "setup": program.setup,
        "tests": list(program.tests),
        "first": first,
        "seconds": limits.seconds,
        "memory_bytes": limits.memory_mib * 1024 * 1024,
        "token": token,
    }
    budget = limits.start_seconds + limits.seconds * (len(program.tests) - first + 2)
    child = subprocess.Popen(
        [sys.executable, "-I", str(CHILD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=folder,
        env={},
        start_new_session=True,  # its own process group: ending it ends what it started
    )
    try:
        output, _ = child.communicate(json.dumps(job).encode(), timeout=budget)
    except subprocess.TimeoutExpired:
        end_group(child.pid)
        output = read_rest(child)
    finally:
        end_group(child.pid)
    return read_report(output.decode(errors="replace"), token)


def read_rest(child: subprocess.Popen) -> bytes:
    """What an ended child wrote; what was read so far when a process outside its group keeps the pipe open."""
    try:
        return child.communicate(timeout=1.0)[0]
    except subprocess.TimeoutExpired as error:
        child.kill()
        child.wait()
        return error.output or b""


def end_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # all ended already
        pass


def read_report(output: str, token: str) -> tuple[bool, dict[int, bool]]:
    ready, results = False, {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields == [token, "ready"]:
            ready = True
        elif len(fields) == 3 and fields[0] == token and fields[1].isdigit() and fields[2] in ("0", "1"):
            results[int(fields[1])] = fields[2] == "1"
    return ready, results


def passed_tests(program: Program, limits: Limits = Limits()) -> list[bool]:
    """Each test's result. A test that crashes the child or outruns the time fails, and the child is started
    again for the tests after it; a program that crashes before its tests fails them all."""
    passed = [False] * len(program.tests)
    first = 0
    with tempfile.TemporaryDirectory(prefix="dlm_reward_") as folder:
        while first < len(program.tests):
            ready, results = run_child(program, first, folder, limits)
            for index, result in results.items():
                passed[index] = result
            if not ready:
                break
            first = max(results, default=first - 1) + 2  # the test after the one the child did not finish
    return passed
