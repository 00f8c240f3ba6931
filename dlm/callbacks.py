"""Trainer callbacks that report to a job: progress and phase, metrics under stable names, stop requests, sample
text.

A `Reporter` is anything with the few methods below; `plugin_sdk.Job` is one. dlm itself never imports the
host contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

# Trainer log keys -> the metric names shown in TensorBoard, W&B, metrics.json and the job log.
RENAMED = {"loss": "train/loss", "learning_rate": "train/lr", "grad_norm": "train/grad_norm", "epoch": "train/epoch"}
DROPPED = {
    "total_flos",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_loss",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "eval_epoch",
}


class Reporter(Protocol):
    is_main_process: bool

    def report_progress(self, percent: float) -> None: ...  # records progress, never raises
    # What the job does now ("loading model x", "encoding data", "training", "evaluating", ...) and, while
    # training, at which optimizer step of how many; records it, never raises.
    def report_status(self, phase: str, step: int | None = None, max_steps: int | None = None) -> None: ...
    def stop_requested(self) -> bool: ...
    def log(self, message: str) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_text(self, tag: str, text: str, step: int) -> None: ...


def metric_name(key: str) -> str:
    if key in RENAMED:
        return RENAMED[key]
    if key.startswith("eval_"):
        return "val/" + key[len("eval_") :]
    return "train/" + key


class ReporterCallback(TrainerCallback):
    """Progress and phase every optimizer step, metrics on every log, and a clean stop: when the job is asked to
    stop, the Trainer saves a checkpoint at the current step and ends; `stopped` then tells the caller."""

    def __init__(self, reporter: Reporter, *, progress_start: float = 5.0, progress_end: float = 95.0) -> None:
        self.reporter = reporter
        self.start, self.end = progress_start, progress_end
        self.stopped = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.reporter.report_status("training", state.global_step, state.max_steps)
        warmup = args.get_warmup_steps(state.max_steps)
        if state.max_steps and warmup > state.max_steps:  # a smoke run with a real run's warm-up: said, not refused
            self.reporter.log(
                f"warning: the warm-up ({warmup} steps) is longer than the whole run ({state.max_steps} optimizer "
                "steps), so the learning rate rises all along and never reaches its set value; lower warmup_steps "
                "for a real run"
            )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True  # the last step is always logged, even when logging_steps is longer than the run
        if state.max_steps:
            self.reporter.report_progress(self.start + (self.end - self.start) * state.global_step / state.max_steps)
        if self.reporter.stop_requested():
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        # The Trainer's flow callback, which runs first, has decided what follows this step.
        self._report(state, control)
        return control

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._report(state, control)  # the Trainer has cleared should_evaluate; a checkpoint may follow

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._report(state, control)

    def _report(self, state: TrainerState, control: TrainerControl) -> None:
        if control.should_evaluate:
            phase = "evaluating"
        elif control.should_save:
            phase = "saving checkpoint"
        else:
            phase = "training"
        self.reporter.report_status(phase, state.global_step, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and self.reporter.is_main_process:
            metrics = {
                metric_name(k): float(v) for k, v in logs.items() if k not in DROPPED and isinstance(v, int | float)
            }
            if metrics:
                self.reporter.log_metrics(metrics, step=state.global_step)


class SampleCallback(TrainerCallback):
    """Every `every` optimizer steps, generate answers for a few prompts and log them as text."""

    def __init__(self, reporter: Reporter, generate: Callable[[], list[tuple[str, str]]], every: int) -> None:
        self.reporter, self.generate, self.every = reporter, generate, every

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and self.reporter.is_main_process:
            self.reporter.report_status("sampling", state.global_step, state.max_steps)
            was_training = model.training if model is not None else False
            if model is not None:
                model.eval()
            try:
                samples = self.generate()
            finally:
                if model is not None and was_training:
                    model.train()
            text = "\n\n".join(f"PROMPT: {prompt}\nANSWER: {answer}" for prompt, answer in samples)
            self.reporter.log_text("samples", text, state.global_step)
            self.reporter.log(f"samples at step {state.global_step}:\n{text}")
            self.reporter.report_status("training", state.global_step, state.max_steps)
        return control
