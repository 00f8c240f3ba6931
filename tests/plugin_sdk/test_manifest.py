import json

import pytest

from plugin_sdk.errors import PluginError
from plugin_sdk.manifest import find_plugin, gallery_entry, load_manifest, validate_gallery, validate_plugin


def valid_manifest(uid="demo_trainer"):
    return {
        "name": "Demo Trainer",
        "uniqueId": uid,
        "description": "Trains things.",
        "plugin-format": "python",
        "type": "trainer",
        "version": "0.1.0",
        "files": ["main.py", "setup.sh"],
        "setup-script": "setup.sh",
        "supported_hardware_architectures": ["cuda", "cpu"],
        "model_architectures": ["LLaDAModelLM"],
        "training_template_format": "alpaca",
        "parameters": {
            "batch_size": {"title": "Batch size", "type": "integer", "default": 4, "minimum": 1, "required": True},
            "learning_rate": {"type": "number", "default": 2e-5, "description": "Peak learning rate."},
            "targets": {"type": "array", "items": {"type": "string"}, "default": ["q_proj"], "description": "Modules."},
            "method": {"type": "string", "enum": ["llada", "dream"], "default": "llada", "description": "Family."},
        },
        "parameters_ui": {
            "batch_size": {"ui:help": "Rows per step."},
            "method": {"ui:widget": "radio"},
            "ui:order": ["batch_size", "*"],
        },
        "parameter_aliases": {"lr": "learning_rate"},
    }


def make_plugin(root, manifest=None, uid="demo_trainer"):
    folder = root / uid
    folder.mkdir(parents=True)
    (folder / "main.py").write_text("def main():\n    pass\n")
    (folder / "setup.sh").write_text("#!/bin/sh\n")
    (folder / "index.json").write_text(json.dumps(manifest if manifest is not None else valid_manifest(uid)))
    return folder


def problems_after(tmp_path, change):
    manifest = valid_manifest()
    change(manifest)
    return validate_plugin(make_plugin(tmp_path, manifest))


def test_valid_plugin_has_no_problems(tmp_path):
    assert validate_plugin(make_plugin(tmp_path)) == []


def test_load_manifest(tmp_path):
    assert load_manifest(make_plugin(tmp_path))["uniqueId"] == "demo_trainer"


def test_malformed_index_json_names_line(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "index.json").write_text('{\n  "name": "x",\n  "type": trainer\n}')
    with pytest.raises(PluginError, match=r"index\.json: invalid JSON at line 3, column 11"):
        load_manifest(folder)
    assert "invalid JSON at line 3" in validate_plugin(folder)[0]


def test_missing_or_non_object_index_json(tmp_path):
    with pytest.raises(PluginError, match="index.json not found"):
        load_manifest(tmp_path)
    (tmp_path / "index.json").write_text("[]")
    with pytest.raises(PluginError, match="expected a JSON object, got list"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    "key",
    [
        "name",
        "uniqueId",
        "description",
        "plugin-format",
        "type",
        "version",
        "files",
        "setup-script",
        "supported_hardware_architectures",
    ],
)
def test_each_host_required_key(tmp_path, key):
    problems = problems_after(tmp_path, lambda m: m.pop(key))
    assert f"demo_trainer/index.json: missing required key {key!r}" in problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m.update({"plugin-format": "docker"}), "'plugin-format' is 'docker'; it must be 'python'"),
        (lambda m: m.update(type="trainr"), "'type' is 'trainr'; expected one of trainer, evaluator, loader"),
        (lambda m: m.update({"setup-script": "install.sh"}), "'setup-script' is 'install.sh'; it must be 'setup.sh'"),
        (lambda m: m.update(uniqueId="other"), "uniqueId 'other' must equal the folder name 'demo_trainer'"),
        (lambda m: m.update(version=""), "'version' must be a non-empty string"),
        (lambda m: m.update(files=["main.py", "missing.py"]), "'files' lists 'missing.py', which is not in the"),
        (lambda m: m.update(files=["../outside.py"]), "'files' lists '../outside.py'"),
        (lambda m: m.update(files="main.py"), "'files' must be a list of file names"),
        (
            lambda m: m.update(supported_hardware_architectures=["cuda", "tpu"]),
            "'supported_hardware_architectures' has unknown 'tpu'; allowed: cuda, amd, mlx, cpu",
        ),
        (lambda m: m.update(supported_hardware_architectures=[]), "must be a non-empty list"),
        (lambda m: m.update(model_architectures="LLaDAModelLM"), "'model_architectures' must be a list"),
        (lambda m: m.update(training_template_format="sharegpt"), "'training_template_format' is 'sharegpt'"),
        (lambda m: m.update(type="evaluator"), "evaluators need 'evalsType' set to 'model' or 'dataset'"),
        (lambda m: m.update(type="evaluator", evalsType="models"), "(got 'models')"),
        (lambda m: m.update(train_type="sft"), "'train_type' is 'sft': the workbench never starts that job type"),
        (lambda m: m.update(train_type="lora"), "leave it out or use one of LoRA, pretraining, embedding"),
    ],
)
def test_metadata_problems(tmp_path, change, expected):
    problems = problems_after(tmp_path, change)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("train_type", ["LoRA", "pretraining", "embedding"])
