"""A plugin's form from its settings dataclass, the one source of its parameters.

Each plugin declares its settings in `plugins/<id>/settings.py`: `SETTINGS`, a dataclass whose form fields carry
their title, help, group, bounds, choices and widget as a plain dict under the field metadata key `"form"` (see
`dlm.settings.setting`, which writes it); `ORDER`, the order of the fields in the form (fields it leaves out follow
in the dataclass's order); `TASK_HOST_PARAMETERS`, a dataclass of what a task of today's Transformer Lab carries
beyond the form (the model the plugin-era host filled in); and `TASK_FIRST`, the fields that open the task form after
those. From these, `write_forms` writes index.json's `parameters` and `parameters_ui` and task.yaml's `parameters`
block; everything else in those files is hand-written and kept as it is. A trainer's `SWEEP` (the app's `sweeps`
block: `sweep_config`, `sweep_metric`, `lower_is_better`) and `SWEEP_DESCRIPTION` make a second, generated task,
`sweep/task.yaml`: the plugin's task.yaml named `<name>-sweep`, with the sweep. It is a task of its own because the
app makes a task.yaml's `sweeps` the task's default for every launch (a plain task keeps single runs). `python -m plugin_sdk forms [--check]`
runs it; `parameter_help` is what `run <plugin> --help` prints.

task.yaml's parameters are typed the way the Queue Task modal of transformerlab-app reads them
(`QueueTaskModal/index.tsx` `parseParameter`, `ParameterInput.tsx`): `type` int/float/bool/enum/string, `default`,
`min`/`max`/`step`, `options`, `ui_widget` (the host's model and dataset pickers, a switch, a radio row or a select)
and `title`; `description` holds the help (the modal shows the title only; the app's own examples carry it). A list
is a comma-joined string: the modal edits it as text and sends it as such, and `plugin_sdk.params` reads it back as
the list (the modal's other way, a JSON editor, appears only for a list default).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
import textwrap
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FORM = "form"  # the field metadata key that holds a parameter's description
_SCALAR_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_BOUNDS = (
    ("minimum", "minimum"),
    ("exclusive_minimum", "exclusiveMinimum"),
    ("maximum", "maximum"),
    ("multiple_of", "multipleOf"),
)
# the parameters block of task.yaml: its key line and the indented (or blank) lines under it
# a hand-written sweeps block of task.yaml (with the comment lines above it), which the sweep task replaces
_TASK_SWEEPS_BLOCK = re.compile(r"(?:^#.*\n)*^sweeps:.*(?:\n|\Z)(?:(?:[ \t].*|[ \t]*)(?:\n|\Z))*", re.MULTILINE)
# task.yaml's type of each form type; a list travels as a comma-joined string
_TASK_TYPES = {"string": "string", "integer": "int", "number": "float", "boolean": "bool", "array": "string"}
_RADIO_AT_MOST = 3  # a choice among this many is a radio row, among more a select
_EXAMPLES = 5  # suggestions of a free list (lm-eval tasks) named in its description
SWEEP_FOLDER = "sweep"  # a plugin's generated sweep task: plugins/<id>/sweep/task.yaml
TASK_SETUP = Path(__file__).with_name("task_setup.sh")  # the `setup` of every task.yaml
INTERACTIVE_TASKS = "interactive/*/task.yaml"  # tasks without a form: their `setup` and repository are written
GALLERIES = ("gallery/*.json", "interactive/*-gallery.json")  # their entries name this repository


@dataclass(frozen=True)
class Parameter:
    """One form field: its name, JSON-schema type, default and the metadata `dlm.settings.setting` wrote."""

    name: str
    type: str
    default: Any
    form: dict[str, Any]

    @property
    def help(self) -> str:
        """The description, else the help shown beside the field."""
        return self.form.get("help") or self.form.get("ui_help") or ""


@dataclass(frozen=True)
class PluginForm:
    """A plugin's declared settings: the parameters in form order, the task's extra host parameters, and the
    parameters in the task form's order."""

    settings: type
    parameters: list[Parameter]
    task_host_parameters: list[Parameter]
    task_order: list[Parameter]
    module: types.ModuleType | None = None  # settings.py (its SWEEP, if any)


def form_parameters(settings: type, order: typing.Sequence[str] = ()) -> list[Parameter]:
    """The form fields of the dataclass `settings` (those with form metadata), in `order`, then the rest in field
    order. A name in `order` that is no form field is an error (a stale order would hide a field's move)."""
    hints = typing.get_type_hints(settings)
    found = {}
    for f in dataclasses.fields(settings):
        if FORM not in f.metadata:
            continue
        form = dict(f.metadata[FORM])
        default = f.default if f.default is not dataclasses.MISSING else None
        found[f.name] = Parameter(f.name, form.pop("type", None) or json_type(hints[f.name]), _plain(default), form)
    unknown = [name for name in order if name not in found]
    if unknown:
        raise ValueError(f"{settings.__name__}: the form order names {', '.join(unknown)}, not form fields")
    return [found[name] for name in dict.fromkeys([*order, *found])]


