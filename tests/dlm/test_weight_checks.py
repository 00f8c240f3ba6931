"""A config that does not match its weights is refused: before anything is allocated when it describes a larger
model (headers and a meta-device model only), and after loading when any parameter is missing or misshapen."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest

from dlm import loading
from dlm.checkpoints import cached_weights_folder, weight_shapes
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


def hub_cache_with(
    tmp_path: Path, monkeypatch, folder: Path, repo: str = "org/tiny-model", shards: bool = False
) -> Path:
    """A Hugging Face cache (HF_HUB_CACHE) in tmp_path holding `folder`'s files as the `main` snapshot of `repo`,
    laid out as huggingface_hub writes it (files are links into blobs/); returns the snapshot folder."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo_folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_folder / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    (repo_folder / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text(snapshot.name)
    for file in folder.iterdir():
        blob = repo_folder / "blobs" / f"blob-{file.name}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(blob)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return snapshot


def test_a_hub_id_from_the_cache_gets_the_same_check_before_loading(tmp_path, monkeypatch) -> None:
    folder = edited(tmp_path, "llada-tiny", vocab_size=25_000_000, embedding_size=25_000_000)
    snapshot = hub_cache_with(tmp_path, monkeypatch, folder)
    from transformers import AutoModel

    pretrained_calls = []
    original = AutoModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        pretrained_calls.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", classmethod(spy))
    tracemalloc.start()
    try:
        with pytest.raises(ModelError) as error:
            load_model_and_tokenizer("org/tiny-model")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not pretrained_calls  # refused before from_pretrained
    assert peak < 200 * 2**20  # the 25M x 64 embedding alone would be 6.4 GB in float32
    message = str(error.value)
    assert "org/tiny-model" in message and "vocab_size=25000000" in message
    assert str(snapshot / "config.json") in message


def test_a_matching_hub_id_from_the_cache_loads(tmp_path, monkeypatch) -> None:
    hub_cache_with(tmp_path, monkeypatch, GOLDEN / "llada-tiny")
    loaded = load_model_and_tokenizer("org/tiny-model")
    assert loaded.path == "org/tiny-model"
    assert loaded.model.get_input_embeddings().weight.shape == (68, 64)


def test_a_hub_id_whose_weights_are_not_all_cached_is_checked_once_loaded(tmp_path, monkeypatch) -> None:
    # online, with only config.json and the shard index cached: the weights would be downloaded by from_pretrained,
    # so there is nothing to read before it; the check must not refuse a model it cannot see
    folder = tmp_path / "partial"
    folder.mkdir()
    shutil.copy(GOLDEN / "llada-tiny" / "config.json", folder)
    index = {"weight_map": {"model.transformer.wte.weight": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    snapshot = hub_cache_with(tmp_path, monkeypatch, folder)
    assert cached_weights_folder("org/tiny-model") is None
    (snapshot / "model-00001-of-00002.safetensors").symlink_to(GOLDEN / "llada-tiny" / "model.safetensors")
    assert cached_weights_folder("org/tiny-model") == snapshot
    assert cached_weights_folder("not-cached/model") is None
    assert cached_weights_folder("not a valid id!") is None
