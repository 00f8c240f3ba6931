"""What a terminal shows of a running job: its phase, training step k/N with the loss and the time left, and one
short line per logged step.

A job prints its metrics as one full line per logged step (`step 4/6: train/loss=3.43 train/lr=0.001 ...`), which
the job log keeps; the runner shortens it for the terminal. The job's live status (phase, step, when) goes to
`live.json` beside the local job record, which the runner polls.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

STEP_LINE = re.compile(r"^step (\d+)(?:/(\d+))?: (.*)$")
# (metric, short name) shown in the terminal, in this order; the job log keeps every metric.
KEY_METRICS = (("train/loss", "loss"), ("val/loss", "val_loss"), ("train/lr", "lr"))
CLEAR_LINE = "\r\x1b[K"


def format_metric(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def step_line(step: int, max_steps: int | None, metrics: Mapping[str, Any]) -> str:
    """The job log's line for the metrics logged at `step` (of `max_steps`, when known)."""
    shown = " ".join(f"{key}={format_metric(value)}" for key, value in metrics.items())
    return f"step {step}{f'/{max_steps}' if max_steps else ''}: {shown}"


def parse_step_line(line: str) -> tuple[int, int | None, dict[str, str]] | None:
    """(step, max_steps, metrics as text) of a `step_line`, else None."""
    match = STEP_LINE.match(line.strip())
    if match is None:
        return None
    pairs = (item.split("=", 1) for item in match.group(3).split())
    metrics = {pair[0]: pair[1] for pair in pairs if len(pair) == 2}
    return int(match.group(1)), int(match.group(2)) if match.group(2) else None, metrics


def clock(seconds: float) -> str:
    """`0:07`, `12:05`, `3:02:09`."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _short_number(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.1e}" if value and abs(value) < 1e-2 else f"{value:.4g}"


def short_step_line(step: int, max_steps: int | None, metrics: Mapping[str, str], seconds_left: float | None) -> str:
    """The terminal's line for a logged step: step k/N, the key metrics logged, the time left. Empty when none of
    the key metrics was logged (e.g. only the epoch at the end)."""
    shown = [f"{short} {_short_number(metrics[key])}" for key, short in KEY_METRICS if key in metrics]
    if not shown:
        return ""
    parts = [f"step {step}/{max_steps}" if max_steps else f"step {step}", *shown]
    if seconds_left is not None:
        parts.append(f"ETA {clock(seconds_left)}")
    return "  ".join(parts)


class StepPace:
    """Time left from the pace of training steps, from (step, time) observations in any order of sampling.

    The pace counts only time between observed steps, so loading the model and encoding the data never count, and
    once a second interval exists the first one (the first step's warm-up) is left out too."""

    def __init__(self) -> None:
        self._anchors: list[tuple[int, float]] = []  # the first two distinct steps seen
        self._last: tuple[int, float] | None = None

    def observe(self, step: int, at: float) -> None:
        if self._last is not None and step <= self._last[0]:
            return
        if len(self._anchors) < 2:
            self._anchors.append((step, at))
        self._last = (step, at)

    def seconds_per_step(self) -> float | None:
        if self._last is None or (len(self._anchors) < 2 and self._last == self._anchors[0]):
            return None
        base = self._anchors[1] if self._last[0] > self._anchors[-1][0] else self._anchors[0]
        step, at = self._last
        return (at - base[1]) / (step - base[0])

    def seconds_left(self, max_steps: int, now: float | None = None) -> float | None:
        """Estimated seconds to `max_steps`; with `now`, less the time since the last observed step."""
        pace = self.seconds_per_step()
        if pace is None or self._last is None:
            return None
        left = pace * max(0, max_steps - self._last[0])
        return max(0.0, left - (now - self._last[1])) if now is not None else left


class TerminalView:
    """The runner's output: lines on stdout and, when `live`, one status line on stderr redrawn in place (phase,
    step k/N, loss, elapsed and time left), clipped to the terminal's width so that it can be redrawn."""

    def __init__(self, *, live: bool, started: float | None = None) -> None:
        self.live = live
        self.started = time.time() if started is None else started
        self.pace = StepPace()
        self.status: dict[str, Any] = {"phase": "starting"}
        self.loss: str | None = None
        self.percent = 0
        self._lock = threading.Lock()
        self._shown = False

    # ---- input -----------------------------------------------------------------------------------------------
    def update(self, status: Mapping[str, Any] | None, percent: int | None = None) -> None:
        """The job's live status (`live.json`: phase, step, max_steps, time) and progress (0..100)."""
        with self._lock:
            if percent is not None:
                self.percent = int(percent)
            if status:
                self.status = dict(status)
                if status.get("step") is not None and status.get("time") is not None:
                    self.pace.observe(int(status["step"]), float(status["time"]))
            self._redraw()

    def child_line(self, line: str) -> None:
        """A line the job printed: a metrics line is shortened (or dropped when it has no key metric), any other
        line is shown as it is."""
        parsed = parse_step_line(line)
        if parsed is None:
            self.line(line)
            return
        step, max_steps, metrics = parsed
        with self._lock:
            max_steps = max_steps or self.status.get("max_steps")
            if "train/loss" in metrics:
                self.loss = _short_number(metrics["train/loss"])
            left = self.pace.seconds_left(max_steps, now=time.time()) if max_steps and step < max_steps else None
        short = short_step_line(step, max_steps, metrics, left)
        if short:
            self.line(short)

    # ---- output ----------------------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        with self._lock:
            self._clear()
            sys.stdout.write(text.rstrip("\n") + "\n")
            sys.stdout.flush()
            self._redraw()

    def status_line(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        parts = [str(self.status.get("phase") or "running")]
        step, max_steps = self.status.get("step"), self.status.get("max_steps")
        if step is not None and max_steps:
            parts.append(f"step {step}/{max_steps}")
            if self.loss is not None:
                parts.append(f"loss {self.loss}")
        elif 0 < self.percent < 100:  # no steps (an evaluation): the job's own progress
            parts.append(f"{self.percent}%")
        parts.append(f"{clock(now - self.started)} elapsed")
        left = self.pace.seconds_left(max_steps, now=now) if step is not None and max_steps else None
        if left is not None:
            parts.append(f"ETA {clock(left)}")
        return "  ".join(parts)

    def close(self) -> None:
        with self._lock:
            self._clear()
            self.live = False

    def _redraw(self) -> None:
        if not self.live:
            return
        text = self.status_line()
        width = shutil.get_terminal_size().columns
        sys.stderr.write(CLEAR_LINE + text[: width - 1])
        sys.stderr.flush()
        self._shown = True

    def _clear(self) -> None:
        if self._shown:
            sys.stderr.write(CLEAR_LINE)
            sys.stderr.flush()
            self._shown = False
