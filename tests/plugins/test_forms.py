"""One source per parameter: each plugin's settings dataclass writes its index.json form and task.yaml parameters
(`python -m plugin_sdk forms`), the committed files are what it writes, and `run <plugin> --help` reads it too."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dlm.eval_config import EvaluatorConfig
from dlm.settings import setting
from dlm.trainers.dpo_config import DPOConfig
from dlm.trainers.grpo_config import GRPOConfig
from dlm.trainers.sft_config import SFTConfig
from plugin_sdk.__main__ import main
from plugin_sdk.forms import (
    FORM,
    Parameter,
    form_parameters,
    json_type,
    load_form,
    schema,
    task_parameter,
    task_parameters,
    with_task_parameters,
    write_forms,
)

REPO = Path(__file__).resolve().parents[2]
PLUGINS = {
    "diffusion_llm_trainer": SFTConfig,
    "diffusion_dpo_trainer": DPOConfig,
    "diffusion_grpo_trainer": GRPOConfig,
    "diffusion_evaluator": EvaluatorConfig,
}


def test_committed_forms_are_what_the_settings_write(capsys):
    assert main(["forms", "--check"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("plugin", PLUGINS)
def test_every_field_has_a_title_help_and_group(plugin):
    form = load_form(REPO / "plugins" / plugin)
    lacking = [p.name for p in form.parameters if not (p.form.get("title") and p.help and p.form.get("group"))]
    assert lacking == []
    assert len(form.parameters) > 30


@pytest.mark.parametrize(("plugin", "config"), PLUGINS.items())
def test_a_plugins_form_is_the_config_its_main_builds(plugin, config):
    # the form's defaults are the config's: a settings class only adds the job's own fields to the config
    settings = load_form(REPO / "plugins" / plugin).settings
    assert issubclass(settings, config)
    own = {f.name for f in dataclasses.fields(config)}
    assert {f.name: f.default for f in dataclasses.fields(settings) if f.name in own} == {
        f.name: f.default for f in dataclasses.fields(config)
    }


def test_check_names_the_file_and_field_that_differ(tmp_path):
    shutil.copytree(REPO / "plugins", tmp_path / "plugins")
    manifest_path = tmp_path / "plugins" / "diffusion_dpo_trainer" / "index.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["parameters"]["beta"]["default"] = 0.5
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    task = tmp_path / "plugins" / "diffusion_evaluator" / "task.yaml"
    steps = "  steps:\n    title: Denoising steps\n    type: int\n    default: 128\n"
    assert steps in task.read_text()
    task.write_text(task.read_text().replace(steps, steps.replace("128", "64")))
    assert write_forms(tmp_path, check=True) == [
        "plugins/diffusion_dpo_trainer/index.json: fields beta differ",
        "plugins/diffusion_evaluator/task.yaml: fields steps differ",
    ]
    assert json.loads(manifest_path.read_text())["parameters"]["beta"]["default"] == 0.5  # --check writes nothing
    assert len(write_forms(tmp_path)) == 2
    assert write_forms(tmp_path, check=True) == []
    assert manifest_path.read_text() == (REPO / "plugins" / "diffusion_dpo_trainer" / "index.json").read_text()


def test_run_help_lists_the_parameters_by_group(capsys):
    assert main(["run", "diffusion_llm_trainer", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--workspace" in out
    assert "\nLoRA and quantization:\n" in out and "\nlaunch:\n" in out
    assert "--lora_r (integer, default 16): LoRA rank; >= 4, <= 1024" in out
    assert (
        '--training_method (string, default "auto"): Model family; one of auto, bert, dream, llada, llada2, llada_moe, a2d, '
        "ar, bd3lm, sdar" in out
    )
    assert out.index("--lora_r") < out.index("--gpu_ids")


def test_run_help_of_the_evaluator_shows_lists(capsys):
    assert main(["run", "diffusion_evaluator", "-h"]) == 0
    out = capsys.readouterr().out
    assert "--metrics (array, default perplexity,generation,speed): Measurements; any of perplexity," in out
    assert "--tasks (array, default none): lm-eval tasks" in out


@dataclass
class Toy:
    name: str  # not a form field: no metadata
    mode: str = setting("a", title="Mode", group="g", help="Which mode.", choices=("a", "b"), choice_labels=("A", "B"))
    flag: bool = setting(False, title="Flag", group="g", ui_help="Turns it on.")
    sizes: tuple[float, ...] = setting((0.5,), title="Sizes", group="h", help="Sizes.", items={"type": "number"})
    rate: float | None = setting(0.1, title="Rate", group="h", help="Rate.", exclusive_minimum=0, maximum=1)


def test_a_dataclass_becomes_a_form():
    parameters, ui = schema(form_parameters(Toy, ("flag",)))
    assert ui["ui:order"] == ["flag", "mode", "sizes", "rate"]
    assert parameters["mode"] == {
        "title": "Mode",
        "type": "string",
        "default": "a",
        "description": "Which mode.",
        "enum": ["a", "b"],
    }
    assert ui["mode"] == {"ui:widget": "radio", "ui:options": {"inline": True}, "ui:enumNames": ["A", "B"]}
    assert parameters["flag"] == {"title": "Flag", "type": "boolean", "default": False}
    assert ui["flag"] == {"ui:help": "Turns it on.", "ui:options": {"label": False}}
    assert parameters["sizes"] == {
        "title": "Sizes",
        "type": "array",
        "default": [0.5],
        "description": "Sizes.",
        "items": {"type": "number"},
    }
    assert parameters["rate"]["exclusiveMinimum"] == 0 and parameters["rate"]["type"] == "number"
    assert "sizes" not in ui and "rate" not in ui
    assert FORM not in dataclasses.fields(Toy)[0].metadata


def test_a_dataclass_becomes_task_parameters_the_modal_reads():
    mode, flag, sizes, rate = form_parameters(Toy)
    assert task_parameter(mode) == {
        "title": "Mode",
        "type": "enum",
        "default": "a",
        "options": ["a", "b"],
        "ui_widget": "radio",
        "description": "Which mode. Choices: a: A; b: B.",
    }
    assert task_parameter(flag) == {
        "title": "Flag",
        "type": "bool",
        "default": False,
        "ui_widget": "switch",
        "description": "Turns it on.",
    }
    assert task_parameter(sizes) == {
        "title": "Sizes (comma-separated)",
        "type": "string",
        "default": "0.5",
        "description": "Sizes.",
    }
    assert task_parameter(rate) == {
        "title": "Rate",
        "type": "float",
        "default": 0.1,
        "max": 1,
        "description": "Rate. Greater than 0.",
    }
    many = Parameter("n", "integer", 8, {"title": "N", "choices": (4, 8, 16, 32), "multiple_of": 4, "minimum": 4})
    assert task_parameter(many) == {
        "title": "N",
        "type": "enum",
        "default": 8,
        "options": ["4", "8", "16", "32"],
        "ui_widget": "select",
        "min": 4,
        "step": 4,
        "description": "",
    }


def test_the_task_form_opens_with_the_model_and_the_important_fields():
    form = load_form(REPO / "plugins" / "diffusion_evaluator")
    declared = task_parameters(form)
    assert list(declared)[:4] == ["model_name", "model_adapter", "dataset", "metrics"]
    assert declared["model_name"]["ui_widget"] == "lab_model_select" and declared["model_name"]["required"]
    assert declared["dataset"]["ui_widget"] == "lab_dataset_select"
    # the task form's order is its own; index.json keeps ORDER; both hold every field
    assert [p.name for p in form.task_order] != [p.name for p in form.parameters]
    assert sorted(p.name for p in form.task_order) == sorted(p.name for p in form.parameters)


def test_only_the_parameters_block_is_replaced():
    text = (
        "# a comment\nname: t\nparameters:\n  old: 1\n  gone:\n  - 2\n\n"
        "# sweeps: written by hand\nsweeps:\n  sweep_config:\n    lr: [1, 2]\nrun: x\n"
    )
    assert with_task_parameters(text, {"new": {"type": "int", "default": 3}}) == (
        "# a comment\nname: t\nparameters:\n  new:\n    type: int\n    default: 3\n\n"
        "# sweeps: written by hand\nsweeps:\n  sweep_config:\n    lr: [1, 2]\nrun: x\n"
    )
    assert with_task_parameters("name: t\nparameters:\n  old: 1", {"a": 1}) == "name: t\nparameters:\n  a: 1\n"
    assert with_task_parameters("name: t\n", {"a": 1}) == "name: t\nparameters:\n  a: 1\n"


def test_forms_keep_a_sweeps_block_after_the_parameters(tmp_path):
    shutil.copytree(REPO / "plugins", tmp_path / "plugins")
    task = tmp_path / "plugins" / "diffusion_llm_trainer" / "task.yaml"
    sweeps = "sweeps:\n  sweep_config:\n    learning_rate: [0.0001, 0.0003]\n  sweep_metric: eval/loss\n"
    generated = task.read_text()
    task.write_text(generated.replace("  default: 42\n", "  default: 7\n", 1) + sweeps)
    assert write_forms(tmp_path) == ["plugins/diffusion_llm_trainer/task.yaml: fields seed differ"]
    assert task.read_text() == generated + sweeps
    variant = Path("plugins", "diffusion_llm_trainer", "sweep", "task.yaml")
    assert (tmp_path / variant).read_text() == (REPO / variant).read_text(), "the sweep task's sweeps are SWEEP"


TRAINERS = ("diffusion_llm_trainer", "diffusion_dpo_trainer")


@pytest.mark.parametrize("plugin", TRAINERS)
def test_a_trainers_sweep_is_a_task_of_its_own(plugin):
    """The app makes a task.yaml's `sweeps` every launch's default: the plain task has none, and the generated
    sweep/task.yaml is the plain one (the same envs, setup, run, typed parameters and cloned folder) named
    `<name>-sweep`, with settings.py's SWEEP as its `sweeps`."""
    main_task = yaml.safe_load((REPO / "plugins" / plugin / "task.yaml").read_text(encoding="utf-8"))
    text = (REPO / "plugins" / plugin / "sweep" / "task.yaml").read_text(encoding="utf-8")
    variant = yaml.safe_load(text)
    assert "sweeps" not in main_task
    assert text.startswith("# Generated by `python -m plugin_sdk forms`")
    sweep = load_form(REPO / "plugins" / plugin).module.SWEEP
    assert variant == {**main_task, "name": f"{main_task['name']}-sweep", "sweeps": sweep}
    assert variant["github_repo_dir"] == f"plugins/{plugin}", "the launch clones the folder that holds main.py"
    assert {"learning_rate", "lora_r"} <= set(sweep["sweep_config"])


