"""A plugin's form from its settings dataclass, the one source of its parameters.

Each plugin declares its settings in `plugins/<id>/settings.py`: `SETTINGS`, a dataclass whose form fields carry
their title, help, group, bounds, choices and widget as a plain dict under the field metadata key `"form"` (see
`dlm.settings.setting`, which writes it); `ORDER`, the order of the fields in the form (fields it leaves out follow
in the dataclass's order); and `TASK_HOST_PARAMETERS`, what a task of today's Transformer Lab carries beyond the
form (the model the plugin-era host filled in). From these, `write_forms` writes index.json's `parameters` and
`parameters_ui` and task.yaml's `parameters`; everything else in those files is hand-written and kept as it is.
`python -m plugin_sdk forms [--check]` runs it; `parameter_help` is what `run <plugin> --help` prints.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import textwrap
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
TASK_PARAMETERS_KEY = "parameters:"


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
    """A plugin's declared settings: the parameters in form order and the task's extra host parameters."""

    settings: type
    parameters: list[Parameter]
    task_host_parameters: dict[str, Any]


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


def task_parameters(form: PluginForm) -> dict[str, Any]:
    """task.yaml's `parameters`: the task's host parameters, then every form default."""
    return {**form.task_host_parameters, **{p.name: p.default for p in form.parameters}}


def load_form(plugin_dir: str | Path) -> PluginForm:
    """The form `plugins/<id>/settings.py` declares (imported as `plugins.<id>.settings`, with the repository that
    holds `plugins/` importable, so that settings modules can share mixins)."""
    folder = Path(plugin_dir).resolve()
    root = str(folder.parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"{folder.parent.name}.{folder.name}.settings")
    return PluginForm(
        module.SETTINGS,
        form_parameters(module.SETTINGS, getattr(module, "ORDER", ())),
        dict(getattr(module, "TASK_HOST_PARAMETERS", {})),
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
        head, tail = _around_parameters(task_path.read_text(encoding="utf-8"))
        body = yaml.safe_dump({"parameters": task_parameters(form)}, sort_keys=False, allow_unicode=True)
        files[task_path] = head + body + tail
    return files


def _around_parameters(text: str) -> tuple[str, str]:
    """The hand-written text of a task.yaml before its `parameters:` block and after it (top-level keys such as
    `sweeps:` that follow, with the blank and comment lines leading to them)."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(TASK_PARAMETERS_KEY)), None)
    if start is None:
        return text, ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in (" ", "\n", "#")), len(lines))
    while end > start + 1 and lines[end - 1][:1] in ("\n", "#"):
        end -= 1
    return "".join(lines[:start]), "".join(lines[end:])


def write_forms(repo_root: str | Path, *, check: bool = False) -> list[str]:
    """Write the generated parts of every plugin's index.json and task.yaml (`check`: write nothing) and return
    one line per file that differed, naming the fields that differ."""
    plugins = Path(repo_root) / "plugins"
    differences = []
    for settings_file in sorted(plugins.glob("*/settings.py")):
        for path, text in rendered(settings_file.parent).items():
            current = path.read_text(encoding="utf-8")
            if current == text:
                continue
            where = path.relative_to(repo_root)
            differences.append(f"{where}: {_differing_fields(path, current, text)}")
            if not check:
                path.write_text(text, encoding="utf-8")
    return differences


def _differing_fields(path: Path, current: str, wanted: str) -> str:
    try:
        old, new = (json.loads(t) if path.suffix == ".json" else yaml.safe_load(t) for t in (current, wanted))
    except (json.JSONDecodeError, yaml.YAMLError):
        return "not readable as it stands"
    if path.suffix == ".json":
        names = [
            *_changed(old.get("parameters", {}), new["parameters"]),
            *_changed(old.get("parameters_ui", {}), new["parameters_ui"]),
        ]
    else:
        names = _changed(old.get("parameters") or {}, new["parameters"])
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
