import copy
import json
import pickle

import pytest

from plugin_sdk.errors import ParameterError
from plugin_sdk.params import Params, coerce_and_validate, read_raw_parameters

SCHEMA = {
    "batch_size": {"title": "Batch Size", "type": "integer", "default": 4, "minimum": 1, "maximum": 64},
    "learning_rate": {"type": "number", "default": 2e-5, "exclusiveMinimum": 0},
    "mask_prompt_loss": {"type": "boolean", "default": True},
    "method": {"type": "string", "enum": ["llada", "dream", "bert"], "default": "llada"},
    "targets": {"type": "array", "items": {"type": "string"}, "default": ["q_proj", "v_proj"]},
}


def problems_of(values, schema, **kwargs):
    with pytest.raises(ParameterError) as info:
        coerce_and_validate(values, schema, **kwargs)
    return str(info.value), info.value.problems


# ------------------------------------------------------------------------------------------------ reading sources


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_trainer_input_file(tmp_path):
    file = write(
        tmp_path / "plugin_input_7.json",
        json.dumps({"experiment": {"name": "alpha"}, "config": {"batch_size": "8", "job_id": 7, "foo": "x"}}),
    )
    raw = read_raw_parameters(["--plugin_dir", "/p", "--input_file", file, "--experiment_name", "alpha"])
    assert raw.origin == "input_file"
    assert raw.experiment == {"name": "alpha"}
    assert raw.values == {
        "batch_size": "8",
        "job_id": 7,
        "foo": "x",
        "plugin_dir": "/p",
        "experiment_name": "alpha",
        "input_file": file,
    }
    assert raw.files == [file]


def test_input_file_config_as_json_string(tmp_path):
    file = write(tmp_path / "in.json", json.dumps({"config": json.dumps({"batch_size": 3})}))
    assert read_raw_parameters(["--input_file", file]).values["batch_size"] == 3


def test_evaluator_arguments_with_input_file_without_config(tmp_path):
    file = write(tmp_path / "in.json", json.dumps({"experiment": {"id": 1}}))
    argv = ["--tasks", '["gsm8k", "mmlu"]', "--limit", "0.5", "--run_fast", "--mode=a=b", "--model_adapter", ""]
    argv += ["--input_file", file, "--model_name", "GSAI-ML/LLaDA-8B-Instruct", "--job_id", "12"]
    raw = read_raw_parameters(argv)
    assert raw.origin == "arguments"
    assert raw.experiment == {"id": 1}
    assert raw.values["tasks"] == '["gsm8k", "mmlu"]'
    assert raw.values["run_fast"] == "true"
    assert raw.values["mode"] == "a=b"
    assert raw.values["model_adapter"] == ""
    assert raw.values["model_name"] == "GSAI-ML/LLaDA-8B-Instruct"
    assert raw.values["job_id"] == "12"


def test_arguments_override_input_file_config(tmp_path):
    # The host's evaluator launch passes the form fields both in the file and as arguments.
    file = write(tmp_path / "in.json", json.dumps({"config": {"limit": 5, "tasks": ["a"]}}))
    raw = read_raw_parameters(["--limit", "7", "--input_file", file])
    assert raw.values["limit"] == "7"
    assert raw.values["tasks"] == ["a"]
    assert raw.origin == "input_file"


def test_flag_at_end_and_negative_value():
    raw = read_raw_parameters(["--seed", "-1", "--verbose"])
    assert raw.values == {"seed": "-1", "verbose": "true"}
    assert raw.origin == "arguments" and raw.experiment is None


def test_config_yaml_and_set_overrides(tmp_path):
    file = write(tmp_path / "run.yaml", "batch_size: 2\nlearning_rate: 1.0e-4\ntargets: [a, b]\n")
    raw = read_raw_parameters(["--config", file, "--set", "batch_size=16", "--set", "batch_size=32", "--set", "x="])
    assert raw.origin == "config"
    assert raw.values == {"batch_size": "32", "learning_rate": 1e-4, "targets": ["a", "b"], "x": ""}


def test_config_json_wrapped_like_input_file(tmp_path):
    file = write(tmp_path / "run.json", json.dumps({"experiment": {"name": "e"}, "config": {"batch_size": 1}}))
    raw = read_raw_parameters(["--config", file])
    assert raw.values == {"batch_size": 1}
    assert raw.experiment == {"name": "e"}


