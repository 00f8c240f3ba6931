"""Offline tiny presets: built once, cached, reloadable, trainable, with the families' tokens and templates."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dlm.errors import ModelError
from dlm.loading import load_model_and_tokenizer
from dlm.presets import store
from dlm.presets.resolve import resolve_model_path
from dlm.presets.tiny import PRESETS, ensure_preset

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]
PRESET_FAMILY = {
    "tiny-llada": "llada",
    "tiny-llada-moe": "llada_moe",
    "tiny-dream": "dream",
    "tiny-bert": "bert",
    "tiny-a2d": "a2d",
    "tiny-bd3lm": "bd3lm",
    "tiny-ar": "ar",
    "tiny-sdar": "sdar",
    "tiny-llada2": "llada2",
}
PRESET_CLASS = {
    "tiny-llada": "LLaDAModelLM",
    "tiny-llada-moe": "LLaDAMoEModelLM",
    "tiny-dream": "DreamModel",
    "tiny-bert": "ModernBertForMaskedLM",
    "tiny-a2d": "LlamaForCausalLM",
    "tiny-bd3lm": "LlamaForCausalLM",
    "tiny-ar": "LlamaForCausalLM",
    "tiny-sdar": "SDARForCausalLM",
    "tiny-llada2": "LLaDA2MoeModelLM",
}
FAMILY_TOKENS = {
    "tiny-llada": [
        "<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|mdm_mask|>",
    ],
    "tiny-llada-moe": ["<|startoftext|>", "<|endoftext|>", "<role>", "</role>", "<|role_end|>", "<|mask|>"],
    "tiny-dream": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>", "<|beginoftext|>"],
    "tiny-bert": ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "[SYS]", "[/SYS]", "[Question]", "[/Question]",
                  "[Answer]", "[/Answer]"],
}  # fmt: skip


@pytest.fixture(scope="session")
def built(preset_workspace):
    return {name: ensure_preset(name, preset_workspace) for name in PRESETS}


def test_every_preset_builds_where_expected(built, preset_workspace):
    for name, folder in built.items():
        assert folder == preset_workspace / "models" / name
        assert json.loads((folder / "dlm_preset.json").read_text()) == {"preset": name, "version": 1}
        assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
            p.name for p in folder.iterdir()
        }
    assert sorted(p.name for p in (preset_workspace / "models").iterdir()) == sorted(PRESETS)  # no temporary leftovers


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_reloads_and_trains(built, preset_workspace, name):
    loaded = load_model_and_tokenizer(name, workspace=preset_workspace)
    model, tokenizer = loaded.model, loaded.tokenizer
    assert loaded.family.name == PRESET_FAMILY[name]
    assert type(model).__name__ == PRESET_CLASS[name]
    assert loaded.path == str(built[name])
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 2
    assert 1000 <= len(tokenizer) <= 2048
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    ids = tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=False)
    batch = torch.tensor([ids, ids])
    if loaded.family.is_diffusion:
        batch[:, 3::2] = loaded.special_ids.mask
    model.train()
    logits = model(input_ids=batch).logits
    assert logits.shape[:2] == batch.shape and logits.shape[-1] >= len(tokenizer)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.tensor([ids, ids]).flatten())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_second_call_does_not_rebuild(built, preset_workspace, monkeypatch):
    stamps = {name: (folder / "model.safetensors").stat().st_mtime_ns for name, folder in built.items()}

    def refuse(dst):
        raise AssertionError("rebuilt a cached preset")

    for name in PRESETS:
        monkeypatch.setitem(PRESETS, name, refuse)
        assert ensure_preset(name, preset_workspace) == built[name]
        assert (built[name] / "model.safetensors").stat().st_mtime_ns == stamps[name]


def test_incomplete_or_stale_preset_is_rebuilt(tmp_path):
    half = tmp_path / "models" / "tiny-bert"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # a folder without the marker, e.g. copied by hand mid-way
    folder = ensure_preset("tiny-bert", tmp_path)
    assert (folder / "model.safetensors").is_file()
    (folder / "dlm_preset.json").write_text(json.dumps({"preset": "tiny-bert", "version": 0}))
    ensure_preset("tiny-bert", tmp_path)
    assert json.loads((folder / "dlm_preset.json").read_text())["version"] == store.PRESET_VERSION
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny-bert"]


def test_build_is_deterministic(built, tmp_path):
    again = ensure_preset("tiny-llada", tmp_path)
    first, second = load_file(built["tiny-llada"] / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (again / "tokenizer.json").read_text() == (built["tiny-llada"] / "tokenizer.json").read_text()


@pytest.mark.parametrize("name", sorted(FAMILY_TOKENS))
def test_preset_special_tokens_are_single_tokens(built, preset_workspace, name):
    tokenizer = load_model_and_tokenizer(name, workspace=preset_workspace).tokenizer
    for token in FAMILY_TOKENS[name]:
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)], token
    text = "What is 12 + 30? Lily runs near the sea."
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_llada_ar_and_a2d_share_token_ids(built, preset_workspace):
    loaded = {n: load_model_and_tokenizer(n, workspace=preset_workspace) for n in ("tiny-llada", "tiny-ar", "tiny-a2d")}
    encodings = {n: lm.tokenizer.apply_chat_template(MESSAGES, return_dict=False) for n, lm in loaded.items()}
    assert encodings["tiny-llada"] == encodings["tiny-ar"] == encodings["tiny-a2d"]
    masks = {n: lm.special_ids.mask for n, lm in loaded.items()}
    assert masks["tiny-llada"] == masks["tiny-a2d"] == len(loaded["tiny-ar"].tokenizer)
    assert masks["tiny-ar"] is None


def test_resolve_model_path(built, preset_workspace, monkeypatch):
    assert resolve_model_path("tiny-dream", preset_workspace) == str(built["tiny-dream"])
    assert resolve_model_path("GSAI-ML/LLaDA-8B-Instruct", preset_workspace) == "GSAI-ML/LLaDA-8B-Instruct"
    with pytest.raises(ModelError, match="unknown tiny preset 'tiny-gpt'; choose one of: tiny-llada, tiny-dream"):
        resolve_model_path("tiny-gpt", preset_workspace)
    monkeypatch.setenv("DLM_WORKSPACE", str(preset_workspace))
    assert store.default_workspace() == Path(preset_workspace)
    assert resolve_model_path("tiny-bert") == str(built["tiny-bert"])


def _register(workspace: Path, source: Path, folder: str, **index: str) -> Path:
    """A full model saved and registered in `workspace` the way a trainer does (`LocalBackend.register_model`)."""
    from plugin_sdk.backends.local import LocalBackend
    from plugin_sdk.workspace import Workspace

    destination = workspace / "models" / folder
    destination.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file() and file.name != store.MARKER_FILE:
            (destination / file.name).write_bytes(file.read_bytes())
    ws = Workspace(workspace)
    backend = LocalBackend(ws, ws.next_job_id(), job_type="TRAIN", experiment="e")  # each model, its own job
    backend.register_model(destination, name=folder, architecture="LLaDAModelLM", json_data={}, provenance={})
    if index:
        data = json.loads((destination / "index.json").read_text())
        (destination / "index.json").write_text(json.dumps({**data, **index}))
    return destination


def test_a_model_registered_by_a_trainer_is_accepted_by_name(built, tmp_path):
    """The plugins resolve a registered name to its folder (`plugin_sdk.model_index`) before dlm loads it."""
    from dlm.eval_models import LoadOptions, check_models, model_specs
    from dlm.evaluation.settings import EvalSettings
    from plugin_sdk.model_index import model_location

    registered = _register(tmp_path, built["tiny-llada"], "tiny-llada_diffusion_adaptor")
    assert model_location("tiny-llada_diffusion_adaptor", tmp_path) == str(registered)
    assert model_location("TransformerLab/tiny-llada_diffusion_adaptor", tmp_path) == str(registered)
    loaded = load_model_and_tokenizer(model_location("tiny-llada_diffusion_adaptor", tmp_path), workspace=tmp_path)
    assert loaded.path == str(registered) and loaded.family.name == "llada"
    # the evaluator's check before loading (trainers load through load_model_and_tokenizer, above)
    located = model_location("tiny-llada_diffusion_adaptor", tmp_path)
    check_models(model_specs(located), EvalSettings(), LoadOptions(workspace=str(tmp_path)))
    # a name no preset and no registered model answers to is still named as such
    with pytest.raises(ModelError, match=f"unknown tiny preset 'tiny-llada_other'.*registered in {tmp_path}"):
        resolve_model_path(model_location("tiny-llada_other", tmp_path), tmp_path)
    assert model_location("my_sft", tmp_path) == "my_sft" == resolve_model_path("my_sft", tmp_path)  # a hub id
    assert model_location("tiny-llada", tmp_path) == "tiny-llada"  # presets are dlm's, not registered models


def test_an_ambiguous_registered_name_lists_the_matches(built, tmp_path):
    from plugin_sdk.errors import ParameterError
    from plugin_sdk.model_index import model_location

    first = _register(tmp_path, built["tiny-llada"], "sorted_sft")
    second = _register(tmp_path, built["tiny-llada"], "sorted_sft_v2", name="sorted_sft")
    with pytest.raises(ParameterError, match=f"model name 'sorted_sft' is ambiguous: 2 models .*: {first}, {second}"):
        model_location("sorted_sft", tmp_path)
    assert model_location("sorted_sft_v2", tmp_path) == str(second)