def test_check_covers_the_sweep_tasks(tmp_path):
    shutil.copytree(REPO / "plugins", tmp_path / "plugins")
    variant = tmp_path / "plugins" / "diffusion_llm_trainer" / "sweep" / "task.yaml"
    dpo_variant = tmp_path / "plugins" / "diffusion_dpo_trainer" / "sweep" / "task.yaml"
    variant.unlink()
    dpo_variant.write_text(dpo_variant.read_text().replace("lora_r: [8, 32]", "lora_r: [8]"))
    assert write_forms(tmp_path, check=True) == [
        "plugins/diffusion_dpo_trainer/sweep/task.yaml: fields sweeps differ",
        "plugins/diffusion_llm_trainer/sweep/task.yaml: missing",
    ]
    assert not variant.exists()
    assert len(write_forms(tmp_path)) == 2 and write_forms(tmp_path, check=True) == []
    for path in (variant, dpo_variant):
        assert path.read_text() == (REPO / path.relative_to(tmp_path)).read_text()
    # a sweep task whose plugin declares no SWEEP is stale
    stale = tmp_path / "plugins" / "diffusion_evaluator" / "sweep" / "task.yaml"
    stale.parent.mkdir()
    stale.write_text("name: old\n")
    assert write_forms(tmp_path, check=True) == [
        "plugins/diffusion_evaluator/sweep/task.yaml: settings.py declares no SWEEP"
    ]
    assert write_forms(tmp_path) and not stale.exists()


