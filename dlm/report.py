"""Evaluation reports: `results.json` (every metric with its standard error and the settings that produced it),
a PNG chart of the metrics (one panel per metric, one bar per model), and a self-contained HTML page (table,
chart, sample generations). Every file is written under a temporary name and renamed, so a reader never takes a
half-written report for a result."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

RESULTS_FORMAT = 1
HTML_SAMPLES_PER_MODEL = 50  # the HTML stays readable; results.json keeps every sample


@dataclass
class ModelResult:
    """What one evaluated model produced."""

    label: str
    """Unique display name in tables and charts."""
    model: str
    """The model as asked for (preset, hub id or folder)."""
    path: str
    family: str
    adapter: str | None = None
    metrics: list[Any] = field(default_factory=list)
    """`dlm.evaluation.MetricResult`s (or mappings with the same keys)."""
    samples: list[dict] = field(default_factory=list)
    lm_eval: dict | None = None
    """Raw lm-eval harness results, when tasks ran."""
    seconds: float | None = None


def metric_dict(metric: Any) -> dict[str, Any]:
    """A metric as a plain dict: name, value, stderr, kind, details (non-finite numbers become None)."""
    data = dict(metric) if isinstance(metric, Mapping) else dataclasses.asdict(metric)
    return {
        "name": str(data["name"]),
        "value": _finite(data.get("value")),
        "stderr": _finite(data.get("stderr")),
        "kind": data.get("kind") or "estimate",
        "details": jsonable(data.get("details") or {}),
    }


def lm_eval_metrics(summary: Mapping[str, Mapping[str, Sequence[Any]]], details: Mapping[str, Any]) -> list[dict]:
    """Metrics (as dicts) from lm-eval's per-task summary `{task: {metric: (value, stderr)}}`, named
    `task/metric`."""
    return [
        {
            "name": f"{task}/{metric}",
            "value": value,
            "stderr": stderr,
            "kind": "estimate",
            "details": {**details, "task": task},
        }
        for task, metrics in summary.items()
        for metric, (value, stderr) in metrics.items()
    ]


def metric_names(models: Sequence[ModelResult]) -> list[str]:
    """Every metric name, in the order the models first report them (the main model's order first)."""
    names: dict[str, None] = {}
    for result in models:
        for metric in result.metrics:
            names.setdefault(metric_dict(metric)["name"], None)
    return list(names)


def metric_table(models: Sequence[ModelResult]) -> dict[str, dict[str, dict[str, Any]]]:
    """`{metric name: {model label: metric dict}}` for the metrics each model has."""
    table: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in metric_names(models)}
    for result in models:
        for metric in result.metrics:
            row = metric_dict(metric)
            table[row["name"]][result.label] = row
    return table


def results_document(
    models: Sequence[ModelResult],
    settings: Mapping[str, Any],
    *,
    dataset: Mapping[str, Any] | None = None,
    headline: str | None = None,
) -> dict[str, Any]:
    """The content of `results.json`."""
    return {
        "format": RESULTS_FORMAT,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "headline_metric": headline,
        "settings": jsonable(dict(settings)),
        "dataset": jsonable(dict(dataset)) if dataset is not None else None,
        "warnings": report_warnings(models),
        "models": [model_document(m) for m in models],
    }


def model_document(result: ModelResult) -> dict[str, Any]:
    """One model's entry of `results.json`, plain JSON types (what the host's result formats are made from)."""
    return {
        "label": result.label,
        "model": result.model,
        "path": result.path,
        "family": result.family,
        "adapter": result.adapter,
        "seconds": _finite(result.seconds),
        "metrics": [metric_dict(metric) for metric in result.metrics],
        "lm_eval": _without_samples(result.lm_eval),
        "samples": jsonable(result.samples),
    }


# the job's headline score: the first one a model reports
HEADLINE_METRICS = ("task_accuracy", "conditional_perplexity", "perplexity")


def headline_metric(result: ModelResult) -> str | None:
    """The metric that sums a model up: task accuracy, else conditional perplexity, else perplexity, else its first
    metric."""
    names = [metric_dict(m)["name"] for m in result.metrics]
    return next((n for n in HEADLINE_METRICS if n in names), names[0] if names else None)


