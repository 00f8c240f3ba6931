"""Names, aliases and config files: every key is read as the user meant it, or refused naming it."""

from pathlib import Path

import pytest

from plugin_sdk.config_keys import HOST_KEYS, is_secret, looks_like_credential, redact, without_secret_arguments
from plugin_sdk.errors import ParameterError
from plugin_sdk.manifest import load_manifest
from plugin_sdk.params import coerce_and_validate, read_raw_parameters

REPO = Path(__file__).resolve().parents[2]

SFT = load_manifest(REPO / "plugins" / "diffusion_llm_trainer")
DPO = load_manifest(REPO / "plugins" / "diffusion_dpo_trainer")


def validate(values, manifest=SFT):
    return coerce_and_validate(values, manifest["parameters"], aliases=manifest.get("parameter_aliases"))


def error_of(values, manifest=SFT):
    with pytest.raises(ParameterError) as info:
        validate(values, manifest)
    return str(info.value)


def test_unknown_key_is_refused_naming_it_and_the_closest_parameters():
    message = error_of({"learning_rat": "1e-4"})
    assert "learning_rat: is not a parameter" in message
    assert "closest parameters: learning_rate" in message


def test_alias_names_its_target_as_closest():
    message = error_of({"per_device_batch_size": "2"})
    assert "batch_size" in message


def test_every_host_key_is_accepted_and_kept():
    values = {key: "x" for key in HOST_KEYS}
    params = validate(values)
    assert all(params[key] == "x" for key in HOST_KEYS)


def test_host_internal_and_secret_keys_are_accepted():
    params = validate({"_config": {}, "hf_token": "hf_x", "wandbApiKey": "k"})
    assert params["hf_token"] == "hf_x"


@pytest.mark.parametrize(
    ("alias", "value", "name", "expected"),
    [
        ("per_device_train_batch_size", "1", "batch_size", 1),
        ("max_steps", "7", "train_steps", 7),
        ("model_name_or_path", "tiny-llada", "model_name", "tiny-llada"),
        ("target_modules", ["q_proj", "v_proj"], "lora_target_modules", "q_proj,v_proj"),
        ("lr_scheduler_type", "linear", "learning_rate_schedule", "linear"),
        ("max_seq_length", "64", "max_length", 64),
    ],
)
def test_alias_sets_its_parameter(alias, value, name, expected):
    assert validate({alias: value})[name] == expected


def test_preference_data_path_names_the_dpo_dataset():
    assert validate({"preference_data_path": "pairs.jsonl"}, DPO)["dataset"] == "pairs.jsonl"


def test_dataset_name_is_the_hosts_dataset_key():
    assert validate({"dataset_name": "d"})["dataset_name"] == "d"


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [
        ({"bf16": "true"}, "bfloat16"),
        ({"fp16": True}, "float16"),
        ({"use_mixed_precision": "yes"}, "bfloat16"),
        ({"bf16": False, "fp16": "false"}, "float32"),
        ({"bf16": True, "fp16": False}, "bfloat16"),
    ],
)
def test_precision_flags_set_dtype(flags, dtype):
    assert validate(flags)["dtype"] == dtype


def test_conflicting_precision_flags_are_refused():
    assert "bf16=true and fp16=true" in error_of({"bf16": True, "fp16": True})
    assert "dtype: given as 'float32'" in error_of({"bf16": True, "dtype": "float32"})


def test_alias_and_canonical_name_with_different_values_are_refused():
    assert "given twice under different names" in error_of({"max_steps": "5", "train_steps": "6"})


# ------------------------------------------------------------------------------------------------ files


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_config_file_is_a_spelling_of_config(tmp_path):
    path = write(tmp_path / "c.yaml", "batch_size: 2\n")
    assert read_raw_parameters(["--config_file", path]).values == {"batch_size": 2}


