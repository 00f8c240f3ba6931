"""Evaluation reports: results.json, the PNG chart, the self-contained HTML page."""

import base64
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from dlm import report
from dlm.metrics.result import MetricResult
from dlm.report import ModelResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SETTINGS = {"metrics": ["perplexity", "task_accuracy"], "mc_num": 4, "steps": 8, "max_new_tokens": 8}


def models() -> list[ModelResult]:
    samples = [
        {"input": "What is <b>2+2</b>?", "output": "4 & more", "reference": "4", "correct": True, "tokens": 3},
        {"input": "Say <script>alert(1)</script>", "output": "no", "reference": "yes", "correct": False, "tokens": 1},
        {"input": "Hi", "output": "x", "reference": "z", "correct": False, "tokens": 5},
    ]
    diffusion = ModelResult(
        "tiny-llada",
        "tiny-llada",
        "/ws/models/tiny-llada",
        "llada",
        metrics=[
            MetricResult("perplexity", 1234.5, 12.25, "upper_bound", {"mc_num": 4}),
            MetricResult("task_accuracy", 1 / 3, math.sqrt(1 / 3 * 2 / 3 / 3), "estimate", {"sampler": {"steps": 8}}),
            MetricResult("tokens_per_sec", float("nan"), None, "estimate", {}),
        ],
        samples=samples,
        seconds=1.5,
    )
    causal = ModelResult(
        "tiny-ar",
        "tiny-ar",
        "/ws/models/tiny-ar",
        "ar",
        metrics=[
            MetricResult("perplexity", 900.0, None, "exact", {}),
            MetricResult("task_accuracy", 0.0, 0.0, "estimate", {}),
            MetricResult("next_token_accuracy", 0.25, 0.01, "exact", {}),
        ],
        samples=[dict(s, correct=False) for s in samples],
        seconds=2.0,
    )
    return [diffusion, causal]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[dict[str, Path], list[ModelResult]]:
    out = tmp_path_factory.mktemp("report")
    results = models()
    paths = report.write_report(
        out,
        results,
        SETTINGS,
        dataset={"source": "data.jsonl", "split": "test", "num_examples": 3},
        extra={"job_id": "7"},
        curves={"train/loss": [(1, 2.0), (2, 1.5), (3, 1.2)]},
    )
    return paths, results


def test_results_json_holds_every_metric_with_stderr_kind_details_settings_and_samples(written):
    paths, results = written
    text = paths["results"].read_text(encoding="utf-8")
    document = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in results.json"))
    assert document["job_id"] == "7" and document["settings"] == SETTINGS
    assert document["dataset"] == {"source": "data.jsonl", "split": "test", "num_examples": 3}
    assert document["headline_metric"] == "task_accuracy"
    assert [m["label"] for m in document["models"]] == ["tiny-llada", "tiny-ar"]
    first = document["models"][0]
    assert first["family"] == "llada" and first["path"] == "/ws/models/tiny-llada" and first["seconds"] == 1.5
    assert first["metrics"][0] == {
        "name": "perplexity",
        "value": 1234.5,
        "stderr": 12.25,
        "kind": "upper_bound",
        "details": {"mc_num": 4},
    }
    assert first["metrics"][1]["details"] == {"sampler": {"steps": 8}}
    assert first["metrics"][2]["value"] is None  # NaN is not JSON: it becomes null
    assert first["samples"] == results[0].samples
    assert document["models"][1]["metrics"][0]["stderr"] is None


def test_png_is_a_valid_image_with_a_panel_per_metric(written):
    import matplotlib.image

    paths, _ = written
    data = paths["chart"].read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    # 4 metrics + the curves panel = 5 panels on a grid of 4 columns, 2 rows
    assert pixels.ndim == 3 and pixels.shape[1] > pixels.shape[0] > 400
    one_metric = report.metrics_chart_png([ModelResult("m", "m", "/m", "llada", metrics=models()[0].metrics[:1])])
    small = matplotlib.image.imread(io.BytesIO(one_metric), format="png")
    assert small.shape[0] < pixels.shape[0] and small.shape[1] < pixels.shape[1]