def test_an_order_naming_no_field_is_refused():
    with pytest.raises(ValueError, match="names gone, not form fields"):
        form_parameters(Toy, ("mode", "gone"))


def test_an_annotation_without_a_form_type_is_refused():
    assert json_type(int) == "integer" and json_type(list[str]) == "array"
    with pytest.raises(TypeError, match="no form type"):
        json_type(dict)


def test_the_evaluator_config_takes_the_forms_defaults():
    # these five differed between the form and EvalSettings/SamplerSettings; the form's values are what users get
    settings = EvaluatorConfig().eval_settings()
    assert settings.metrics == ("perplexity", "generation", "speed")
    assert settings.max_length == 1024
    assert (settings.sampler.steps, settings.sampler.max_new_tokens, settings.sampler.grow_canvas) == (128, 128, 8)
    # the form's "off" values are the samplers' None
    sampler = settings.sampler
    assert (sampler.alg_temp, sampler.top_p, sampler.top_k, sampler.parallel_threshold) == (None, None, None, None)


def test_the_evaluator_config_reads_a_jobs_parameters():
    config = EvaluatorConfig.from_params(
        {"metrics": ["speed", "speed"], "mask_ratios": [0.5], "top_p": 0.9, "dataset": "ignored", "seed": None}
    )
    settings = config.eval_settings()
    assert (settings.metrics, settings.mask_ratios, settings.sampler.top_p, settings.seed) == (
        ("speed",),
        (0.5,),
        0.9,
        42,
    )