def test_empty_yaml_config(tmp_path):
    assert read_raw_parameters(["--config", write(tmp_path / "e.yml", "")]).values == {}


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad.json", '{\n  "a": 1,\n  "b": \n}', "bad.json: invalid JSON at line 4, column 1"),
        ("bad.yaml", "a: 1\nb: [1, 2\nc: 3\n", "bad.yaml: invalid YAML at line 3, column 2"),
    ],
)
def test_malformed_config_names_file_and_line(tmp_path, name, text, expected):
    with pytest.raises(ParameterError, match="invalid") as info:
        read_raw_parameters(["--config", write(tmp_path / name, text)])
    assert expected in str(info.value)


def test_malformed_input_file_names_line(tmp_path):
    file = write(tmp_path / "in.json", '{"config": {\n"a": 1,,\n}}')
    with pytest.raises(ParameterError, match=r"in\.json: invalid JSON at line 2, column 8"):
        read_raw_parameters(["--input_file", file])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "/nonexistent/run.yaml"], "parameter file /nonexistent/run.yaml does not exist"),
        (["--input_file", "/nonexistent/in.json"], "does not exist"),
        (["--config", "run.toml"], "must end with .yaml, .yml or .json"),
        (["stray"], "unexpected command-line argument 'stray'"),
        (["--a", "1", "2"], "unexpected command-line argument '2'"),
        (["--=1"], "has no name"),
        (["--set", "novalue"], "--set expects name=value, got 'novalue'"),
        (["--input_file", "a.json", "--config", "b.yaml"], "not both"),
    ],
)
def test_bad_arguments(argv, message):
    with pytest.raises(ParameterError, match=message.replace(".", r"\.").replace("(", r"\(")):
        read_raw_parameters(argv)


def test_input_file_must_be_an_object(tmp_path):
    with pytest.raises(ParameterError, match="expected a JSON object"):
        read_raw_parameters(["--input_file", write(tmp_path / "in.json", "[1]")])
    with pytest.raises(ParameterError, match="'config' must be an object, got list"):
        read_raw_parameters(["--input_file", write(tmp_path / "in.json", '{"config": [1]}')])


def test_config_file_must_be_a_mapping(tmp_path):
    with pytest.raises(ParameterError, match="expected a mapping"):
        read_raw_parameters(["--config", write(tmp_path / "c.yaml", "- a\n- b\n")])


# ------------------------------------------------------------------------------------------------ coercion


def test_defaults_fill_absent_keys_and_host_keys_are_kept():
    params = coerce_and_validate({"job_id": "3", "model_name": "m", "template_name": "x"}, SCHEMA)
    assert params == {
        "job_id": "3",
        "model_name": "m",
        "template_name": "x",
        "batch_size": 4,
        "learning_rate": 2e-5,
        "mask_prompt_loss": True,
        "method": "llada",
        "targets": ["q_proj", "v_proj"],
    }


def test_declared_parameter_without_default_is_none():
    assert coerce_and_validate({}, {"seed": {"type": "integer"}}) == {"seed": None}


@pytest.mark.parametrize(
    ("given", "expected"),
    [("4", 4), ("4.0", 4), (" 12 ", 12), ("-3", -3), ("1e3", 1000), (7, 7), (8.0, 8), ("+5", 5)],
)
def test_integer_coercion(given, expected):
    value = coerce_and_validate({"n": given}, {"n": {"type": "integer"}})["n"]
    assert value == expected and type(value) is int


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        ("4.5", "expected a whole number"),
        (4.5, "expected a whole number"),
        ("four", "expected an integer"),
        (True, "expected an integer, not a boolean"),
        ("inf", "expected an integer"),
        ([1], "expected an integer"),
    ],
)
def test_integer_refusals(given, rule):
    message, _ = problems_of({"n": given}, {"n": {"type": "integer"}})
    assert f"n: {rule}" in message and f"(got {given!r})" in message


@pytest.mark.parametrize(("given", "expected"), [("2e-05", 2e-5), ("0.1", 0.1), (".5", 0.5), (3, 3.0), ("-1", -1.0)])
def test_number_coercion(given, expected):
    value = coerce_and_validate({"x": given}, {"x": {"type": "number"}})["x"]
    assert value == expected and type(value) is float


