"""The documented seed workflow (examples/seed_workflow.sh) end to end at the smallest settings: two small models
pre-trained from scratch on one corpus, both fine-tuned on Alpaca-format rows, one side-by-side evaluation."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def alpaca_rows(n: int, offset: int = 0) -> str:
    rows = [
        {"instruction": f"What is {i} + {i}?", "input": "", "output": f"{2 * i}"} for i in range(offset, offset + n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.slow
def test_seed_workflow_pretrains_fine_tunes_and_compares_both_models(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stories = [f"Once upon a time Lily found {i} stones by the river, and Tom counted them." for i in range(150)]
    (corpus / "stories.txt").write_text("\n\n".join(stories) + "\n")
    (tmp_path / "alpaca.jsonl").write_text(alpaca_rows(24))
    (tmp_path / "eval.jsonl").write_text(alpaca_rows(4, offset=50))
    workspace = tmp_path / "ws"
    settings = {
        "PRETRAIN_STEPS": "2", "SFT_STEPS": "2", "MAX_LENGTH": "64", "BATCH": "2", "VOCAB": "400", "DEVICE": "cpu",
        "EVAL_SAMPLES": "2", "MC_NUM": "2", "EXTRA": "--set dtype=float32 --set logging_steps=1",
    }  # fmt: skip
    done = subprocess.run(
        [
            str(REPO / "examples" / "seed_workflow.sh"),
            str(corpus),
            *(str(tmp_path / f) for f in ("alpaca.jsonl", "eval.jsonl")),
            str(workspace),
        ],
        env={**os.environ, **settings, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    models = workspace / "models"
    for family in ("ar", "llada"):
        assert (models / f"small-{family}_pretrained" / "config.json").is_file()
        assert (models / f"small-{family}_pretrained_sft" / "config.json").is_file()
    [results] = list((workspace / "experiments").glob("*/evals/seed-small/*/results.json"))
    text = results.read_text()
    assert "small-llada_pretrained_sft" in text and "small-ar_pretrained_sft" in text
    statuses = [json.loads(p.read_text())["status"] for p in (workspace / "jobs").glob("*/index.json")]
    assert statuses == ["COMPLETE"] * 5
