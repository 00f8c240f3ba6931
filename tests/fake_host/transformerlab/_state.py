"""What the fake host saw: every SDK call in order, the job record it keeps, and the stop flag a user would set."""

from typing import Any

calls: list[tuple[Any, ...]] = []
record: dict[str, Any] = {"status": "QUEUED", "progress": 0, "job_data": {}}
stop = False
params: dict[str, Any] = {}


def reset(parameters: dict[str, Any]) -> None:
    global stop
    calls.clear()
    record.clear()
    record.update({"status": "QUEUED", "progress": 0, "job_data": {}})
    params.clear()
    params.update(parameters)
    stop = False
