"""A config that does not match its weights is refused: before anything is allocated when it describes a larger
model (headers and a meta-device model only), and after loading when any parameter is missing or misshapen."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from dlm import loading
from dlm.checkpoints import weight_shapes
from dlm.errors import ModelError
from dlm.loading import load_model_and_tokenizer, refuse_unloaded_weights

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"


def edited(tmp_path: Path, fixture: str, **changes) -> Path:
    folder = tmp_path / fixture
    shutil.copytree(GOLDEN / fixture, folder, ignore=shutil.ignore_patterns("golden.*"))
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_weight_headers_are_read_without_the_weights() -> None:
    shapes = weight_shapes(GOLDEN / "llada-tiny")
    assert shapes["model.transformer.wte.weight"] == ("F32", (68, 64))
    assert weight_shapes(GOLDEN) is None


@pytest.mark.parametrize(
    "fixture, changes",
    [
        ("llada-tiny", {"vocab_size": 25_000_000, "embedding_size": 25_000_000}),
        ("dream-tiny", {"vocab_size": 25_000_000}),
        ("llada-tiny", {"n_layers": 8}),
        ("dream-tiny", {"num_hidden_layers": 8}),
    ],
)
def test_a_config_larger_than_its_weights_is_refused_before_loading(tmp_path, monkeypatch, fixture, changes) -> None:
    folder = edited(tmp_path, fixture, **changes)
    loaded_weights = []
    monkeypatch.setattr(loading, "refuse_unloaded_weights", lambda *a: loaded_weights.append(a))
    start = time.process_time()
    with pytest.raises(
        ModelError, match=r"config.json describes a model of [\d,]+ parameters .*, but its weights hold"
    ):
        load_model_and_tokenizer(folder)
    assert not loaded_weights  # refused before from_pretrained, so nothing of the 25M vocabulary was allocated
    assert time.process_time() - start < 20
    name = next(iter(changes))
    with pytest.raises(ModelError, match=f"{name}={changes[name]}"):
        load_model_and_tokenizer(folder)


def test_missing_weights_are_an_error_naming_them(tmp_path) -> None:
    # a few biases more than the weights hold: within the size slack, so it is the loaded model that is checked
    folder = edited(tmp_path, "llada-tiny", include_qkv_bias=True)
    with pytest.raises(ModelError, match=r"does not match its config.json: .* missing from its weights \(.*bias"):
        load_model_and_tokenizer(folder)


def test_misshapen_weights_are_an_error(tmp_path) -> None:
    folder = edited(tmp_path, "llada-tiny", mlp_hidden_size=96)
    with pytest.raises(ModelError, match=r"6 of another shape \(model.transformer.blocks.0.ff_out.weight \(64, 128\) "):
        load_model_and_tokenizer(folder)


def test_the_loading_report_names_the_first_few_tensors() -> None:
    info = {"missing_keys": {f"layers.{i}.weight" for i in range(8)}, "mismatched_keys": [("head", (2, 3), (4, 3))]}
    with pytest.raises(ModelError) as error:
        refuse_unloaded_weights("ckpt", info)
    message = str(error.value)
    assert "8 missing from its weights (layers.0.weight, layers.1.weight" in message and "and 3 more" in message
    assert "1 of another shape (head (2, 3) in the weights, (4, 3) in the model)" in message
    refuse_unloaded_weights("ckpt", {"missing_keys": set(), "unexpected_keys": {"extra"}, "mismatched_keys": []})