@pytest.mark.parametrize(("given", "rule"), [("abc", "expected a number"), ("nan", "finite"), (False, "boolean")])
def test_number_refusals(given, rule):
    message, _ = problems_of({"x": given}, {"x": {"type": "number"}})
    assert rule in message


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("True", True),
        ("true", True),
        ("1", True),
        ("yes", True),
        ("ON", True),
        (" on ", True),
        ("False", False),
        ("false", False),
        ("0", False),
        ("no", False),
        ("off", False),
        (True, True),
        (0, False),
        (1, True),
    ],
)
def test_boolean_coercion(given, expected):
    assert coerce_and_validate({"b": given}, {"b": {"type": "boolean"}})["b"] is expected


@pytest.mark.parametrize("given", ["maybe", "2", 2, "tru"])
def test_boolean_refusals(given):
    message, _ = problems_of({"b": given}, {"b": {"type": "boolean"}})
    assert "b: expected true or false" in message


@pytest.mark.parametrize("given", ["", "None", "null", None])
def test_unset_markers_take_the_default_for_non_strings(given):
    schema = {"b": {"type": "boolean", "default": True}, "n": {"type": "integer", "default": 3}}
    assert coerce_and_validate({"b": given, "n": given}, schema) == {"b": True, "n": 3}


def test_empty_string_for_an_enum_string_takes_the_default():
    schema = {"m": {"type": "string", "enum": ["a", "b"], "default": "b"}, "e": {"type": "string", "enum": ["", "x"]}}
    assert coerce_and_validate({"m": "", "e": ""}, schema) == {"m": "b", "e": ""}


def test_strings_are_kept_exactly():
    schema = {"s": {"type": "string"}, "t": {"type": "string"}, "u": {"type": "string"}, "v": {"type": "string"}}
    params = coerce_and_validate({"s": "None", "t": "", "u": 5, "v": True}, schema)
    assert params == {"s": "None", "t": "", "u": "5", "v": "true"}
    message, _ = problems_of({"s": {"a": 1}}, {"s": {"type": "string"}})
    assert "expected text, not a dict" in message


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ('["a", "b"]', ["a", "b"]),
        ("a, b ,c", ["a", "b", "c"]),
        ("a", ["a"]),
        (["x"], ["x"]),
        (("x", "y"), ["x", "y"]),
        ("[]", []),
    ],
)
def test_array_of_strings(given, expected):
    assert coerce_and_validate({"a": given}, {"a": {"type": "array", "items": {"type": "string"}}})["a"] == expected


def test_array_items_are_coerced_by_item_type():
    schema = {"a": {"type": "array", "items": {"type": "integer", "minimum": 1}}}
    assert coerce_and_validate({"a": "1, 2,3"}, schema)["a"] == [1, 2, 3]
    assert coerce_and_validate({"a": "[1, 2.0]"}, schema)["a"] == [1, 2]
    message, problems = problems_of({"a": "1, x, 0"}, schema)
    assert problems == [
        "a: item 1 ('x') expected an integer (got '1, x, 0')",
        "a: item 2 ('0') must be at least 1 (got '1, x, 0')",
    ]


def test_array_refusals():
    schema = {"a": {"type": "array", "items": {"type": "string"}}}
    message, _ = problems_of({"a": '["a", '}, schema)
    assert "a: is not a valid JSON list" in message
    message, _ = problems_of({"a": 5}, schema)
    assert "expected a list, not a int" in message


def test_enum_checked_after_coercion():
    schema = {"k": {"type": "integer", "enum": [1, 2, 4]}, "m": {"type": "string", "enum": ["llada", "dream"]}}
    assert coerce_and_validate({"k": "4", "m": "dream"}, schema) == {"k": 4, "m": "dream"}
    message, problems = problems_of({"k": "3", "m": "LLaDA"}, schema)
    assert problems == [
        "k: must be one of 1, 2, 4 (got '3')",
        "m: must be one of 'llada', 'dream' (got 'LLaDA')",
    ]


def test_boolean_is_not_an_enum_number():
    message, _ = problems_of({"k": True}, {"k": {"enum": [1, 2]}})
    assert "must be one of 1, 2" in message