def test_run_help_without_a_plugin_shows_the_options(capsys):
    assert main(["run", "--help"]) == 0
    assert "plugin id from the gallery" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run"])


def test_the_repository_and_the_setup_are_written_everywhere_from_one_place(tmp_path):
    """pyproject.toml's Repository reaches every task.yaml (sweeps and the chat included) and every gallery entry;
    plugin_sdk/task_setup.sh is the `setup` of every task."""
    for folder in ("plugins", "interactive", "gallery"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    url = "https://example.org/someone/fork"
    (tmp_path / "pyproject.toml").write_text(
        (REPO / "pyproject.toml").read_text().replace('Repository = "', f'Repository = "{url}"  # was "', 1)
    )
    assert write_forms(tmp_path, check=True)  # every file names the old repository
    write_forms(tmp_path)
    assert write_forms(tmp_path, check=True) == []
    tasks = sorted(tmp_path.glob("*/*/task.yaml")) + sorted(tmp_path.glob("plugins/*/sweep/task.yaml"))
    assert len(tasks) == 7
    script = [line for line in (REPO / "plugin_sdk" / "task_setup.sh").read_text().splitlines() if line[:1] != "#"]
    for task in tasks:
        document = yaml.safe_load(task.read_text())
        assert document["github_repo_url"] == url, task
        assert document["setup"] == "\n".join(script), task
    entries = [e for gallery in tmp_path.glob("*/*gallery.json") for e in json.loads(gallery.read_text())]
    assert len(entries) == 8 and {e["github_repo_url"] for e in entries} == {url}
    chat = json.loads((tmp_path / "interactive" / "interactive-gallery.json").read_text())[0]
    assert {f["env_var"]: f.get("placeholder") for f in chat["env_parameters"]}["DLM_SOURCE"] == f"git+{url}"
