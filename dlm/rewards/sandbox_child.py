"""Runs untrusted code and its tests, in a process of its own (started by `dlm.rewards.sandbox`; standard
library only, run as `python -I` in an empty temporary folder). Reads a JSON job on stdin; writes one line per
test, `<token> <index> <1|0>`, to what was stdout, where the code cannot print (its own output goes nowhere).
The address-space limit makes a memory bomb fail its test; the timer interrupts a test that runs too long; what
the timer cannot interrupt, or a crash, the parent ends and reruns the tests after it."""

import json
import os
import resource
import signal
import sys

MAX_FILE_BYTES = 16 * 1024 * 1024


class TimeLimit(BaseException):
    """Raised by the timer; a BaseException so that the tested code's `except Exception` does not swallow it."""


def on_timer(signum, frame):
    raise TimeLimit


def limit_resources(memory_bytes):
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run(source, namespace, seconds, name):
    """Whether `source` ran to its end within `seconds`."""
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        exec(compile(source, name, "exec"), namespace)
        return True
    except BaseException:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main():
    job = json.loads(sys.stdin.read())
    results = os.fdopen(os.dup(1), "w")
    silent = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(silent, fd)
    signal.signal(signal.SIGALRM, on_timer)
    limit_resources(job["memory_bytes"])

    def report(label):
        results.write(f"{job['token']} {label}\n")
        results.flush()

    namespace = {"__name__": "solution"}
    ready = run(job["code"], namespace, job["seconds"], "solution.py")
    ready = ready and run(job["setup"], namespace, job["seconds"], "tests.py")
    report("ready")
    for index in range(job["first"], len(job["tests"])):
        passed = ready and run(job["tests"][index], namespace, job["seconds"], f"test_{index}.py")
        report(f"{index} {int(passed)}")
    os._exit(0)  # threads the code left running, or its exit handlers, do not keep the process alive


if __name__ == "__main__":
    main()