def test_dispatched_train_types_are_valid(tmp_path, train_type):
    assert problems_after(tmp_path, lambda m: m.update(train_type=train_type)) == []


def test_evaluator_with_evals_type_is_valid(tmp_path):
    assert problems_after(tmp_path, lambda m: m.update(type="evaluator", evalsType="model")) == []


def test_outside_file_is_refused_even_if_it_exists(tmp_path):
    (tmp_path / "outside.py").write_text("")
    problems = problems_after(tmp_path, lambda m: m.update(files=["../outside.py"]))
    assert any("'../outside.py', which is not in the plugin folder" in p for p in problems)


def test_main_py_and_setup_sh_must_exist(tmp_path):
    folder = make_plugin(tmp_path)
    (folder / "main.py").unlink()
    (folder / "setup.sh").unlink()
    problems = validate_plugin(folder)
    assert "demo_trainer/index.json: the plugin folder has no main.py" in problems
    assert "demo_trainer/index.json: the plugin folder has no setup.sh" in problems


def set_param(name, prop):
    return lambda m: m["parameters"].__setitem__(name, prop)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (set_param("x", {"type": "float", "description": "d"}), "parameter 'x': 'type' is 'float'; expected one of"),
        (set_param("x", {"description": "d"}), "parameter 'x': 'type' is None"),
        (set_param("x", {"type": "integer", "minimum": "1", "description": "d"}), "not a valid JSON Schema property"),
        (
            set_param("x", {"type": "integer", "required": "yes", "description": "d"}),
            "'required' must be true or false",
        ),
        (
            set_param("x", {"type": "integer", "default": "a", "description": "d"}),
            "bad default: x: expected an integer",
        ),
        (set_param("x", {"type": "integer", "default": 0, "minimum": 1, "description": "d"}), "must be at least 1"),
        (set_param("x", {"type": "string", "enum": ["a"], "default": "b", "description": "d"}), "must be one of 'a'"),
        (set_param("x", {"type": "integer", "enum": [1, "two"], "description": "d"}), "enum choice 'two' expected an"),
        (set_param("x", {"type": "number", "multipleOf": 0.1, "default": 0.25, "description": "d"}), "multiple of 0.1"),
        (set_param("x", {"type": "array", "description": "d"}), "arrays need 'items' with a 'type'"),
        (
            set_param("x", {"type": "array", "items": {"type": "integer"}, "default": ["a"], "description": "d"}),
            "item 0",
        ),
        (set_param("x", {"type": "integer"}), "parameter 'x' has no help text"),
        (set_param("x", "integer"), "parameter 'x' must be an object, got str"),
        (lambda m: m.update(parameters=[]), "'parameters' must be an object"),
        (lambda m: m["parameters_ui"].update(ghost={"ui:help": "?"}), "parameters_ui has 'ghost', which is not a"),
        (lambda m: m["parameters_ui"].update(batch_size="wide"), "parameters_ui.batch_size must be an object"),
        (lambda m: m.update(parameter_aliases={"old": "gone"}), "maps 'old' to 'gone', which is not a parameter"),
        (lambda m: m.update(parameter_aliases={"method": "learning_rate"}), "'method' is itself a parameter"),
        (lambda m: m["parameters_ui"].update({"ui:order": ["batch_size"]}), "ui:order lacks 'learning_rate'"),
        (
            lambda m: m["parameters_ui"].pop("method"),
            "parameter 'method': give the choice parameters_ui.method.ui:widget",
        ),
        (lambda m: m["parameters_ui"].update(method={"ui:widget": "select"}), "the workbench's select widget never"),
        (lambda m: m["parameters_ui"].update({"ui:order": ["ghost", "*"]}), "ui:order names 'ghost', which is not"),
        (lambda m: m["parameters_ui"].update({"ui:order": ["method", "method", "*"]}), "names 'method' twice"),
        (lambda m: m["parameters_ui"].update({"ui:order": "batch_size"}), "ui:order must be a list of parameter"),
    ],
)
def test_parameter_problems(tmp_path, change, expected):
    problems = problems_after(tmp_path, change)
    assert any(expected in p for p in problems), problems