def json_type(annotation: Any) -> str:
    """The JSON-schema type of a field annotation: str, int, float, bool, or a tuple/list of them."""
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        return "array"
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(kinds) == 1:
            return json_type(kinds[0])
    if annotation in _SCALAR_TYPES:
        return _SCALAR_TYPES[annotation]
    raise TypeError(f"no form type for the annotation {annotation!r}: give the setting a type")


def schema(parameters: typing.Sequence[Parameter]) -> tuple[dict[str, Any], dict[str, Any]]:
    """index.json's `parameters` and `parameters_ui` for `parameters`."""
    properties = {p.name: _property(p) for p in parameters}
    ui: dict[str, Any] = {"ui:order": [p.name for p in parameters]}
    for p in parameters:
        entry = _ui_entry(p)
        if entry:
            ui[p.name] = entry
    return properties, ui


def _property(p: Parameter) -> dict[str, Any]:
    form = p.form
    prop: dict[str, Any] = {"title": form["title"], "type": p.type, "default": p.default}
    if "help" in form:
        prop["description"] = form["help"]
    if "choices" in form:
        prop["enum"] = list(form["choices"])
    if "items" in form:
        prop["items"] = form["items"]
    if "unique_items" in form:
        prop["uniqueItems"] = form["unique_items"]
    prop.update({key: form[name] for name, key in _BOUNDS if name in form})
    return prop


def _ui_entry(p: Parameter) -> dict[str, Any]:
    """The field's layout. A choice of strings is a radio group (the workbench's select never passes a changed
    choice on); a checkbox shows its title itself, so its label is off."""
    form = p.form
    entry: dict[str, Any] = {}
    if "ui_help" in form:
        entry["ui:help"] = form["ui_help"]
    widget = form.get("widget") or ("radio" if p.type == "string" and "choices" in form else None)
    if widget:
        entry["ui:widget"] = widget
    if "placeholder" in form:
        entry["ui:placeholder"] = form["placeholder"]
    options = form.get("ui_options")
    if options is None and widget == "radio":
        options = {"inline": True}
    if options is None and p.type == "boolean":
        options = {"label": False}
    if options is not None:
        entry["ui:options"] = options
    if "choice_labels" in form:
        entry["ui:enumNames"] = list(form["choice_labels"])
    return entry


def task_parameters(form: PluginForm) -> dict[str, dict[str, Any]]:
    """task.yaml's `parameters`: the task's host parameters, then every form field, each typed."""
    return {p.name: task_parameter(p) for p in [*form.task_host_parameters, *form.task_order]}


def task_parameter(p: Parameter) -> dict[str, Any]:
    """One parameter as the Queue Task modal reads it. A choice's options are strings (its radio row and select
    send the option's text); a bound the modal cannot state (exclusive_minimum) is said in the description."""
    form = p.form
    entry: dict[str, Any] = {"title": form["title"], "type": _TASK_TYPES[p.type], "default": p.default}
    if p.type == "array":
        entry["title"] += " (comma-separated)"
        entry["default"] = ",".join(map(str, p.default))
    if "choices" in form:
        entry["type"] = "enum"
        entry["options"] = [str(choice) for choice in form["choices"]]
        entry["ui_widget"] = "radio" if len(form["choices"]) <= _RADIO_AT_MOST else "select"
    bounds = {"min": form.get("minimum"), "max": form.get("maximum"), "step": form.get("multiple_of")}
    entry.update({key: value for key, value in bounds.items() if value is not None})
    if p.type == "boolean":
        entry["ui_widget"] = "switch"
    if "task_widget" in form:
        entry["ui_widget"] = form["task_widget"]
    if form.get("required"):
        entry["required"] = True
    entry["description"] = _task_description(p)
    return entry


def _task_description(p: Parameter) -> str:
    form = p.form
    parts = [form.get("task_help") or p.help]
    if "choice_labels" in form:
        labels = zip(form["choices"], form["choice_labels"], strict=True)
        parts.append("Choices: " + "; ".join(f"{choice}: {label}" for choice, label in labels) + ".")
    if "enum" in form.get("items", {}):
        parts.append(f"Any of {', '.join(map(str, form['items']['enum']))}.")
    suggestions = form.get("ui_options", {}).get("enumOptions")
    if suggestions:
        parts.append(f"For example {', '.join(suggestions[:_EXAMPLES])}.")
    if "exclusive_minimum" in form:
        parts.append(f"Greater than {form['exclusive_minimum']}.")
    return " ".join(part for part in parts if part)