def test_html_is_self_contained_with_table_chart_and_escaped_samples(written):
    paths, _ = written
    page = paths["html"].read_text(encoding="utf-8")
    rows = re.findall(r"<tr[^>]*><td>([^<]+)</td>", page)
    assert {"perplexity", "task_accuracy", "tokens_per_sec", "next_token_accuracy"} <= set(rows)
    assert "≤ 1,234.5 ± 12" in page and '<td class="num">900</td>' in page
    assert '<tr class="headline"><td>task_accuracy</td>' in page
    # sample text is escaped: no markup from the data reaches the page
    assert "&lt;b&gt;2+2&lt;/b&gt;" in page and "4 &amp; more" in page
    assert "<script>" not in page and "<b>2+2" not in page
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded and base64.b64decode(embedded.group(1)) == paths["chart"].read_bytes()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    assert "<style>" in page


def test_a_failed_write_leaves_no_results_json(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("chart failed")

    monkeypatch.setattr(report, "metrics_chart_png", broken)
    with pytest.raises(RuntimeError, match="chart failed"):
        report.write_report(tmp_path, models(), SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_headline_prefers_task_accuracy_then_perplexity_then_the_first_metric():
    def named(*names):
        return ModelResult("m", "m", "/m", "llada", metrics=[MetricResult(n, 1.0) for n in names])

    assert report.headline_metric(named("perplexity", "task_accuracy")) == "task_accuracy"
    assert report.headline_metric(named("tokens_per_sec", "perplexity")) == "perplexity"
    assert report.headline_metric(named("perplexity", "conditional_perplexity")) == "conditional_perplexity"
    assert report.headline_metric(named("tokens_per_sec", "self_bleu")) == "tokens_per_sec"
    assert report.headline_metric(named()) is None


def test_empty_answers_become_a_warning_in_results_json_and_html(tmp_path):
    empty = MetricResult("empty_answers", 2 / 3, None, "exact", {"empty": 2, "prompts": 3})
    none_empty = MetricResult("empty_answers", 0.0, None, "exact", {"empty": 0, "prompts": 3})
    results = models()
    results[0].metrics.append(empty)
    results[1].metrics.append(none_empty)
    (warning,) = report.report_warnings(results)
    assert warning.startswith("tiny-llada: 2 of 3 answers are empty")
    paths = report.write_report(tmp_path, results, SETTINGS)
    assert json.loads(paths["results"].read_text())["warnings"] == [warning]
    assert "Warning: tiny-llada: 2 of 3 answers are empty" in paths["html"].read_text()
    assert report.report_warnings(models()) == []


def test_comparison_text_lines_up_models_and_metrics():
    text = report.comparison_text(models())
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "tiny-llada", "tiny-ar"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    by_metric = {line.split()[0]: line for line in lines[2:]}
    assert "≤ 1,234.5 ± 12" in by_metric["perplexity"] and by_metric["perplexity"].rstrip().endswith("900")
    assert by_metric["next_token_accuracy"].split()[1] == "-"  # the diffusion model does not report it
    assert "n/a" in by_metric["tokens_per_sec"]


def test_lm_eval_summary_becomes_metrics():
    summary = {"gsm8k": {"exact_match_strict-match": (0.5, 0.1)}, "hellaswag": {"acc": (0.25, None)}}
    metrics = report.lm_eval_metrics(summary, {"source": "lm-eval"})
    assert [(m["name"], m["value"], m["stderr"]) for m in metrics] == [
        ("gsm8k/exact_match_strict-match", 0.5, 0.1),
        ("hellaswag/acc", 0.25, None),
    ]
    assert metrics[0]["details"] == {"source": "lm-eval", "task": "gsm8k"}


def test_jsonable_and_format_value():
    import torch

    value = {"a": (1, np.float32(0.5)), "b": float("inf"), "c": torch.tensor(2.0), "d": Path("/x"), 3: {1, 2}}
    assert report.jsonable(value) == {"a": [1, 0.5], "b": None, "c": 2.0, "d": "/x", "3": [1, 2]}
    assert report.format_value(0.123456) == "0.1235"
    assert report.format_value(12345.678, 3.21, "upper_bound") == "≤ 12,345.7 ± 3.2"
    assert report.format_value(None) == "n/a"


def test_a_model_document_is_plain_json_with_its_metrics_as_dicts():
    result = models()[0]
    document = report.model_document(result)
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert [m["name"] for m in document["metrics"]] == ["perplexity", "task_accuracy", "tokens_per_sec"]
    assert document["metrics"][0] == {
        "name": "perplexity",
        "value": 1234.5,
        "stderr": 12.25,
        "kind": "upper_bound",
        "details": {"mc_num": 4},
    }
    assert document["metrics"][2]["value"] is None  # not finite
    assert document["label"] == "tiny-llada" and document["samples"] == result.samples
