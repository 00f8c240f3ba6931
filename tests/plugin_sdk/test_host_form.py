"""Every plugin form, as the plugin-era workbench submits it, reaches the plugin as the intended parameters."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from plugin_sdk.errors import ParameterError
from plugin_sdk.manifest import DISPATCHED_TRAIN_TYPES, EVALS_TYPES, load_manifest
from plugin_sdk.params import coerce_and_validate, read_raw_parameters
from tests.host_form import host_eval_arguments, host_submission, js_string, widget_of

REPO = Path(__file__).resolve().parents[2]
PLUGINS = sorted(p.parent for p in (REPO / "plugins").glob("*/index.json"))
FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "host_form").glob("*.json"))
SCENARIOS = json.loads((Path(__file__).parents[1] / "browser" / "scenarios.json").read_text())


def mode_of(manifest: dict) -> str:
    return "eval" if manifest["type"] == "evaluator" else "train"


def recorded(fixture: Path) -> tuple[dict, dict]:
    record = json.loads(fixture.read_text())
    manifest = load_manifest(REPO / "plugins" / record["plugin"])
    for key in record.get("drop_ui", []):
        del manifest["parameters_ui"][key]
    return record, manifest


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2e-05, "0.00002"),
        (5e-07, "5e-7"),
        (1.0, "1"),
        (0.0, "0"),
        (-0.25, "-0.25"),
        (1e21, "1e+21"),
        (123.0, "123"),
        (1.5e-6, "0.0000015"),
        (1e-7, "1e-7"),
        (True, "true"),
        ([0.15, 0.5], "0.15,0.5"),
        ([], ""),
        ("a", "a"),
    ],
)
def test_js_string_is_javascripts(value, text):
    assert js_string(value) == text


def test_every_browser_recording_is_covered():
    # A fixture for each scenario of the browser check, so that CI compares the helper with the browser's truth.
    names = {f"{plugin}-{s['name']}.json" for plugin, scenarios in SCENARIOS.items() for s in scenarios}
    assert {f.name for f in FIXTURES} == names


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.stem)
def test_helper_matches_the_browser(fixture):
    record, manifest = recorded(fixture)
    assert host_submission(manifest, record["mode"], record["edits"]) == record["submitted"]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.stem)
def test_the_browser_submission_reaches_the_plugin_as_intended(fixture):
    record, manifest = recorded(fixture)
    params = coerce_and_validate(record["submitted"], manifest["parameters"], aliases=manifest.get("parameter_aliases"))
    intended = {key: prop.get("default") for key, prop in manifest["parameters"].items()}
    if not record.get("drop_ui"):  # the workbench's own select loses the choice: see test_no_select_widget
        intended |= record["edits"] | record.get("intended", {})
    assert {key: params[key] for key in intended} == intended
    assert not [name for name in params if name.rpartition("-")[0] in manifest["parameters"]]


def edit_for(key: str, manifest: dict) -> tuple:
    """A typical change a person makes to a field, as the form holds it, and the parameter value it means."""
    prop = manifest["parameters"][key]
    kind = prop["type"]
    if kind == "boolean":
        return not prop["default"], not prop["default"]
    if "enum" in prop:
        choice = next(choice for choice in prop["enum"] if choice != prop["default"])
        return choice, choice
    if kind == "array" and widget_of(key, manifest) == "input":
        return "", []  # the text box cleared
    if kind == "array":
        options = prop["items"].get("enum")
        return (options[:1], options[:1]) if options else ([], [])  # one option, or cleared
    if kind == "string":
        return "edited", "edited"
    step = prop.get("multipleOf", 1 if kind == "integer" else 0.5)
    value = (prop["default"] or 0) + step
    if value > prop.get("maximum", math.inf):
        value = (prop["default"] + prop.get("minimum", 0)) / 2  # between the default and the bound below
    if kind == "integer" and value != int(value):
        value = prop["default"] - 1
    value = int(value) if kind == "integer" else float(value)
    return value, value


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_every_field_untouched_and_edited_reaches_the_plugin(plugin):
    manifest = load_manifest(plugin)
    parameters, aliases = manifest["parameters"], manifest.get("parameter_aliases")
    defaults = {key: prop.get("default") for key, prop in parameters.items()}
    untouched = coerce_and_validate(host_submission(manifest, mode_of(manifest)), parameters, aliases=aliases)
    assert {key: untouched[key] for key in parameters} == defaults
    for key in parameters:
        held, meant = edit_for(key, manifest)
        submitted = host_submission(manifest, mode_of(manifest), {key: held})
        params = coerce_and_validate(submitted, parameters, aliases=aliases)
        assert {k: params[k] for k in parameters} == defaults | {key: meant}, key


def test_evaluator_arguments_read_back():
    # An evaluator gets the submitted values as --key value arguments, lists as JSON.
    manifest = load_manifest(REPO / "plugins" / "diffusion_evaluator")
    submitted = host_submission(manifest, "eval", {"metrics": [], "tasks": ["gsm8k"], "limit": 0.5})
    argv = [part for key, value in submitted.items() for part in (f"--{key}", _argument(value))]
    params = coerce_and_validate(read_raw_parameters(argv).values, manifest["parameters"])
    assert (params["metrics"], params["tasks"], params["limit"]) == ([], ["gsm8k"], 0.5)
    assert params["mask_ratios"] == [0.15, 0.5, 0.85]


def _argument(value) -> str:
    return json.dumps(value) if isinstance(value, list) else js_string(value)


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_no_select_widget(plugin):
    # The workbench's select widget drops the choice (see the select_widget recordings): single choices are radios.
    manifest = load_manifest(plugin)
    assert [key for key in manifest["parameters"] if widget_of(key, manifest) == "select"] == []


def evaluator_params(manifest: dict, edits: dict, folder: Path) -> dict:
    """The parameters the evaluator gets when the host starts it with the evaluation modal's submission."""
    argv = host_eval_arguments(host_submission(manifest, "eval", edits), folder / "plugin_input.json")
    params = coerce_and_validate(
        read_raw_parameters(argv).values, manifest["parameters"], aliases=manifest.get("parameter_aliases")
    )
    return {key: params[key] for key in manifest["parameters"]}


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_the_workbench_starts_every_plugin(plugin, tmp_path):
    manifest = load_manifest(plugin)
    assert manifest["type"] in ("trainer", "evaluator")
    if manifest["type"] == "trainer":
        # The training modal gives the job a type, which the host's dispatch must know, or the job never starts.
        assert host_submission(manifest, "train")["type"] in DISPATCHED_TRAIN_TYPES
        assert host_submission(manifest | {"train_type": "sft"}, "train")["type"] not in DISPATCHED_TRAIN_TYPES
        return
    # The evaluation modal lists only evaluators with an evalsType and gives no type: the host starts an EVAL job
    # with the submission as `--key value` arguments (Python's str of each value) before its own.
    assert manifest.get("evalsType") in EVALS_TYPES and "train_type" not in manifest
    assert "type" not in host_submission(manifest, "eval")
    defaults = {key: prop.get("default") for key, prop in manifest["parameters"].items()}
    assert evaluator_params(manifest, {}, tmp_path) == defaults
    for key in manifest["parameters"]:
        held, meant = edit_for(key, manifest)
        assert evaluator_params(manifest, {key: held}, tmp_path) == defaults | {key: meant}, key
    # A field named like one of the host's own arguments would lose the person's value to the host's.
    clash = manifest | {"parameters": {**manifest["parameters"], "eval_name": {"type": "string", "default": "mine"}}}
    assert evaluator_params(clash, {}, tmp_path)["eval_name"] == "eval"