def test_nested_blocks_are_flattened(tmp_path):
    text = "model:\n  model_name_or_path: tiny-llada\ntraining:\n  per_device_train_batch_size: 1\n  max_steps: 3\n"
    raw = read_raw_parameters(["--config", write(tmp_path / "c.yaml", text)])
    params = validate(raw.values)
    assert (params.model_name, params.batch_size, params.train_steps) == ("tiny-llada", 1, 3)


def test_a_key_in_two_blocks_is_refused(tmp_path):
    path = write(tmp_path / "c.yaml", "a:\n  seed: 1\nb:\n  seed: 2\n")
    with pytest.raises(ParameterError, match=r"seed is set twice \(a and b\)"):
        read_raw_parameters(["--config", path])


def test_duplicate_yaml_key_is_refused_with_both_lines(tmp_path):
    path = write(tmp_path / "c.yaml", "seed: 1\nbatch_size: 2\nseed: 3\n")
    with pytest.raises(ParameterError, match=r"c.yaml: seed is given twice, at lines 1 and 3"):
        read_raw_parameters(["--config", path])


def test_duplicate_key_inside_a_block_is_refused(tmp_path):
    path = write(tmp_path / "c.yaml", "training:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(ParameterError, match=r"lines 2 and 3"):
        read_raw_parameters(["--config", path])


@pytest.mark.parametrize("word", ["no", "off", "No"])
def test_unquoted_no_in_yaml_is_the_word_for_a_string_enum(tmp_path, word):
    path = write(tmp_path / "c.yaml", f"eval_strategy: {word}\n")
    values = read_raw_parameters(["--config", path]).values
    assert values == {"eval_strategy": word}
    if word == "no":
        assert validate(values).eval_strategy == "no"


def test_unquoted_yes_no_still_set_booleans(tmp_path):
    path = write(tmp_path / "c.yaml", "lora: no\nmask_prompt_loss: on\n")
    params = validate(read_raw_parameters(["--config", path]).values)
    assert (params.lora, params.mask_prompt_loss) == (False, True)


def test_yaml_true_false_stay_booleans(tmp_path):
    path = write(tmp_path / "c.yaml", "lora: false\nseed: 3\n")
    assert read_raw_parameters(["--config", path]).values == {"lora": False, "seed": 3}


# ------------------------------------------------------------------------------------------------ secrets


@pytest.mark.parametrize(
    "name",
    ["hf_token", "wandb_api_key", "hfToken", "HF_TOKEN", "wandbApiKey", "apikey", "db-password", "secret"]
    + ["hftoken", "wandbkey", "hub_passphrase", "HubPassphrase", "dbpassword", "authtoken", "client_secrets", "auth"],
)
def test_secret_names_in_any_case_style(name):
    assert is_secret(name)


@pytest.mark.parametrize(
    "name",
    ["max_new_tokens", "num_tokens", "keyword", "tokenizer_name", "monkey", "token_dtype", "pad_token_id", "keys"],
)
def test_ordinary_names_are_not_secrets(name):
    assert not is_secret(name)


@pytest.mark.parametrize("value", ["hf_" + "a1" * 17, "sk-" + "x" * 40, "ghp_" + "Z" * 36, "AKIAABCDEFGHIJKLMNOP"])
def test_a_value_in_a_tokens_form_is_a_secret_under_any_name(value):
    assert looks_like_credential(value)
    assert redact({"note": value, "seed": 1}) == {"seed": 1}


@pytest.mark.parametrize("value", ["hf_short", "tiny-llada", "sk-", 12, None, "hf_internal_testing/tiny-model"])
def test_ordinary_values_are_not_secrets(value):
    assert not looks_like_credential(value)


def test_secret_arguments_are_dropped_from_a_command_line():
    argv = ["--seed", "1", "--hftoken", "v1", "--hub_passphrase=v2", "--flag", "--note", "hf_" + "b" * 34, "--x=1"]
    assert without_secret_arguments(argv) == ["--seed", "1", "--flag", "--x=1"]


def test_redact_drops_secrets_only():
    assert redact({"hfToken": "x", "seed": 1, "max_new_tokens": 2}) == {"seed": 1, "max_new_tokens": 2}