def report_warnings(models: Sequence[ModelResult]) -> list[str]:
    """What a reader must not miss: answers that ended at once (their scores are 0 because nothing was generated,
    not because the model answered wrongly)."""
    warnings = []
    for result in models:
        empty = next((m for m in map(metric_dict, result.metrics) if m["name"] == "empty_answers"), None)
        if empty and empty["value"]:
            count = empty["details"].get("empty", "some")
            warnings.append(
                f"{result.label}: {count} of {empty['details'].get('prompts', '?')} answers are empty (the model "
                "ended them at once); their task accuracy and diversity count as nothing generated. A model fine-"
                "tuned on short answers may end early when max_new_tokens is much longer than its training answers."
            )
    return warnings


def _without_samples(lm_eval: Mapping[str, Any] | None) -> Any:
    # per-document lm-eval records can be large: they go to lm_eval_samples.json
    return None if lm_eval is None else jsonable({k: v for k, v in lm_eval.items() if k != "samples"})


def format_value(value: float | None, stderr: float | None = None, kind: str = "estimate") -> str:
    """`≤ 12.3 ± 0.4` style text for tables and logs."""
    if value is None:
        return "n/a"
    text = f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    if kind == "upper_bound":
        text = "≤ " + text
    if stderr is not None:
        text += f" ± {stderr:.2g}"
    return text


def comparison_text(models: Sequence[ModelResult]) -> str:
    """A plain-text table, metrics × models, for the job log."""
    table = metric_table(models)
    header = ["metric", *(m.label for m in models)]
    rows = [[name, *(_cell_text(cells.get(m.label)) for m in models)] for name, cells in table.items()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell_text(cell: Mapping[str, Any] | None) -> str:
    return "-" if cell is None else format_value(cell["value"], cell["stderr"], cell["kind"])


# ---------------------------------------------------------------------------------------------------------------
# Chart


def metrics_chart_png(
    models: Sequence[ModelResult], *, curves: Mapping[str, Sequence[tuple[float, float]]] | None = None
) -> bytes:
    """A PNG with one panel per metric (a bar per model, standard errors as error bars) and, when `curves` is given
    (`{series name: [(step, value), ...]}`), a final panel with those curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = metric_table(models)
    panels = len(table) + (1 if curves else 0)
    if panels == 0:
        raise ValueError("nothing to chart: no metric and no curve")
    columns = min(4, panels)
    rows = math.ceil(panels / columns)
    width = max(2.2, 1.2 + 0.7 * len(models))
    figure = Figure(figsize=(columns * width + 0.5, rows * 2.8 + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, cells) in zip(axes, table.items(), strict=False):
        _bar_panel(ax, name, cells, models)
    used = len(table)
    if curves:
        _curve_panel(axes[used], curves)
        used += 1
    for ax in axes[used:]:
        ax.set_visible(False)
    if len(models) > 1:
        figure.suptitle("  vs  ".join(m.label for m in models), fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _bar_panel(ax: Any, name: str, cells: Mapping[str, dict[str, Any]], models: Sequence[ModelResult]) -> None:
    """One metric: a bar per model with its standard error, each labelled with its value."""
    found = [cells.get(m.label) for m in models]
    ax.bar(
        range(len(models)),
        [math.nan if c is None or c["value"] is None else c["value"] for c in found],
        yerr=[0.0 if c is None or c["stderr"] is None else c["stderr"] for c in found],
        color=[f"C{i % 10}" for i in range(len(models))],
        capsize=3,
    )
    for x, cell in enumerate(found):
        if cell is not None:  # None: this model does not report the metric
            _bar_label(ax, x, cell)
    ax.set_xlim(-0.6, len(models) - 0.4)
    if all(c is None or c["value"] is None for c in found):
        ax.set_ylim(0, 1)
        ax.set_yticks([])
    kinds = {cell["kind"] for cell in cells.values()}
    ax.set_title(name + (" (upper bound)" if kinds == {"upper_bound"} else ""), fontsize=9)
    ax.set_xticks(range(len(models)), [m.label for m in models], rotation=20, ha="right", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.margins(y=0.15)


def _bar_label(ax: Any, x: int, cell: Mapping[str, Any]) -> None:
    value, error = cell["value"], cell["stderr"] or 0.0
    above = value is None or value >= 0
    ax.annotate(
        "n/a" if value is None else format_value(value, None, cell["kind"]),
        (x, 0 if value is None else value + (error if value >= 0 else -error)),
        ha="center",
        va="bottom" if above else "top",
        fontsize=7,
        xytext=(0, 2 if above else -2),
        textcoords="offset points",
    )


def _curve_panel(ax: Any, curves: Mapping[str, Sequence[tuple[float, float]]]) -> None:
    for series, points in curves.items():
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=series, linewidth=1.2)
    ax.set_title("curves", fontsize=9)
    ax.set_xlabel("step", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------------------------------
# HTML


def html_report(document: Mapping[str, Any], png: bytes | None) -> str:
    """A self-contained HTML page (inline CSS, the chart embedded) from a `results_document`."""
    from jinja2 import Environment

    models = document["models"]
    table: dict[str, dict[str, str]] = {}
    for model in models:
        for metric in model["metrics"]:
            cell = format_value(metric["value"], metric["stderr"], metric["kind"])
            table.setdefault(metric["name"], {})[model["label"]] = cell
    samples = [
        {
            "label": model["label"],
            "rows": [_sample_row(i, s) for i, s in enumerate(model["samples"][:HTML_SAMPLES_PER_MODEL])],
            "total": len(model["samples"]),
        }
        for model in models
    ]
    environment = Environment(autoescape=True, keep_trailing_newline=True)
    template = environment.from_string(_html_template())
    return template.render(
        document=document,
        models=models,
        table=table,
        headline=document.get("headline_metric"),
        settings=sorted((document.get("settings") or {}).items()),
        samples=samples,
        chart=base64.b64encode(png).decode("ascii") if png else None,
        shown=HTML_SAMPLES_PER_MODEL,
    )


@cache
def _html_template() -> str:
    return resources.files("dlm.templates").joinpath("eval_report.html.jinja").read_text(encoding="utf-8")


def _sample_row(index: int, sample: Mapping[str, Any]) -> dict[str, Any]:
    correct = sample.get("correct")
    return {
        "index": index,
        "input": _as_text(sample.get("input")),
        "output": _as_text(sample.get("output")),
        "reference": _as_text(sample.get("reference")),
        "correct": None if correct is None else bool(correct),
    }


def _as_text(value: Any) -> str:
    """Sample fields as display text: chat messages become `role: content` lines."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(m, Mapping) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', '?')}: {m['content']}" for m in value)
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# Writing


