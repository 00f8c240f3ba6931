"""The host's formats of an evaluation's results (plugin_sdk.eval_results): the results CSV's rows and the job's
score, from models as an evaluation report lists them."""

import json
import math

import numpy as np
import pytest

from plugin_sdk.eval_results import (
    VIEW_COLUMNS,
    job_score,
    mean_scores,
    results_table,
    score_rows,
    view_tables,
    write_plot_data,
)

SAMPLES = [
    {"input": "What is <b>2+2</b>?", "output": "4 & more", "reference": "4", "correct": True, "tokens": 3},
    {"input": "Say <script>alert(1)</script>", "output": "no", "reference": "yes", "correct": False, "tokens": 1},
    {"input": "Hi", "output": "x", "reference": "z", "correct": False, "tokens": 5},
]


def metric(name: str, value: float | None, stderr: float | None = None, kind: str = "estimate") -> dict:
    return {"name": name, "value": value, "stderr": stderr, "kind": kind, "details": {}}


def models() -> list[dict]:
    diffusion = {
        "label": "tiny-llada",
        "metrics": [
            metric("perplexity", 1234.5, 12.25, "upper_bound"),
            metric("task_accuracy", 1 / 3, math.sqrt(1 / 3 * 2 / 3 / 3)),
            metric("tokens_per_sec", None),  # not finite
        ],
        "samples": SAMPLES,
    }
    causal = {
        "label": "tiny-ar",
        "metrics": [
            metric("perplexity", 900.0, None, "exact"),
            metric("task_accuracy", 0.0, 0.0),
            metric("next_token_accuracy", 0.25, 0.01, "exact"),
        ],
        "samples": [dict(s, correct=False) for s in SAMPLES],
    }
    return [diffusion, causal]


def test_score_rows_and_job_score():
    results = models()
    rows = score_rows(results)
    assert {"test_case_id", "metric_name", "score", "input", "output", "expected_output"} <= set(rows[0])
    aggregate = [r for r in rows if r["test_case_id"] == "tiny-llada"]
    assert [r["metric_name"] for r in aggregate] == ["perplexity", "task_accuracy", "tokens_per_sec"]
    assert math.isnan(aggregate[2]["score"])
    per_sample = [r for r in rows if r["test_case_id"].startswith("tiny-llada/")]
    assert [r["metric_name"] for r in per_sample] == ["answer_correct"] * 3
    assert np.mean([r["score"] for r in per_sample]) == pytest.approx(results[0]["metrics"][1]["value"])
    assert per_sample[0]["input"] == "What is <b>2+2</b>?" and per_sample[0]["expected_output"] == "4"
    no_task = {"label": "m", "metrics": [], "samples": [{"input": "a", "output": "b", "tokens": 5}]}
    assert score_rows([no_task])[0] | {"stderr": None} == {
        "test_case_id": "m/0",
        "metric_name": "generated_tokens",
        "score": 5.0,
        "stderr": None,
        "kind": "exact",
        "model": "m",
        "input": "a",
        "output": "b",
        "expected_output": "",
    }
    score = job_score(results[0]["metrics"], headline="task_accuracy")
    assert score == [{"type": "task_accuracy", "score": 1 / 3}, {"type": "perplexity", "score": 1234.5}]


def test_chat_messages_become_role_lines():
    chat = {
        "label": "m",
        "metrics": [],
        "samples": [{"input": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
    }
    assert score_rows([chat])[0]["input"] == "user: hi\nassistant: yo"


def test_a_results_table_needs_its_columns_and_scores_each_metric_by_its_mean(tmp_path):
    with pytest.raises(ValueError, match=r"lack the columns \['score'\]"):
        results_table([{"test_case_id": "a", "metric_name": "bleu"}])
    frame = results_table(
        [
            {"test_case_id": "a", "metric_name": "exact_match", "score": 1.0},
            {"test_case_id": "b", "metric_name": "exact_match", "score": 0.0},
            {"test_case_id": "a", "metric_name": "bleu", "score": 0.5},
        ]
    )
    assert mean_scores(frame) == [{"type": "exact_match", "score": 0.5}, {"type": "bleu", "score": 0.5}]
    plot = json.loads(write_plot_data(frame, tmp_path / "plot.json").read_text())
    assert plot[0] == {"test_case_id": "a", "metric_name": "Exact Match", "score": 1.0}


def test_view_tables_one_per_model_then_their_comparison():
    frame = results_table(score_rows(models()))
    tables = view_tables(frame)
    assert [table.name for table in tables] == [
        "eval_results_tiny-llada.csv",
        "eval_results_tiny-ar.csv",
        "eval_results_comparison.csv",
    ]
    (_, llada, _), (_, ar, _), (_, comparison, columns) = tables
    # the app charts the mean score per value of the first column: per metric, and accuracy from the answers
    assert list(llada.columns[: len(VIEW_COLUMNS)]) == list(VIEW_COLUMNS) and list(llada.columns) == list(ar.columns)
    assert set(llada.model) == {"tiny-llada"} and len(llada) == 3 + 3
    assert llada.groupby("metric_name", sort=False).score.mean().to_dict() == pytest.approx(
        {"perplexity": 1234.5, "task_accuracy": 1 / 3, "tokens_per_sec": math.nan, "answer_correct": 1 / 3},
        nan_ok=True,
    )
    assert list(comparison.metric_and_model) == [
        "perplexity · tiny-llada",
        "perplexity · tiny-ar",
        "task_accuracy · tiny-llada",
        "task_accuracy · tiny-ar",
        "tokens_per_sec · tiny-llada",
        "next_token_accuracy · tiny-ar",
    ]
    assert list(comparison.score[:2]) == [1234.5, 900.0]
    assert {column for column in columns.values() if column} <= set(comparison.columns)  # what lab checks for


def test_view_tables_of_a_table_without_models_or_sample_columns():
    frame = results_table([{"test_case_id": i, "metric_name": "probe", "score": i / 4} for i in range(3)])
    ((name, table, _),) = view_tables(frame)
    assert name == "eval_results.csv"
    assert list(table.columns) == [*VIEW_COLUMNS, "test_case_id"] and list(table.input) == ["", "", ""]
    same = [{"test_case_id": "x", "metric_name": "m", "score": 1.0, "model": label} for label in ("a/b", "a b", "")]
    assert [table.name for table in view_tables(results_table(same))] == [
        "eval_results_a_b.csv",
        "eval_results_a_b_2.csv",
        "eval_results_model.csv",
    ]  # no model's own metric rows: nothing to compare