def load_form(plugin_dir: str | Path) -> PluginForm:
    """The form `plugins/<id>/settings.py` declares (imported as `plugins.<id>.settings`, with the repository that
    holds `plugins/` importable, so that settings modules can share mixins)."""
    folder = Path(plugin_dir).resolve()
    root = str(folder.parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"{folder.parent.name}.{folder.name}.settings")
    order = getattr(module, "ORDER", ())
    host = getattr(module, "TASK_HOST_PARAMETERS", None)
    return PluginForm(
        module.SETTINGS,
        form_parameters(module.SETTINGS, order),
        form_parameters(host) if host is not None else [],
        form_parameters(module.SETTINGS, (*getattr(module, "TASK_FIRST", ()), *order)),
        module,
    )


def rendered(plugin_dir: str | Path) -> dict[Path, str]:
    """index.json and task.yaml of the plugin as `write_forms` writes them: the hand-written parts as they are, the
    generated parts from the settings."""
    folder = Path(plugin_dir)
    form = load_form(folder)
    files = {}
    manifest_path = folder / "index.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["parameters"], manifest["parameters_ui"] = schema(form.parameters)
    files[manifest_path] = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    task_path = folder / "task.yaml"
    if task_path.is_file():
        text = with_task_source(task_path.read_text(encoding="utf-8"), repository_url(folder.resolve().parent.parent))
        files[task_path] = with_task_parameters(text, task_parameters(form))
        sweep = getattr(form.module, "SWEEP", None)
        if sweep is not None:
            variant = sweep_variant(files[task_path], sweep, form.module.SWEEP_DESCRIPTION)
            files[folder / SWEEP_FOLDER / "task.yaml"] = variant
    return files


def sweep_variant(task_text: str, sweep: dict[str, Any], description: str) -> str:
    """The sweep task of a plugin's task.yaml `task_text`: its keys as they are (envs, setup, run, parameters,
    github_repo_dir naming the plugin's folder, which the launch clones), `name` with "-sweep", a generated header in
    place of its comment, and `sweep` as its `sweeps` block (in place of one task.yaml may have)."""
    body = task_text.split("\n")
    while body and (body[0].startswith("#") or not body[0].strip()):
        body.pop(0)
    text = _TASK_SWEEPS_BLOCK.sub("", "\n".join(body))
    name = re.search(r"^name: *(\S+) *$", text, re.MULTILINE)
    if name is None:
        raise ValueError("task.yaml has no `name:` line to derive the sweep task's name from")
    text = text[: name.start()] + f"name: {name.group(1)}-sweep" + text[name.end() :]
    header = [
        "# Generated by `python -m plugin_sdk forms` from task.yaml and settings.py's SWEEP: do not edit.",
        *textwrap.wrap(description, width=114, initial_indent="# ", subsequent_indent="# "),
        "# The same task as the plugin's task.yaml (its envs, setup, run, parameters and the folder the launch",
        "# clones), with a `sweeps` block: every queue of this task runs one job per combination of `sweep_config`,",
        "# ranked by `sweep_metric`. Queue the plain task for a single run.",
    ]
    sweeps = yaml.safe_dump({"sweeps": sweep}, sort_keys=False, default_flow_style=None, width=120)
    return "\n".join(header) + "\n" + text.rstrip("\n") + "\n" + sweeps


def with_task_parameters(text: str, parameters: dict[str, Any]) -> str:
    """task.yaml's `text` with its top-level `parameters` block replaced by `parameters` (appended when it has none):
    the keys before and after it (envs, setup, sweeps, ...) and their comments stay as they are."""
    block = yaml.safe_dump({"parameters": parameters}, sort_keys=False, allow_unicode=True, width=120)
    return _with_block(text, "parameters", block)


