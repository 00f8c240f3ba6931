"""The host's formats of an evaluation's results: the rows of its results CSV, its plot JSON and the job's `score`
(an evaluator's own, headline first, or the mean of each metric of a results table).

The results come in as plain dicts, as an evaluation report lists its models (`dlm.report.model_document`): a
model's `label`, its `metrics` (`name`, `value` — None when not finite —, `stderr`, `kind`) and its generated
`samples` (`input`, `output`, `reference`, `tokens`, `correct`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def score_rows(models: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the host's results CSV (`test_case_id`, `metric_name`, `score` and context columns): one per model
    and metric (test case = the model), and one per generated sample (test case = model/index) scored
    `answer_correct` (0/1) when task accuracy ran, else `generated_tokens`, with its input, output and reference."""
    rows = []
    for model in models:
        label = model["label"]
        for metric in model["metrics"]:
            rows.append(
                {
                    "test_case_id": label,
                    "metric_name": metric["name"],
                    "score": math.nan if metric["value"] is None else metric["value"],
                    "stderr": metric["stderr"],
                    "kind": metric["kind"],
                    "model": label,
                    "input": "",
                    "output": "",
                    "expected_output": "",
                }
            )
        for index, sample in enumerate(model["samples"]):
            correct = sample.get("correct")
            rows.append(
                {
                    "test_case_id": f"{label}/{index}",
                    "metric_name": "generated_tokens" if correct is None else "answer_correct",
                    "score": float(sample.get("tokens") or 0) if correct is None else float(bool(correct)),
                    "stderr": None,
                    "kind": "exact",
                    "model": label,
                    "input": _as_text(sample.get("input")),
                    "output": _as_text(sample.get("output")),
                    "expected_output": _as_text(sample.get("reference")),
                }
            )
    return rows


def job_score(metrics: Iterable[Mapping[str, Any]], headline: str | None) -> list[dict[str, Any]]:
    """The host's job `score` (`[{"type": metric, "score": value}]`) of one model's metrics: the `headline` metric
    first, metrics without a finite value left out."""
    rows = sorted(metrics, key=lambda row: row["name"] != headline)
    return [{"type": row["name"], "score": row["value"]} for row in rows if row["value"] is not None]


def results_table(rows: Any) -> Any:
    """Per-test-case rows (a DataFrame or dicts) as the DataFrame the host's formats are written from; it must have
    `test_case_id`, `metric_name` and `score` (extra columns allowed)."""
    import pandas as pd

    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    missing = {"test_case_id", "metric_name", "score"} - set(frame.columns)
    if missing:
        raise ValueError(f"evaluation results lack the columns {sorted(missing)}")
    return frame


def mean_scores(frame: Any) -> list[dict[str, Any]]:
    """A results table's job `score` (`[{"type": metric, "score": value}]`): each metric's mean over its test cases,
    in the order the metrics first appear."""
    return [
        {"type": metric, "score": float(frame.loc[frame.metric_name == metric, "score"].mean())}
        for metric in dict.fromkeys(frame.metric_name)
    ]


def write_plot_data(frame: Any, path: Path) -> Path:
    """The host's plot JSON of an evaluation: one record per test case and metric, metric names in title case."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plot = frame[["test_case_id", "metric_name", "score"]].copy()
    plot["metric_name"] = plot["metric_name"].map(lambda name: name.replace("_", " ").title())
    path.write_text(plot.to_json(orient="records", lines=False), encoding="utf-8")
    return path


def _as_text(value: Any) -> str:
    """A sample field as the CSV's text: chat messages become `role: content` lines."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(m, Mapping) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', '?')}: {m['content']}" for m in value)
    return str(value)