@pytest.mark.parametrize(("given", "ok"), [("0.3", True), ("0.35", False), ("1.2", True), ("0.30000001", False)])
def test_multiple_of_with_float_tolerance(given, ok):
    schema = {"x": {"type": "number", "multipleOf": 0.1}}
    if ok:
        assert coerce_and_validate({"x": given}, schema)["x"] == float(given)
    else:
        message, _ = problems_of({"x": given}, schema)
        assert f"x: must be a multiple of 0.1 (got '{given}')" in message


def test_integer_multiple_of():
    schema = {"n": {"type": "integer", "multipleOf": 8}}
    assert coerce_and_validate({"n": "64"}, schema)["n"] == 64
    assert "multiple of 8" in problems_of({"n": "60"}, schema)[0]


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        ("0", "must be at least 1"),
        ("65", "must be at most 64"),
    ],
)
def test_minimum_maximum(given, rule):
    message, _ = problems_of({"batch_size": given}, SCHEMA)
    assert f"batch_size (Batch Size): {rule} (got '{given}')" in message


def test_exclusive_bounds():
    schema = {"p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}}
    assert "must be greater than 0" in problems_of({"p": "0"}, schema)[0]
    assert "must be less than 1" in problems_of({"p": 1}, schema)[0]
    assert coerce_and_validate({"p": "0.5"}, schema)["p"] == 0.5


def test_required_missing_or_empty():
    schema = {
        "model": {"type": "string", "required": True},
        "name": {"type": "string", "required": True},
        "n": {"type": "integer", "required": True},
        "tags": {"type": "array", "items": {"type": "string"}, "required": True},
        "with_default": {"type": "integer", "required": True, "default": 2},
    }
    message, problems = problems_of({"name": "", "n": "", "tags": "[]"}, schema)
    assert problems == [
        "model: is required but was not given",
        "name: is required but is empty (got '')",
        "n: is required but was not given",
        "tags: is required but is empty (got '[]')",
    ]


def test_every_problem_in_one_message():
    values = {"batch_size": "0", "learning_rate": "fast", "mask_prompt_loss": "perhaps", "method": "gpt"}
    message, problems = problems_of(values, SCHEMA)
    assert message.startswith("Invalid parameters (4 problems):\n")
    assert message.splitlines()[1:] == [
        "  - batch_size (Batch Size): must be at least 1 (got '0')",
        "  - learning_rate: expected a number such as 0.1 or 2e-05 (got 'fast')",
        "  - mask_prompt_loss: expected true or false (also accepted: yes/no, on/off, 1/0) (got 'perhaps')",
        "  - method: must be one of 'llada', 'dream', 'bert' (got 'gpt')",
    ]
    assert len(problems) == 4


def test_a_bad_default_is_reported_as_such():
    message, _ = problems_of({}, {"n": {"type": "integer", "default": 0, "minimum": 1}})
    assert "n: must be at least 1 (the default in index.json is 0)" in message
    assert message.startswith("Invalid parameters (1 problem):")


def test_host_values_as_strings_end_to_end(tmp_path):
    argv = ["--batch_size", "8", "--learning_rate", "2e-05", "--mask_prompt_loss", "False", "--targets", "q,k"]
    argv += ["--job_id", "5", "--model_name", "m", "--dataset_name", "d", "--run_sweeps", "false"]
    params = coerce_and_validate(read_raw_parameters(argv).values, SCHEMA)
    assert params.mask_prompt_loss is False
    assert (params.batch_size, params.learning_rate, params.targets) == (8, 2e-5, ["q", "k"])
    assert (params.job_id, params.model_name, params.dataset_name, params.run_sweeps) == ("5", "m", "d", "false")


# ------------------------------------------------------------------------------------------------ aliases


def test_aliases_map_to_canonical_names():
    schema = {"mc_samples": {"type": "integer", "default": 8}}
    params = coerce_and_validate({"diffusion_samples": "16"}, schema, aliases={"diffusion_samples": "mc_samples"})
    assert params == {"mc_samples": 16}


def test_alias_and_canonical_with_same_value_are_fine():
    schema = {"mc_samples": {"type": "integer"}}
    values = {"diffusion_samples": "16", "mc_samples": 16}
    assert coerce_and_validate(values, schema, aliases={"diffusion_samples": "mc_samples"}) == {"mc_samples": 16}


def test_alias_conflict_is_reported():
    schema = {"mc_samples": {"type": "integer"}}
    values = {"diffusion_samples": "16", "mc_samples": "8"}
    message, _ = problems_of(values, schema, aliases={"diffusion_samples": "mc_samples"})
    assert "mc_samples: given twice under different names (diffusion_samples='16' and mc_samples='8')" in message


def test_dashed_spelling_is_accepted():
    assert coerce_and_validate({"batch-size": "2"}, SCHEMA)["batch_size"] == 2
    with pytest.raises(ParameterError, match="not-declared: is not a parameter"):
        coerce_and_validate({"not-declared": "2"}, SCHEMA)


# ------------------------------------------------------------------------------------------------ Params


def test_params_attribute_access():
    params = Params(learning_rate=0.1, batch_size=4)
    assert params.learning_rate == 0.1
    assert params.get("missing") is None
    params.seed = 3
    assert params["seed"] == 3
    del params.seed
    assert "seed" not in params
    with pytest.raises(AttributeError, match=r"no parameter named 'learning_rat'; did you mean 'learning_rate'\?"):
        _ = params.learning_rat
    with pytest.raises(AttributeError, match=r"params.get\('zzz'\)"):
        _ = params.zzz
    with pytest.raises(AttributeError):
        del params.zzz


def test_params_copy_and_pickle():
    params = Params(a=1, b=[1, 2])
    assert pickle.loads(pickle.dumps(params)) == params
    clone = copy.deepcopy(params)
    assert isinstance(clone, Params) and clone == params and clone.b is not params.b
    assert not hasattr(params, "__missing_dunder__")


@pytest.mark.parametrize("cleared", ["", " ", "[]", []])
def test_an_empty_list_turns_a_list_parameter_off(cleared):
    # The workbench posts a cleared list as "": it must not bring the default back.
    schema = {"metrics": {"type": "array", "items": {"type": "string"}, "default": ["perplexity"]}}
    assert coerce_and_validate({"metrics": cleared}, schema) == {"metrics": []}
    assert coerce_and_validate({"metrics": "null"}, schema) == {"metrics": ["perplexity"]}


def test_the_item_entries_of_a_posted_list():
    schema = {"mask_ratios": {"type": "array", "items": {"type": "number"}}, "tags": {"type": "string"}}
    values = {"mask_ratios-0": "0.15", "mask_ratios-1": "0.5", "mask_ratios": "0.15,0.5"}
    assert coerce_and_validate(values, schema) == {"mask_ratios": [0.15, 0.5], "tags": None}
    # Only a list parameter's items are gathered: another `<key>-<i>` is an unknown key, refused by name.
    with pytest.raises(ParameterError, match="tags-0: is not a parameter of this plugin"):
        coerce_and_validate({"tags-0": "kept"}, schema)
    # Without the whole list, the items in index order are the list (older RJSF: no dash).
    assert coerce_and_validate({"mask_ratios-1": "0.5", "mask_ratios-0": "0.15"}, schema)["mask_ratios"] == [0.15, 0.5]
    assert coerce_and_validate({"mask_ratios1": "0.5", "mask_ratios0": "0.25"}, schema)["mask_ratios"] == [0.25, 0.5]


def test_a_checkbox_position_instead_of_a_name_is_explained():
    schema = {"metrics": {"type": "array", "items": {"type": "string", "enum": ["perplexity", "speed"]}}}
    message, _ = problems_of({"metrics": "1"}, schema)
    assert (
        "metrics: item 0 ('1') must be one of 'perplexity', 'speed'; '1' looks like the position of option " in message
    )
    assert "'speed'" in message
    assert message.count("looks like the position") == 1
    message, _ = problems_of({"metrics": "7"}, schema)
    assert "looks like the position" not in message
    message, _ = problems_of({"dtype": "2"}, {"dtype": {"type": "string", "enum": ["auto", "float32", "bfloat16"]}})
    assert (
        "dtype: must be one of 'auto', 'float32', 'bfloat16'; '2' looks like the position of option 'bfloat16'"
        in message
    )
