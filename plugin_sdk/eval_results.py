"""The host's formats of an evaluation's results: the rows of its results CSV, its plot JSON and the job's `score`
(an evaluator's own, headline first, or the mean of each metric of a results table).

Today's Transformer Lab shows a job's evaluation in its result views (`ViewEvalResultsModal`, one job's tables, a
file picker when there are several; `CompareEvalResultsModal`, a chart of several jobs' tables whose columns must
match). Both read `job_data.eval_results` (CSV paths) through the API's `get_eval_results`, heat-colour the column
named `score` and chart the mean score per value of the FIRST column: `view_tables` shapes them for that.

The results come in as plain dicts, as an evaluation report lists its models (`dlm.report.model_document`): a
model's `label`, its `metrics` (`name`, `value` — None when not finite —, `stderr`, `kind`) and its generated
`samples` (`input`, `output`, `reference`, `tokens`, `correct`)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from plugin_sdk.safe_files import write_text_atomic


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


# The app's views: the chart groups by the first column, so the metric comes first; `score` is the column they colour
# and chart; `input`/`output`/`expected_output` (and `score`) are what `lab.save_artifact(type="evals")` requires.
VIEW_COLUMNS = ("metric_name", "score", "input", "output", "expected_output")
COMPARISON_COLUMNS = {"input": "metric_name", "output": "model", "expected_output": ""}


class ViewTable(NamedTuple):
    """A file of the app's result views: its name, its rows, and which of its columns are the `input`, `output`
    and `expected_output` that `lab.save_artifact(type="evals")` checks for (its `config["evals"]`)."""

    name: str
    frame: Any
    columns: dict[str, str]


def view_tables(frame: Any) -> list[ViewTable]:
    """A results table as the files of the app's result views: one per model (the `model` column, in order of
    appearance; the whole table when it has none), then, for several models, a comparison of their metrics (its
    first column names metric and model; a metric's models side by side). Every model's file has the same columns,
    so the same evaluation of other models in other jobs can be compared in the app."""
    frame = frame.copy()
    for column in VIEW_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    frame = frame[[*VIEW_COLUMNS, *(c for c in frame.columns if c not in VIEW_COLUMNS)]]
    if "model" not in frame.columns:
        return [ViewTable("eval_results.csv", frame, {})]
    labels = list(dict.fromkeys(frame["model"]))
    names = _file_names(labels)
    tables = [ViewTable(names[label], frame[frame["model"] == label].reset_index(drop=True), {}) for label in labels]
    # a model's own rows (test case = the model) are its metrics; the per-sample rows stay in its file
    summary = frame[frame["test_case_id"].astype(str) == frame["model"].astype(str)]
    if len(labels) > 1 and not summary.empty:
        comparison = summary[["metric_name", "model", "score", *(c for c in ("stderr", "kind") if c in summary)]]
        comparison.insert(0, "metric_and_model", summary["metric_name"] + " · " + summary["model"].astype(str))
        order = {metric: i for i, metric in enumerate(dict.fromkeys(comparison["metric_name"]))}
        comparison = comparison.sort_values("metric_name", key=lambda names: names.map(order), kind="stable")
        # no generated text here: the metric and the model stand in for the input and output lab checks for
        tables.append(ViewTable("eval_results_comparison.csv", comparison, COMPARISON_COLUMNS))
    return tables


def _file_names(labels: Sequence[Any]) -> dict[Any, str]:
    """`eval_results_<label>.csv` per model (the name the app's file picker shows), unique among them."""
    names: dict[Any, str] = {}
    for label in labels:
        stem = "eval_results_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", str(label)).strip("._") or "model")
        name, n = f"{stem}.csv", 2
        while name in names.values() or name == "eval_results_comparison.csv":
            name, n = f"{stem}_{n}.csv", n + 1
        names[label] = name
    return names


def write_plot_data(frame: Any, path: Path, root: Path | None = None) -> Path:
    """The host's plot JSON of an evaluation: one record per test case and metric, metric names in title case;
    written without following a link below `root` (`plugin_sdk.safe_files`)."""
    plot = frame[["test_case_id", "metric_name", "score"]].copy()
    plot["metric_name"] = plot["metric_name"].map(lambda name: name.replace("_", " ").title())
    write_text_atomic(path, plot.to_json(orient="records", lines=False), root)
    return path


def _as_text(value: Any) -> str:
    """A sample field as the CSV's text: chat messages become `role: content` lines."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(m, Mapping) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', '?')}: {m['content']}" for m in value)
    return str(value)