def write_report(
    output_dir: str | os.PathLike[str],
    models: Sequence[ModelResult],
    settings: Mapping[str, Any],
    *,
    dataset: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    curves: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> dict[str, Path]:
    """Write `metrics.png`, `report.html`, `lm_eval_samples.json` (when lm-eval ran) and `results.json` (the
    `results_document`, with `extra` keys added) into `output_dir`; returns their paths by kind.

    `results.json` is written last: when it exists, the files beside it are complete too."""
    import json

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    headline = headline_metric(models[0]) if models else None
    document = {**results_document(models, settings, dataset=dataset, headline=headline), **(extra or {})}
    png = metrics_chart_png(models, curves=curves) if any(m.metrics for m in models) or curves else None
    paths: dict[str, Path] = {}
    if png is not None:
        paths["chart"] = _write_atomic(output / "metrics.png", png)
    paths["html"] = _write_atomic(output / "report.html", html_report(document, png).encode("utf-8"))
    lm_samples = {m.label: m.lm_eval["samples"] for m in models if m.lm_eval and m.lm_eval.get("samples")}
    if lm_samples:
        text = json.dumps(jsonable(lm_samples), ensure_ascii=False, allow_nan=False)
        paths["lm_eval_samples"] = _write_atomic(output / "lm_eval_samples.json", text.encode("utf-8"))
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    paths["results"] = _write_atomic(output / "results.json", text.encode("utf-8"))
    return paths


def _write_atomic(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; reports are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def jsonable(value: Any) -> Any:
    """`value` with only JSON types: dataclasses and mappings become dicts, tuples lists, numpy/torch scalars
    numbers, non-finite floats None, anything else its text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return jsonable(item())
    return str(value)