def test_help_from_ui_help_counts(tmp_path):
    def change(m):
        m["parameters"]["x"] = {"type": "integer"}
        m["parameters_ui"]["x"] = {"ui:help": "Explained here."}

    assert problems_after(tmp_path, change) == []


# ------------------------------------------------------------------------------------------------ gallery


def make_repo(tmp_path, uids=("alpha", "beta")):
    plugins = tmp_path / "plugins"
    for uid in uids:
        make_plugin(plugins, valid_manifest(uid), uid=uid)
    entries = [gallery_entry(plugins / uid) for uid in uids]
    (tmp_path / "index.json").write_text(json.dumps(entries))
    return entries


def test_gallery_entry_shape(tmp_path):
    entries = make_repo(tmp_path, ("alpha",))
    assert entries == [
        {
            "uniqueId": "alpha",
            "name": "Demo Trainer",
            "type": "trainer",
            "version": "0.1.0",
            "description": "Trains things.",
            "path": "plugins/alpha",
        }
    ]


def test_valid_gallery(tmp_path):
    make_repo(tmp_path)
    assert validate_gallery(tmp_path) == []


def test_gallery_problems(tmp_path):
    entries = make_repo(tmp_path, ("alpha", "beta", "gamma"))
    entries[0]["version"] = "9.9"
    entries[1]["path"] = "elsewhere/beta"
    del entries[2]
    entries.append(dict(entries[0]))
    ghost = {"uniqueId": "ghost", "name": "g", "type": "trainer", "version": "1", "description": "d"}
    entries.append({**ghost, "path": "plugins/ghost"})
    entries.append("junk")
    entries.append({"uniqueId": "alpha2"})
    (tmp_path / "index.json").write_text(json.dumps(entries))
    problems = validate_gallery(tmp_path)
    assert "index.json: 'alpha' has version '9.9' but plugins/alpha/index.json has '0.1.0'" in problems
    assert "index.json: 'beta' has path 'elsewhere/beta'; expected 'plugins/beta'" in problems
    assert "index.json: plugins/gamma is not listed" in problems
    assert "index.json: 'alpha' is listed twice" in problems
    assert "index.json: 'ghost' is listed but plugins/ghost does not exist" in problems
    assert "index.json: entry 4 must be an object, got str" in problems
    assert "index.json: entry 5 lacks name, type, version, description, path" in problems


def test_gallery_includes_plugin_problems(tmp_path):
    make_repo(tmp_path)
    (tmp_path / "plugins" / "beta" / "main.py").unlink()
    assert validate_gallery(tmp_path) == [
        "beta/index.json: the plugin folder has no main.py",
        "beta/index.json: 'files' lists 'main.py', which is not in the plugin folder",
    ]


def test_gallery_must_be_a_list(tmp_path):
    make_repo(tmp_path)
    (tmp_path / "index.json").write_text('{"plugins": []}')
    assert "expected a JSON list of plugin entries, got dict" in validate_gallery(tmp_path)[0]
    (tmp_path / "index.json").write_text("[\n{,]")
    assert "invalid JSON at line 2, column 2" in validate_gallery(tmp_path)[0]


def test_find_plugin(tmp_path):
    make_repo(tmp_path)
    assert find_plugin("beta", tmp_path) == tmp_path / "plugins" / "beta"
    with pytest.raises(PluginError, match=r"unknown plugin 'gama'; plugins in .*: alpha, beta"):
        find_plugin("gama", tmp_path)
