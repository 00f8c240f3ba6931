"""Hostile inputs that once cost unbounded memory or time, or trained a model that did not match its weights: each
now ends as a refused command or a failed job naming what to change (the catalogue's helpers are reused)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from plugin_sdk import config_keys, templates
from plugin_sdk.__main__ import main as cli
from plugin_sdk.backends.base import EXIT_FAILED
from tests.plugins.test_bad_inputs import SFT, leftovers, run_plugin_job, write

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"


def billion_laughs(levels: int = 9) -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_anything_is_written(tmp_path, capsys) -> None:
    path = write(tmp_path / "bomb.yaml", billion_laughs())
    start = time.process_time()
    code = cli(["run", SFT, "--workspace", str(tmp_path / "ws"), "--config_file", path])
    err = capsys.readouterr().err
    assert code == 2 and "bomb.yaml: its aliases (*name) expand to more than 4096 KiB" in err, err
    assert time.process_time() - start < 5
    assert leftovers(tmp_path / "ws") == [] and not list((tmp_path / "ws").rglob("index.json"))


def test_an_oversized_config_file_is_refused_unread(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(config_keys, "MAX_CONFIG_BYTES", 10_000)
    path = write(tmp_path / "big.json", json.dumps({"seed": 1, "notes": "x" * 20_000}))
    code = cli(["run", SFT, "--workspace", str(tmp_path / "ws"), "--config_file", path])
    err = capsys.readouterr().err
    assert code == 2 and "big.json: 20024 bytes is over the 9 KiB" in err, err
    assert leftovers(tmp_path / "ws") == []


def rows(tmp_path: Path, n: int = 4, **extra) -> str:
    text = "".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}", **extra}) + "\n" for i in range(n))
    return write(tmp_path / "rows.jsonl", text)


@pytest.mark.parametrize(
    "template, fragment",
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran longer than"),
        ("{{ instruction * 300000000 }}", "over its budget"),
    ],
)
def test_a_runaway_template_fails_the_job_naming_its_field(tmp_path, monkeypatch, template, fragment) -> None:
    monkeypatch.setattr(templates, "RENDER_SECONDS", 0.5)
    argv = ["--model_name", "tiny-llada", "--dataset", rows(tmp_path), "--instruction_template", template]
    start = time.process_time()
    code, record, _ = run_plugin_job(SFT, argv, tmp_path / "ws")
    details = record["job_data"]["completion_details"]
    assert code == EXIT_FAILED and "template 'instruction_template'" in details and fragment in details, details
    assert time.process_time() - start < 120


def checkpoint(tmp_path: Path, **changes) -> str:
    folder = tmp_path / "model"
    shutil.copytree(GOLDEN / "llada-tiny", folder, ignore=shutil.ignore_patterns("golden.*"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return str(folder)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"n_layers": 8}, "n_layers=8"),
        ({"vocab_size": 25_000_000, "embedding_size": 25_000_000}, "vocab_size=25000000"),
        ({"include_qkv_bias": True}, "missing from its weights"),
    ],
)
def test_a_model_that_does_not_match_its_weights_fails_the_job(tmp_path, changes, fragment) -> None:
    argv = [
        "--model_name",
        checkpoint(tmp_path, **changes),
        "--dataset",
        rows(tmp_path),
        "--train_steps",
        "2",
        "--num_train_epochs",
        "0",
    ]
    code, record, _ = run_plugin_job(SFT, argv, tmp_path / "ws")
    details = record["job_data"]["completion_details"]
    assert code == EXIT_FAILED and record["status"] == "FAILED" and fragment in details, details
    assert leftovers(tmp_path / "ws") == []