def with_task_setup(text: str) -> str:
    """task.yaml's `text` with its top-level `setup` replaced by this project's install script (`task_setup.sh`,
    its comment lines left out), as a literal block."""
    script = [line for line in TASK_SETUP.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return _with_block(text, "setup", "setup: |-\n" + "".join(f"  {line}\n" if line else "\n" for line in script))


def _with_block(text: str, key: str, block: str) -> str:
    """`text` with its top-level `key` block (the key's line and the indented or blank lines under it) replaced by
    `block`, or with `block` appended when `text` has no such key."""
    found = re.compile(rf"^{key}:.*\n(?:(?:[ \t].*|[ \t]*)(?:\n|\Z))*", re.MULTILINE).search(text)
    if found is None:
        return text + ("" if text.endswith("\n") or not text else "\n") + block
    replaced = found.group(0)
    spacing = replaced[len(replaced.rstrip()) :] or "\n"  # the line end and blank lines before the next key
    return text[: found.start()] + block.rstrip("\n") + spacing + text[found.end() :]


def write_forms(repo_root: str | Path, *, check: bool = False) -> list[str]:
    """Write the generated parts of every plugin's index.json and task.yaml, of the interactive tasks and of the
    galleries (`check`: write nothing) and return one line per file that differed, naming the fields that differ."""
    root = Path(repo_root)
    files: dict[Path, str] = {}
    stale = []
    for settings_file in sorted((root / "plugins").glob("*/settings.py")):
        plugin_files = rendered(settings_file.parent)
        files.update(plugin_files)
        variant = settings_file.parent / SWEEP_FOLDER / "task.yaml"
        if variant.is_file() and variant not in plugin_files:
            stale.append(variant)
    repository = repository_url(root)
    for path in sorted(root.glob(INTERACTIVE_TASKS)):
        files[path] = with_task_source(path.read_text(encoding="utf-8"), repository)
    for pattern in GALLERIES:
        for path in sorted(root.glob(pattern)):
            files[path] = gallery_with_repository(path.read_text(encoding="utf-8"), repository)
    differences = []
    for path, text in files.items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        differences.append(
            f"{path.relative_to(root)}: {_differing_fields(path, current, text) if current else 'missing'}"
        )
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        differences.append(f"{path.relative_to(root)}: settings.py declares no SWEEP")
        if not check:
            path.unlink()
    return differences


def repository_url(repo_root: Path) -> str | None:
    """This project's repository (`[project.urls] Repository` of pyproject.toml), which every task names and the
    galleries point to; None where there is no pyproject.toml (a copied plugins folder)."""
    pyproject = repo_root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["urls"]["Repository"]


def with_task_source(text: str, repository: str | None) -> str:
    """task.yaml's `text` with this project's install `setup` and, given `repository`, its `github_repo_url`."""
    text = with_task_setup(text)
    return _with_block(text, "github_repo_url", f"github_repo_url: {repository}\n") if repository else text


def gallery_with_repository(text: str, repository: str | None) -> str:
    """A gallery file (a JSON list of entries) with each entry's `github_repo_url`, and the suggested DLM_SOURCE of
    an interactive entry's form, naming `repository`."""
    if repository is None:
        return text
    entries = json.loads(text)
    for entry in entries:
        if "github_repo_url" in entry:
            entry["github_repo_url"] = repository
        for field in entry.get("env_parameters", ()):
            if field.get("env_var") == "DLM_SOURCE":
                field["placeholder"] = f"git+{repository}"
    return json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def _differing_fields(path: Path, current: str, wanted: str) -> str:
    try:
        old, new = (json.loads(t) if path.suffix == ".json" else yaml.safe_load(t) for t in (current, wanted))
    except (json.JSONDecodeError, yaml.YAMLError):
        return "not readable as it stands"
    if isinstance(old, list):  # a gallery
        names = ["github_repo_url"] if old != new else []
    elif path.suffix == ".json":
        names = [
            *_changed(old.get("parameters", {}), new["parameters"]),
            *_changed(old.get("parameters_ui", {}), new["parameters_ui"]),
        ]
    else:
        names = _changed(old.get("parameters") or {}, new.get("parameters") or {})
        names += [key for key in ("name", "github_repo_url", "setup", "sweeps") if old.get(key) != new.get(key)]
    return f"fields {', '.join(dict.fromkeys(names))} differ" if names else "layout differs (same content)"


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [key for key in dict.fromkeys([*old, *new]) if old.get(key) != new.get(key)]


def parameter_help(plugin_dir: str | Path) -> str:
    """The plugin's parameters by group, each with its title, type, default, choices or bounds and help."""
    form = load_form(plugin_dir)
    groups: dict[str, list[Parameter]] = {}
    for p in form.parameters:
        groups.setdefault(p.form["group"], []).append(p)
    lines = ["parameters (--name value, --set name=value, or --config FILE):"]
    for group, members in groups.items():
        lines.append(f"\n{group}:")
        for p in members:
            lines.append(f"  --{p.name} ({p.type}, default {_shown(p.default)}): {p.form['title']}{_limits(p)}")
            if p.help:
                lines += textwrap.wrap(p.help, width=110, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def _limits(p: Parameter) -> str:
    form = p.form
    if "choices" in form:
        return f"; one of {', '.join(map(str, form['choices']))}"
    if "enum" in form.get("items", {}):
        return f"; any of {', '.join(map(str, form['items']['enum']))}"
    bounds = {"minimum": ">=", "exclusive_minimum": ">", "maximum": "<="}
    shown = [f"{sign} {form[name]}" for name, sign in bounds.items() if name in form]
    return f"; {', '.join(shown)}" if shown else ""


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return json.dumps(value) if isinstance(value, bool | str) else str(value)


def _plain(value: Any) -> Any:
    """A default as JSON and YAML write it: tuples as lists."""
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value