def evaluator_main():
    spec = importlib.util.spec_from_file_location(
        "diffusion_evaluator_main", REPO / "plugins" / "diffusion_evaluator" / "main.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("limit", "documents"), [(1.0, None), (0, None), (0.5, 0.5), (0.05, 0.05), (2.0, 2), (20, 20)])
def test_limit_reads_as_the_workbench_evaluators_read_it(limit, documents):
    # lm-eval's own limit: a fraction below 1, a count from 1; the workbench's evaluators made 1 mean "all".
    assert evaluator_main().lm_eval_limit(limit) == documents
    assert type(evaluator_main().lm_eval_limit(limit)) is type(documents)


def test_a_fractional_count_is_refused():
    with pytest.raises(
        ParameterError, match=r"limit \(Examples per task\): 2.5 is neither a fraction up to 1 nor a whole"
    ):
        evaluator_main().lm_eval_limit(2.5)


@pytest.mark.parametrize("plugin", ["diffusion_llm_trainer", "diffusion_dpo_trainer", "diffusion_grpo_trainer"])
def test_old_configs_with_merge_adapter_still_save_a_full_model(plugin):
    manifest = load_manifest(REPO / "plugins" / plugin)
    params = coerce_and_validate(
        {"merge_adapter": "true"}, manifest["parameters"], aliases=manifest["parameter_aliases"]
    )
    assert params["save_full_model"] is True and "merge_adapter" not in params
