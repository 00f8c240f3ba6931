"""What a terminal shows of a job: the time left from step times, short step lines, the live status, the phases the
trainers report, and the runner's output when it is not a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin_sdk.backends.local import JobRecord
from plugin_sdk.progress import StepPace, TerminalView, clock, parse_step_line, short_step_line, step_line
from plugin_sdk.runner import run_plugin
from plugin_sdk.workspace import Workspace
from tests.helpers import Reporter, tiny_run

PROBE = Path(__file__).parents[1] / "fixtures" / "plugins" / "contract_probe"


# ---- the time left -----------------------------------------------------------------------------------------------
def test_time_left_counts_steps_only_not_the_loading_before_them():
    pace = StepPace()
    # The job started at t=0; loading the model and the data took 100 s; training began at t=100 (step 0).
    pace.observe(0, 100.0)
    assert pace.seconds_left(50) is None  # no step finished yet: no estimate, rather than one from the loading
    pace.observe(1, 102.0)
    assert pace.seconds_left(50) == pytest.approx(49 * 2.0)  # the first estimate: 2 s per step, not 102 s
    assert pace.seconds_left(50, now=110.0) == pytest.approx(49 * 2.0 - 8.0)  # less the time since that step


def test_time_left_drops_the_first_steps_warm_up_once_later_steps_are_seen():
    pace = StepPace()
    for step, at in [(0, 100.0), (1, 105.0), (2, 106.0), (4, 108.0)]:  # step 1 took 5 s (warm-up), then 1 s each
        pace.observe(step, at)
    assert pace.seconds_per_step() == pytest.approx(1.0)
    assert pace.seconds_left(10) == pytest.approx(6.0)
    pace.observe(3, 200.0)  # an older step seen late changes nothing
    assert pace.seconds_left(10) == pytest.approx(6.0)


def test_time_left_of_a_resumed_run_starts_from_its_first_step():
    pace = StepPace()
    pace.observe(500, 10.0)
    pace.observe(510, 15.0)
    assert pace.seconds_left(1000) == pytest.approx(490 * 0.5)


@pytest.mark.parametrize(("seconds", "shown"), [(0.4, "0:00"), (7, "0:07"), (725, "12:05"), (10929, "3:02:09")])
def test_clock(seconds, shown):
    assert clock(seconds) == shown


# ---- step lines --------------------------------------------------------------------------------------------------
FULL_METRICS = {
    "train/loss": 5.890803,
    "train/grad_norm": 3.3379,
    "train/lr": 0.001,
    "train/accuracy": 0.0,
    "train/perplexity": 294.169,
    "train/mask_ratio": 0.5,
    "train/tokens_per_sec": 166.713,
    "train/memory_gb": 0.578094,
    "train/epoch": 0.333333,
}


def test_the_log_keeps_every_metric_and_the_terminal_the_key_ones_in_a_short_line():
    full = step_line(2, 6, FULL_METRICS)
    assert full.startswith("step 2/6: train/loss=5.8908 train/grad_norm=3.3379") and len(full) > 160
    step, max_steps, metrics = parse_step_line(full)
    assert (step, max_steps) == (2, 6) and metrics.keys() == FULL_METRICS.keys()
    assert short_step_line(step, max_steps, metrics, 75.0) == "step 2/6  loss 5.891  lr 1.0e-03  ETA 1:15"
    assert short_step_line(2, 6, {"val/loss": "4.25", "val/accuracy": "0.5"}, None) == "step 2/6  val_loss 4.25"
    assert short_step_line(6, 6, {"train/epoch": "1"}, None) == ""  # nothing worth a line
    assert parse_step_line("step 3: train/loss=1") == (3, None, {"train/loss": "1"})
    assert parse_step_line("saved /tmp/step 3: x") is None
    widest = short_step_line(123456, 1000000, {"train/loss": "12345.678", "val/loss": "1e+30", "train/lr": "1e-7"}, 1e6)
    assert len(widest) <= 100, widest


def test_view_shortens_step_lines_and_shows_other_lines(capsys):
    view = TerminalView(live=False)
    view.update({"phase": "training", "step": 0, "max_steps": 6, "time": 100.0})
    view.update({"phase": "training", "step": 1, "max_steps": 6, "time": 101.5})
    view.child_line("loading model tiny-llada ...\n")
    view.child_line(step_line(1, None, FULL_METRICS) + "\n")  # max_steps from the live status
    view.child_line("step 6: train/epoch=1\n")
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == "loading model tiny-llada ..."
    assert out.out.splitlines()[1].startswith("step 1/6  loss 5.891  lr 1.0e-03  ETA ")
    assert len(out.out.splitlines()) == 2 and out.err == ""  # not live: no status line, no carriage return
    assert view.status_line(now=102.5).startswith("training  step 1/6  loss 5.891  ")


def test_live_status_line_is_redrawn_in_place_on_stderr(capsys):
    view = TerminalView(live=True, started=0.0)
    view.update({"phase": "loading model tiny-llada", "step": None, "max_steps": None, "time": 1.0})
    view.line("a message")
    view.close()
    out = capsys.readouterr()
    assert out.out == "a message\n"
    assert out.err.startswith("\r\x1b[Kloading model tiny-llada  ") and out.err.endswith("\r\x1b[K")


# ---- the phases a trainer reports --------------------------------------------------------------------------------
def test_sft_reports_its_phases_and_steps(tmp_path):
    from dlm.trainers.sft_config import SFTConfig
    from dlm.trainers.sft_trainer import run_sft

    values = {**tiny_run(str(tmp_path / "ws"), tmp_path / "out"), "batch_size": 2, "train_steps": 4}
    config = SFTConfig(**{**values, "eval_strategy": "steps", "eval_steps": 2, "save_steps": 2})
    rows = [[{"role": "user", "content": f"{i}+{i}?"}, {"role": "assistant", "content": f"{2 * i}"}] for i in range(8)]
    reporter = Reporter()
    run_sft(config, rows, rows[:2], reporter)
    statuses = reporter.statuses
    assert statuses[:3] == [("loading model tiny-llada", None, None), ("encoding data", None, None), ("training", 0, 4)]
    phases_at = {}
    for phase, step, max_steps in statuses[3:]:
        assert max_steps == 4
        phases_at.setdefault(step, []).append(phase)
    # step 1 and 3: train on; steps 2 and 4: evaluate, then save a checkpoint, then train on
    assert phases_at == {
        1: ["training"],
        2: ["evaluating", "saving checkpoint", "training"],
        3: ["training"],
        4: ["evaluating", "saving checkpoint", "training"],
    }


# ---- the runner when its output is not a terminal ----------------------------------------------------------------
def test_runner_output_to_a_file_has_no_status_line(tmp_path, capfd):
    ws = Workspace(tmp_path / "ws")
    code, job_id = run_plugin(PROBE, {"steps": "3", "required_note": "x"}, workspace=ws)  # auto: stderr is no TTY
    out = capfd.readouterr()
    assert code == 0, out
    assert "\r" not in out.out + out.err and "\x1b" not in out.out + out.err
    lines = out.out.splitlines()
    assert [line for line in lines if line.startswith("step")] == [
        "step 1  loss 1  lr 1.0e-03",
        "step 2  loss 0.5  lr 1.0e-03",
        "step 3  loss 0.3333  lr 1.0e-03",
    ]
    assert lines[-1].startswith(f"Job {job_id}: COMPLETE")
    log = (ws.job_dir(job_id) / f"output_{job_id}.txt").read_text()
    assert "step 3: train/loss=0.333333 train/lr=0.001" in log  # the full line stays in the log
    assert json.loads(JobRecord(ws, job_id).path.read_text())["status"] == "COMPLETE"


def test_a_process_that_dies_without_saying_why_shows_the_end_of_its_stderr(tmp_path, capfd):
    plugin = tmp_path / "crashing"
    plugin.mkdir()
    (plugin / "index.json").write_text((PROBE / "index.json").read_text())
    (plugin / "main.py").write_text("import sys\nsys.stderr.write('the real reason\\n')\nraise SystemExit(5)\n")
    code, job_id = run_plugin(plugin, {}, workspace=Workspace(tmp_path / "ws"))
    out = capfd.readouterr().out
    assert code == 1  # the documented code of a failed job; the plugin's own is in the record
    assert "the real reason" in out
    assert out.splitlines()[-1].startswith(f"Job {job_id}: FAILED - the plugin process exited with code 5")


def test_a_failed_job_shows_its_reason_and_keeps_the_traceback_in_the_log(tmp_path, capfd):
    ws = Workspace(tmp_path / "ws")
    code, job_id = run_plugin(PROBE, {"steps": "3", "fail_at_step": "2", "required_note": "x"}, workspace=ws)
    out = capfd.readouterr().out
    assert code == 1
    assert "ERROR: RuntimeError: deliberate failure at step 2" in out and "Traceback" not in out
    assert "Traceback" in (ws.job_dir(job_id) / f"output_{job_id}.txt").read_text()
