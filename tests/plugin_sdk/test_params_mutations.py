"""Behaviour of plugin_sdk.params that mutation testing (mutmut) found unchecked: each test fails for a small planted
change a user could hit (a bound off by one, a coercion that accepts what it should refuse, an error that no longer
names the field or the file)."""

import json
import re

import pytest

from plugin_sdk.errors import ParameterError
from plugin_sdk.params import Params, check_value, coerce_and_validate, read_raw_parameters


def problems_of(values, schema):
    with pytest.raises(ParameterError) as info:
        coerce_and_validate(values, schema)
    return str(info.value), info.value.problems


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------------ reading sources


def test_set_splits_at_the_first_equals_sign():
    raw = read_raw_parameters(["--set", "answer_regex=a=b"])
    assert raw.values == {"answer_regex": "a=b"}


def test_a_lone_double_dash_is_refused_as_unexpected():
    with pytest.raises(ParameterError, match="unexpected command-line argument '--'"):
        read_raw_parameters(["--"])


def test_input_file_and_config_together_are_refused(tmp_path):
    job = write(tmp_path / "job.json", "{}")
    config = write(tmp_path / "c.yaml", "a: 1\n")
    with pytest.raises(
        ParameterError, match=r"^use either --input_file \(host launch\) or --config \(standalone run\), not both$"
    ):
        read_raw_parameters(["--input_file", job, "--config", config])


def test_input_file_without_a_json_suffix_is_read_as_json(tmp_path):
    # the host names its input files freely; only --config files must say their format
    job = write(tmp_path / "job_input", json.dumps({"config": {"steps": "3"}}))
    raw = read_raw_parameters(["--input_file", job])
    assert raw.values == {"steps": "3", "input_file": job}
    assert raw.files == [job]


def test_input_file_experiment_of_the_wrong_type_names_file_and_type(tmp_path):
    job = write(tmp_path / "job.json", json.dumps({"experiment": [1]}))
    with pytest.raises(ParameterError, match=r"job\.json: 'experiment' must be an object, got list"):
        read_raw_parameters(["--input_file", job])


def test_input_file_config_of_the_wrong_type_names_the_file(tmp_path):
    job = write(tmp_path / "job.json", json.dumps({"config": [1]}))
    with pytest.raises(ParameterError, match=r"job\.json: 'config' must be an object, got list"):
        read_raw_parameters(["--input_file", job])


def test_input_file_config_as_an_empty_string_is_no_config(tmp_path):
    job = write(tmp_path / "job.json", json.dumps({"experiment": {"name": "e"}, "config": "  "}))
    raw = read_raw_parameters(["--input_file", job])
    assert raw.values == {"input_file": job}
    assert raw.origin == "arguments"


def test_input_file_config_as_a_bad_json_string_names_the_file(tmp_path):
    job = write(tmp_path / "job.json", json.dumps({"config": "{oops"}))
    with pytest.raises(ParameterError, match=r"job\.json: 'config' is a string that is not valid JSON"):
        read_raw_parameters(["--input_file", job])


def test_config_files_are_listed_and_an_earlier_experiment_is_kept(tmp_path):
    first = write(tmp_path / "a.json", json.dumps({"config": {"steps": 1}, "experiment": {"name": "e1"}}))
    second = write(tmp_path / "b.json", json.dumps({"config": {"steps": 2}}))
    raw = read_raw_parameters(["--config", first, "--config", second])
    assert raw.files == [first, second]
    assert raw.experiment == {"name": "e1"}
    assert raw.values == {"steps": 2}


def test_a_key_set_twice_in_a_config_file_names_the_file(tmp_path):
    config = write(tmp_path / "twice.yaml", "model_name_or_path: a\nmodel:\n  model_name_or_path: b\n")
    with pytest.raises(ParameterError, match=r"twice\.yaml: model_name_or_path is set twice"):
        read_raw_parameters(["--config", config])


def test_a_parameter_file_that_is_a_folder_is_named(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ParameterError, match=r"parameter file .*dir\.yaml is not a file"):
        read_raw_parameters(["--config", str(tmp_path / "dir.yaml")])


def test_a_parameter_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "latin.yaml").write_bytes(b"note: caf\xe9\n")
    with pytest.raises(ParameterError, match=r"cannot read parameter file .*latin\.yaml"):
        read_raw_parameters(["--config", str(tmp_path / "latin.yaml")])


def test_an_over_long_number_in_a_json_file_names_the_file(tmp_path):
    config = write(tmp_path / "long.json", '{"steps": ' + "9" * 5000 + "}")
    with pytest.raises(ParameterError, match=r"long\.json: .*digits"):
        read_raw_parameters(["--config", config])


# ------------------------------------------------------------------------------------------------ coercion


INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}


@pytest.mark.parametrize(
    ("value", "prop", "rule"),
    [
        (True, NUMBER, "expected a number, not a boolean"),
        ("inf", NUMBER, "expected a finite number"),
        ([1], NUMBER, "expected a number"),
        ("9" * 5000, INTEGER, "expected an integer, got "),
        ("[" + "9" * 5000 + "]", {"type": "array"}, "holds "),
    ],
)
def test_refusal_messages(value, prop, rule):
    _, broken = check_value(value, prop)
    assert len(broken) == 1 and broken[0].startswith(rule)


def test_false_becomes_the_string_false():
    assert check_value(False, {"type": "string"}) == ("false", [])
    assert check_value(True, {"type": "string"}) == ("true", [])


def test_a_lone_surrogate_is_refused():
    _, broken = check_value("a\ud800b", {"type": "string"})
    assert len(broken) == 1 and "lone surrogate" in broken[0]


def test_an_array_without_an_item_schema_keeps_its_items():
    assert check_value("a, b", {"type": "array"}) == (["a", "b"], [])


def test_a_declared_name_that_looks_like_a_list_item_is_its_own_parameter():
    schema = {"beta": {"type": "array", "items": {"type": "number"}}, "beta2": {"type": "number", "default": 0.9}}
    assert coerce_and_validate({"beta2": "0.999"}, schema) == {"beta": None, "beta2": 0.999}


def test_an_enum_that_is_not_a_list_is_not_checked():
    assert check_value("x", {"type": "string", "enum": "not a list"}) == ("x", [])


def test_a_zero_multiple_of_is_ignored():
    assert check_value(3, {"type": "integer", "multipleOf": 0}) == (3, [])


def test_an_integer_checked_against_a_decimal_step():
    assert check_value("1", {"type": "integer", "multipleOf": 0.1}) == (1, [])


# ------------------------------------------------------------------------------------------------ error messages


def test_two_problems_are_counted_as_two():
    schema = {"a": {"type": "integer"}, "b": {"type": "integer"}}
    message, problems = problems_of({"a": "x", "b": "y"}, schema)
    assert message.startswith("Invalid parameters (2 problems):") and len(problems) == 2


def test_an_option_position_past_the_last_option_gets_no_hint():
    schema = {"method": {"type": "string", "enum": ["a", "b", "c"]}}
    _, problems = problems_of({"method": "3"}, schema)
    assert problems == ["method: must be one of 'a', 'b', 'c' (got '3')"]
    _, problems = problems_of({"method": "2"}, schema)
    assert problems[0].endswith("hidden inputs: give the option names (got '2')")


@pytest.mark.parametrize(("title", "label"), [("lr", "lr"), ("", "lr"), (None, "lr"), ("Rate", "lr (Rate)")])
def test_the_label_adds_only_a_different_title(title, label):
    _, problems = problems_of({"lr": "x"}, {"lr": {"type": "number", "title": title}})
    assert problems[0].startswith(f"{label}: expected")


@pytest.mark.parametrize(("length", "shown_whole"), [(120, True), (121, False)])
def test_long_values_are_cut_after_120_characters(length, shown_whole):
    value = "x" * (length - 2)  # its repr adds two quotes
    _, problems = problems_of({"n": value}, {"n": {"type": "integer"}})
    if shown_whole:
        assert problems == [f"n: expected an integer (got {value!r})"]
    else:
        assert problems == [f"n: expected an integer (got {repr(value)[:100]}... (121 characters))"]


# ------------------------------------------------------------------------------------------------ Params


def test_a_missing_attribute_names_at_most_three_close_matches():
    params = Params(steps_a=1, steps_b=2, steps_c=3, steps_d=4)
    with pytest.raises(AttributeError) as info:
        _ = params.steps_
    suggestions = re.search(r"did you mean (.*)\?", str(info.value)).group(1).split(", ")
    assert len(suggestions) == 3 and all(re.fullmatch(r"'steps_[a-d]'", s) for s in suggestions)


def test_a_missing_attribute_without_close_matches_has_no_hint():
    with pytest.raises(AttributeError) as info:
        _ = Params(steps=1).learning_rate
    assert str(info.value) == (
        "no parameter named 'learning_rate' (use params.get('learning_rate') for an optional value)"
    )


def test_deleting_a_missing_attribute_names_it():
    with pytest.raises(AttributeError, match="no parameter named 'steps'"):
        del Params().steps


def test_an_undeclared_dashed_key_is_kept_under_its_own_name():
    # only a dashed spelling of a declared name is read as that name; other keys pass through unchanged
    assert coerce_and_validate({"my-key": "1"}, {"a": {"type": "integer"}}) == {"my-key": "1", "a": None}
