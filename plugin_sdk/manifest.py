"""Plugin manifests (index.json): loading, and the checks the host's validator and UI rely on."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from plugin_sdk.errors import ParameterError, PluginError
from plugin_sdk.params import PARAMETER_TYPES, check_value, coerce_and_validate

HOST_REQUIRED_KEYS = (
    "name",
    "uniqueId",
    "description",
    "plugin-format",
    "type",
    "version",
    "files",
    "setup-script",
    "supported_hardware_architectures",
)
PLUGIN_TYPES = ("trainer", "evaluator", "loader", "generator", "exporter", "rag", "diffusion")
HARDWARE_ARCHITECTURES = ("cuda", "amd", "mlx", "cpu")
EVALS_TYPES = ("model", "dataset")
TEMPLATE_FORMATS = ("alpaca", "chat", "none")
GALLERY_KEYS = ("uniqueId", "name", "type", "version", "description", "path")
# The job types the plugin-era host's dispatch (shared.py run_job) starts; the training form copies `train_type`
# into the job's type and uses "LoRA" when it is absent, and any other type is never started.
DISPATCHED_TRAIN_TYPES = ("LoRA", "pretraining", "embedding")


def load_manifest(plugin_dir: str | Path) -> dict:
    """Read `<plugin_dir>/index.json` as a dict; PluginError if it is missing or not a JSON object."""
    return _read_json(Path(plugin_dir) / "index.json", dict, "a JSON object")


def validate_plugin(plugin_dir: str | Path) -> list[str]:
    """Every problem that would stop the host from installing the plugin or the UI from showing its form."""
    folder = Path(plugin_dir)
    try:
        manifest = load_manifest(folder)
    except PluginError as err:
        return [str(err)]
    where = f"{folder.name}/index.json"
    problems = [f"{where}: {p}" for p in _metadata_problems(manifest, folder)]
    problems += [f"{where}: {p}" for p in _parameter_problems(manifest)]
    return problems


def gallery_entry(plugin_dir: str | Path) -> dict:
    """The top-level index.json entry that describes the plugin in `plugin_dir` (a folder under `plugins/`)."""
    manifest = load_manifest(plugin_dir)
    entry = {key: manifest.get(key) for key in GALLERY_KEYS if key != "path"}
    entry["path"] = f"plugins/{Path(plugin_dir).name}"
    return entry


def validate_gallery(repo_root: str | Path) -> list[str]:
    """Check the repository's top-level index.json (a JSON list of plugin entries) against `plugins/`.

    The list must name each folder of `plugins/` exactly once, each entry's `uniqueId`, `name`, `type`, `version` and
    `description` must equal the plugin's own index.json and `path` must be `plugins/<uniqueId>`; then every plugin
    is validated.
    """
    root = Path(repo_root)
    try:
        entries = _read_json(root / "index.json", list, "a JSON list of plugin entries")
    except PluginError as err:
        return [str(err)]
    folders = _plugin_folders(root)
    problems = []
    listed: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"index.json: entry {i} must be an object, got {type(entry).__name__}")
            continue
        missing = [key for key in GALLERY_KEYS if key not in entry]
        if missing:
            problems.append(f"index.json: entry {i} lacks {', '.join(missing)}")
        uid = entry.get("uniqueId")
        if not isinstance(uid, str):
            continue
        if uid in listed:
            problems.append(f"index.json: {uid!r} is listed twice")
            continue
        listed.add(uid)
        if entry.get("path") != f"plugins/{uid}":
            problems.append(f"index.json: {uid!r} has path {entry.get('path')!r}; expected 'plugins/{uid}'")
        if uid not in folders:
            problems.append(f"index.json: {uid!r} is listed but plugins/{uid} does not exist")
            continue
        try:
            expected = gallery_entry(root / "plugins" / uid)
        except PluginError:
            continue  # reported by validate_plugin below
        for key in GALLERY_KEYS:
            if key in entry and entry[key] != expected[key]:
                problems.append(
                    f"index.json: {uid!r} has {key} {entry[key]!r} but plugins/{uid}/index.json has {expected[key]!r}"
                )
    problems += [f"index.json: plugins/{name} is not listed" for name in sorted(set(folders) - listed)]
    for name in folders:
        problems += validate_plugin(root / "plugins" / name)
    return problems


def find_plugin(plugin_id: str, repo_root: str | Path) -> Path:
    """The folder of plugin `plugin_id` under `<repo_root>/plugins`; PluginError listing the known ids otherwise."""
    root = Path(repo_root)
    folders = _plugin_folders(root)
    if plugin_id in folders and (root / "plugins" / plugin_id / "index.json").is_file():
        return root / "plugins" / plugin_id
    known = ", ".join(folders) or "none"
    raise PluginError(f"unknown plugin {plugin_id!r}; plugins in {root / 'plugins'}: {known}")


def _plugin_folders(root: Path) -> list[str]:
    plugins = root / "plugins"
    if not plugins.is_dir():
        return []
    return sorted(d.name for d in plugins.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))


def _read_json(path: Path, kind: type, described: str) -> Any:
    if not path.is_file():
        raise PluginError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PluginError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PluginError(f"cannot read {path}: {err}") from None
    if not isinstance(data, kind):
        raise PluginError(f"{path}: expected {described}, got {type(data).__name__}")
    return data


def _metadata_problems(manifest: dict, folder: Path) -> list[str]:
    problems = [f"missing required key {key!r}" for key in HOST_REQUIRED_KEYS if key not in manifest]
    for key in ("name", "uniqueId", "description", "version"):
        if key in manifest and not (isinstance(manifest[key], str) and manifest[key].strip()):
            problems.append(f"{key!r} must be a non-empty string")
    if "uniqueId" in manifest and manifest["uniqueId"] != folder.name:
        problems.append(f"uniqueId {manifest['uniqueId']!r} must equal the folder name {folder.name!r}")
    if "plugin-format" in manifest and manifest["plugin-format"] != "python":
        problems.append(f"'plugin-format' is {manifest['plugin-format']!r}; it must be 'python'")
    if "type" in manifest and manifest["type"] not in PLUGIN_TYPES:
        problems.append(f"'type' is {manifest['type']!r}; expected one of {', '.join(PLUGIN_TYPES)}")
    if "setup-script" in manifest and manifest["setup-script"] != "setup.sh":
        problems.append(f"'setup-script' is {manifest['setup-script']!r}; it must be 'setup.sh'")
    for required_file in ("main.py", "setup.sh"):
        if not (folder / required_file).is_file():
            problems.append(f"the plugin folder has no {required_file}")
    files = manifest.get("files", [])
    if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        problems.append("'files' must be a list of file names")
    else:
        problems += [
            f"'files' lists {name!r}, which is not in the plugin folder" for name in files if not _inside(folder, name)
        ]
    hardware = manifest.get("supported_hardware_architectures", [])
    if not (isinstance(hardware, list) and hardware and all(isinstance(h, str) for h in hardware)):
        problems.append("'supported_hardware_architectures' must be a non-empty list of strings")
    else:
        unknown = [h for h in hardware if h not in HARDWARE_ARCHITECTURES]
        if unknown:
            problems.append(
                f"'supported_hardware_architectures' has unknown {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(HARDWARE_ARCHITECTURES)}"
            )
    if manifest.get("type") == "evaluator" and manifest.get("evalsType") not in EVALS_TYPES:
        problems.append(
            f"evaluators need 'evalsType' set to 'model' or 'dataset' (got {manifest.get('evalsType')!r}); "
            "without it the host does not list the plugin"
        )
    architectures = manifest.get("model_architectures", [])
    if not (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
        problems.append("'model_architectures' must be a list of architecture names")
    if "train_type" in manifest and manifest["train_type"] not in DISPATCHED_TRAIN_TYPES:
        problems.append(
            f"'train_type' is {manifest['train_type']!r}: the workbench never starts that job type; "
            f"leave it out or use one of {', '.join(DISPATCHED_TRAIN_TYPES)}"
        )
    if "training_template_format" in manifest and manifest["training_template_format"] not in TEMPLATE_FORMATS:
        problems.append(
            f"'training_template_format' is {manifest['training_template_format']!r}; "
            f"expected one of {', '.join(TEMPLATE_FORMATS)}"
        )
    return problems


def _inside(folder: Path, name: str) -> bool:
    path = (folder / name).resolve()
    return path.is_file() and path.is_relative_to(folder.resolve())


def _parameter_problems(manifest: dict) -> list[str]:
    parameters = manifest.get("parameters", {})
    ui = manifest.get("parameters_ui", {})
    aliases = manifest.get("parameter_aliases", {})
    if not isinstance(parameters, dict):
        return ["'parameters' must be an object mapping parameter names to properties"]
    problems = []
    if not isinstance(ui, dict):
        problems.append("'parameters_ui' must be an object")
        ui = {}
    for key, prop in parameters.items():
        if not isinstance(prop, dict):
            problems.append(f"parameter {key!r} must be an object, got {type(prop).__name__}")
            continue
        problems += [f"parameter {key!r}: {p}" for p in _property_problems(key, prop)]
        ui_entry = ui.get(key)
        help_text = ui_entry.get("ui:help") if isinstance(ui_entry, dict) else None
        widget = ui_entry.get("ui:widget", "select") if isinstance(ui_entry, dict) else "select"
        if prop.get("type") == "string" and "enum" in prop and widget in ("select", "SelectWidget"):
            problems.append(
                f"parameter {key!r}: give the choice parameters_ui.{key}.ui:widget 'radio': the workbench's select "
                "widget never passes a changed choice on, so the job would run with the default"
            )
        if not any(isinstance(t, str) and t.strip() for t in (prop.get("description"), help_text)):
            problems.append(f"parameter {key!r} has no help text: add 'description' or parameters_ui.{key}.ui:help")
    problems += _order_problems(ui.get("ui:order"), parameters)
    for key, entry in ui.items():
        if key.startswith("ui:"):
            continue
        if key not in parameters:
            problems.append(f"parameters_ui has {key!r}, which is not a parameter")
        elif not isinstance(entry, dict):
            problems.append(f"parameters_ui.{key} must be an object")
    if not isinstance(aliases, dict):
        return problems + ["'parameter_aliases' must map alternative names to parameter names"]
    for alias, target in aliases.items():
        if target not in parameters:
            problems.append(f"parameter_aliases maps {alias!r} to {target!r}, which is not a parameter")
        if alias in parameters:
            problems.append(f"parameter_aliases: {alias!r} is itself a parameter and cannot be an alias")
    return problems


def _order_problems(order: Any, parameters: dict) -> list[str]:
    # RJSF refuses to render a form whose ui:order misses a property (unless "*" stands for the rest).
    if order is None:
        return []
    if not (isinstance(order, list) and all(isinstance(k, str) for k in order)):
        return ["parameters_ui.ui:order must be a list of parameter names"]
    problems = [
        f"parameters_ui.ui:order names {k!r}, which is not a parameter"
        for k in order
        if k not in parameters and k != "*"
    ]
    problems += [f"parameters_ui.ui:order names {k!r} twice" for k in sorted({k for k in order if order.count(k) > 1})]
    if "*" not in order:
        problems += [f"parameters_ui.ui:order lacks {k!r}" for k in parameters if k not in order]
    return problems


def _property_problems(key: str, prop: dict) -> list[str]:
    problems = []
    if "required" in prop and not isinstance(prop["required"], bool):
        problems.append(f"'required' must be true or false inside the property, got {prop['required']!r}")
    schema = {k: v for k, v in prop.items() if k != "required"}
    for err in sorted(_meta_validator().iter_errors(schema), key=lambda e: list(e.path)):
        at = "/".join(str(p) for p in err.path)
        problems.append(f"not a valid JSON Schema property{f' at {at}' if at else ''}: {err.message}")
    kind = prop.get("type")
    if kind not in PARAMETER_TYPES:
        problems.append(f"'type' is {kind!r}; expected one of {', '.join(PARAMETER_TYPES)}")
        return problems
    if kind == "array":
        items = prop.get("items")
        if not (isinstance(items, dict) and items.get("type") in PARAMETER_TYPES):
            problems.append(f"arrays need 'items' with a 'type' from {', '.join(PARAMETER_TYPES)}")
    if problems:
        return problems
    for choice in prop.get("enum", []):
        _, broken = check_value(choice, {k: v for k, v in schema.items() if k != "enum"})
        problems += [f"enum choice {choice!r} {rule}" for rule in broken]
    if "default" in prop:
        try:
            coerce_and_validate({key: prop["default"]}, {key: schema})
        except ParameterError as err:
            problems += [f"bad default: {p}" for p in err.problems]
    return problems


@cache
def _meta_validator() -> Any:
    from jsonschema import Draft7Validator

    return Draft7Validator(Draft7Validator.META_SCHEMA)
