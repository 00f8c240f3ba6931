"""Plugin parameters: read them from the host's launch arguments (or a standalone config file) and coerce the
form values, which arrive as strings, to the types the plugin's index.json declares.

Coercion rules (one place, so that every plugin agrees):

- integer: ints, whole floats and strings such as "4", "-2", "4.0", "1e3"; "4.5" is refused. Booleans are refused.
- number: ints, floats and strings such as "0.1", "2e-05"; NaN and infinities are refused.
- boolean: booleans, 0/1, and the strings true/false, yes/no, on/off, 1/0 (any case, surrounding spaces ignored).
  Any other string is refused: "False" is never read as true.
- array: lists, a JSON list string ('["a", "b"]', '[1, 2]') or a comma-joined string ("a, b"); items are coerced by
  the property's `items` schema. "" is the empty list (the workbench posts a cleared list as "", and an empty list
  turns a list parameter off).
- string: kept exactly as given ("None" and "" stay strings); numbers become their text, booleans "true"/"false".
- A value that is None, for a number, integer or boolean "" / "None" / "null" (what a host writes for an unset
  field), for an array "None" / "null", or "" for a string whose `enum` lacks "", counts as not given: the default applies, and a required field without a
  default is reported missing.

Keys the schema does not declare are kept as given when a host adds them (job_id, model_name, output_dir, ...) or
they are credentials; any other key is an error naming it (see plugin_sdk.config_keys, which also holds the aliases
and the YAML reading rules). The per-item entries of a list parameter that a form posts (`mask_ratios-0`,
`mask_ratios-1`, ...) are dropped when the list itself (`mask_ratios`) is given, else they are the list.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from plugin_sdk.config_keys import accepted_names, flatten_blocks, load_yaml, refuse_large_config
from plugin_sdk.errors import ParameterError
from plugin_sdk.text_checks import NumberTooLong, load_json, lone_surrogate, read_int

Origin = Literal["input_file", "arguments", "config"]

PARAMETER_TYPES = ("string", "integer", "number", "boolean", "array")

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_UNSET_WORDS = frozenset({"", "none", "null"})
_INT_PATTERN = re.compile(r"[+-]?\d+")
_ITEM_COPY = re.compile(r"(.+?)-?(\d+)")


@dataclass
class RawParameters:
    """Parameter values as the launch gave them, before coercion."""

    values: dict[str, Any]
    experiment: dict | None
    origin: Origin
    files: list[str] = field(default_factory=list)  # the parameter files that were read, in order


class Params(dict):
    """Coerced parameters: a dict whose keys are also attributes (`params.learning_rate`).

    A missing attribute raises AttributeError naming close matches; use `params.get(name)` for optional keys.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            if name.startswith("__"):
                raise AttributeError(name) from None
            close = difflib.get_close_matches(name, [k for k in self if isinstance(k, str)], n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise AttributeError(
                f"no parameter named {name!r}{hint} (use params.get({name!r}) for an optional value)"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"no parameter named {name!r}") from None


# ---------------------------------------------------------------------------------------------------------------
# Reading the launch arguments


def read_raw_parameters(argv: Sequence[str]) -> RawParameters:
    """Collect parameter values from the command line (without the program name).

    Accepted forms, which may be combined with extra `--key value` arguments:
    - `--input_file F`: the host's trainer input `{"experiment": {...}, "config": {...}}`; values come from `config`.
      (The host's evaluator launch passes form fields as arguments *and* an input file; a file without `config`
      only contributes `experiment`.)
    - `--key value`, `--key=value`, and `--flag` alone (= "true"): evaluator-style arguments, all strings.
    - `--config FILE.yaml|.yml|.json` (a mapping of values, or `{"config": {...}}`) and repeated `--set key=value`.
    Files form the base; command-line values override them, later ones winning.
    """
    pairs = _split_arguments(argv)
    input_file = None
    config_files: list[str] = []
    overrides: list[tuple[str, str]] = []
    for key, value in pairs:
        if key == "input_file":
            input_file = value
        elif key in ("config", "config_file"):
            config_files.append(value)
        elif key == "set":
            name, sep, setting = value.partition("=")
            if not sep or not name.strip():
                raise ParameterError(f"--set expects name=value, got {value!r}")
            overrides.append((name.strip(), setting))
        else:
            overrides.append((key, value))
    if input_file is not None and config_files:
        raise ParameterError("use either --input_file (host launch) or --config (standalone run), not both")

    values: dict[str, Any] = {}
    experiment = None
    origin: Origin = "arguments"
    files: list[str] = []
    if input_file is not None:
        document = _read_parameter_file(input_file, default_format="json")
        files.append(input_file)
        if not isinstance(document, dict):
            raise ParameterError(f"{input_file}: expected a JSON object with 'experiment' and 'config' keys")
        experiment = document.get("experiment")
        if experiment is not None and not isinstance(experiment, dict):
            raise ParameterError(f"{input_file}: 'experiment' must be an object, got {type(experiment).__name__}")
        config = _config_object(document.get("config"), input_file)
        if config is not None:
            values.update(config)
            origin = "input_file"
        values["input_file"] = input_file
    for path in config_files:
        document = _read_parameter_file(path, default_format=None)
        files.append(path)
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise ParameterError(f"{path}: expected a mapping of parameter names to values")
        if isinstance(document.get("config"), dict) and set(document) <= {"config", "experiment"}:
            experiment = document.get("experiment", experiment)
            document = document["config"]
        values.update(flatten_blocks(document, path=path))
        origin = "config"
    for key, value in overrides:
        values[key] = value
    return RawParameters(values=values, experiment=experiment, origin=origin, files=files)


def _split_arguments(argv: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            raise ParameterError(
                f"unexpected command-line argument {token!r}: expected --name value, --name=value or --flag"
            )
        body = token[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 2
        else:
            key, value = body, "true"
            i += 1
        if not key:
            raise ParameterError(f"command-line argument {token!r} has no name")
        pairs.append((key, value))
    return pairs


def _config_object(config: Any, path: str) -> dict | None:
    # Older hosts stored the job config as a JSON string inside the input file.
    if isinstance(config, str):
        try:
            config = json.loads(config) if config.strip() else None
        except json.JSONDecodeError as err:
            raise ParameterError(f"{path}: 'config' is a string that is not valid JSON: {err.msg}") from None
    if config is None or isinstance(config, dict):
        return config
    raise ParameterError(f"{path}: 'config' must be an object, got {type(config).__name__}")


def _read_parameter_file(path: str, *, default_format: str | None) -> Any:
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in (".yaml", ".yml"):
        kind = "yaml"
    elif suffix == ".json" or default_format == "json":
        kind = "json"
    else:
        raise ParameterError(f"parameter file {path} must end with .yaml, .yml or .json")
    if not file.exists():
        raise ParameterError(f"parameter file {path} does not exist")
    if not file.is_file():
        raise ParameterError(f"parameter file {path} is not a file")
    try:
        refuse_large_config(file.stat().st_size, path)
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ParameterError(f"cannot read parameter file {path}: {err}") from None
    if kind == "json":
        try:
            return load_json(text)
        except json.JSONDecodeError as err:
            raise ParameterError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        except NumberTooLong as err:
            raise ParameterError(f"{path}: {err}") from None
        except RecursionError:
            raise ParameterError(f"{path}: nested too deeply to read; flatten its blocks") from None
    return load_yaml(text, path)


# ---------------------------------------------------------------------------------------------------------------
# Coercion and validation


class _Invalid(Exception):
    """A value that cannot be coerced to its declared type; the message is the rule it broke."""


_ABSENT = object()


def coerce_and_validate(
    values: Mapping[str, Any], schema: Mapping[str, dict], *, aliases: Mapping[str, str] | None = None
) -> Params:
    """Coerce `values` to the types of `schema` (index.json `parameters`) and check every rule.

    Absent parameters get their default (or None). Keys the schema does not declare are kept as given. `aliases` maps
    accepted alternative names to canonical ones; a dash-separated spelling of a declared name is accepted too.
    Every problem is collected, then one ParameterError lists them all.
    """
    values, aliases, problems = accepted_names(_gather_item_copies(values, schema), schema, aliases)
    given = _resolve_aliases(values, schema, aliases, problems)
    result = Params()
    for key, value in given.items():
        if key not in schema:
            result[key] = value
    for key, prop in schema.items():
        label = _label(key, prop)
        value = given.get(key, _ABSENT)
        shown = "got {}"
        if value is _ABSENT or _is_unset(value, prop):
            value = prop.get("default", _ABSENT)
            shown = "the default in index.json is {}"
        if value is _ABSENT or _is_unset(value, prop):
            if prop.get("required") is True:
                problems.append(f"{label}: is required but was not given")
            result[key] = None
            continue
        coerced, broken = check_value(value, prop)
        if prop.get("required") is True and not broken and coerced in ("", []):
            broken = ["is required but is empty"]
        problems.extend(f"{label}: {rule} ({shown.format(_brief(value))})" for rule in broken)
        result[key] = coerced
    if problems:
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        error = ParameterError(f"Invalid parameters ({count}):\n" + "\n".join(f"  - {p}" for p in problems))
        error.problems = problems
        raise error
    return result


def check_value(value: Any, prop: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """Coerce one value to the property's type and return it with the rules it breaks (empty when valid)."""
    kind = prop.get("type")
    try:
        coerced = _COERCERS[kind](value, prop) if kind in _COERCERS else value
    except _Invalid as err:
        return value, [str(err)]
    broken = []
    surrogate = lone_surrogate(coerced)
    if surrogate:
        return value, [f"holds {surrogate}, a lone surrogate escape that is not a character"]
    if isinstance(coerced, list) and isinstance(prop.get("items"), Mapping):
        for i, item in enumerate(coerced):
            coerced[i], item_broken = check_value(item, prop["items"])
            broken.extend(f"item {i} ({item!r}) {rule}" for rule in item_broken)
    if "enum" in prop and not _in_enum(coerced, prop["enum"]):
        choices = ", ".join(repr(choice) for choice in prop["enum"])
        broken.append(f"must be one of {choices}{_option_index_hint(coerced, prop)}")
    if isinstance(coerced, int | float) and not isinstance(coerced, bool):
        broken.extend(_range_problems(coerced, prop))
    return coerced, broken


def _gather_item_copies(values: Mapping[str, Any], schema: Mapping[str, dict]) -> dict[str, Any]:
    # RJSF's list widget posts each item as `<key>-<i>` (`<key><i>` in older versions); the workbench adds the whole
    # list as `<key>`, which wins. Without it, the items in index order are the list.
    items: dict[str, dict[int, Any]] = {}
    kept = {}
    for name, value in values.items():
        match = _ITEM_COPY.fullmatch(name) if name not in schema else None
        key = match and match.group(1)
        if key and schema.get(key, {}).get("type") == "array":
            items.setdefault(key, {})[int(match.group(2))] = value
        else:
            kept[name] = value
    for key, by_index in items.items():
        kept.setdefault(key, [by_index[i] for i in sorted(by_index)])
    return kept


def _option_index_hint(item: Any, prop: Mapping[str, Any]) -> str:
    # A checkbox or radio group read without the workbench's hidden inputs posts the option's position, not its name.
    choices = prop.get("enum")
    if not (isinstance(item, str) and item.isdigit() and isinstance(choices, list) and int(item) < len(choices)):
        return ""
    return (
        f"; {item!r} looks like the position of option {choices[int(item)]!r}, which is what a checkbox or radio "
        "group posts when the form is read without its hidden inputs: give the option names"
    )


def _resolve_aliases(
    values: Mapping[str, Any], schema: Mapping[str, dict], aliases: Mapping[str, str], problems: list[str]
) -> dict[str, Any]:
    names_by_key: dict[str, list[str]] = {}
    for name in values:
        key = aliases.get(name, name)
        if key not in schema and "-" in key and key.replace("-", "_") in schema:
            key = key.replace("-", "_")
        names_by_key.setdefault(key, []).append(name)
    resolved = {}
    for key, names in names_by_key.items():
        distinct = {str(values[name]) for name in names}
        if len(distinct) > 1:
            given = " and ".join(f"{name}={values[name]!r}" for name in names)
            problems.append(f"{key}: given twice under different names ({given}); give only {key!r}")
        # Prefer the canonical spelling when both were given with the same value.
        resolved[key] = values[key] if key in names else values[names[-1]]
    return resolved


def _brief(value: Any) -> str:
    """The value as an error shows it: its repr, cut when long (a pasted file, a 5000-digit number)."""
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:100]}... ({len(text)} characters)"


def _label(key: str, prop: Mapping[str, Any]) -> str:
    title = prop.get("title")
    return f"{key} ({title})" if isinstance(title, str) and title and title != key else key


def _is_unset(value: Any, prop: Mapping[str, Any]) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    if prop.get("type") == "string":
        return value == "" and isinstance(prop.get("enum"), list) and "" not in prop["enum"]
    if prop.get("type") == "array":
        return value.strip().lower() in _UNSET_WORDS - {""}
    return value.strip().lower() in _UNSET_WORDS


def _to_integer(value: Any, prop: Mapping[str, Any]) -> int:
    if isinstance(value, bool):
        raise _Invalid("expected an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INT_PATTERN.fullmatch(text):
            try:
                return read_int(text)
            except NumberTooLong as err:
                raise _Invalid(f"expected an integer, got {err}") from None
        try:
            value = float(text)
        except ValueError:
            raise _Invalid("expected an integer") from None
    if isinstance(value, float) and math.isfinite(value):
        if value.is_integer():
            return int(value)
        raise _Invalid("expected a whole number")
    raise _Invalid("expected an integer")


def _to_number(value: Any, prop: Mapping[str, Any]) -> float:
    if isinstance(value, bool):
        raise _Invalid("expected a number, not a boolean")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _Invalid("expected a number such as 0.1 or 2e-05") from None
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _Invalid("expected a finite number")
        return float(value)
    raise _Invalid("expected a number")


def _to_boolean(value: Any, prop: Mapping[str, Any]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _Invalid("expected true or false (also accepted: yes/no, on/off, 1/0)")


def _to_string(value: Any, prop: Mapping[str, Any]) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise _Invalid(f"expected text, not a {type(value).__name__}")


def _to_array(value: Any, prop: Mapping[str, Any]) -> list:
    if isinstance(value, list | tuple):
        return list(value)
    if not isinstance(value, str):
        raise _Invalid(f"expected a list, not a {type(value).__name__}")
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = load_json(text)
        except json.JSONDecodeError as err:
            raise _Invalid(f"is not a valid JSON list ({err.msg} at column {err.colno})") from None
        except NumberTooLong as err:
            raise _Invalid(f"holds {err}") from None
        return parsed  # JSON text that opens with "[" is a list or does not parse
    return [part.strip() for part in text.split(",") if part.strip()]


_COERCERS = {
    "integer": _to_integer,
    "number": _to_number,
    "boolean": _to_boolean,
    "string": _to_string,
    "array": _to_array,
}


def _in_enum(value: Any, choices: Any) -> bool:
    if not isinstance(choices, list):
        return True
    # 1 == True in Python; a boolean must match a boolean choice and a number a number.
    return any(value == choice and isinstance(value, bool) == isinstance(choice, bool) for choice in choices)


def _range_problems(value: float, prop: Mapping[str, Any]) -> list[str]:
    broken = []
    if _is_number(prop.get("minimum")) and value < prop["minimum"]:
        broken.append(f"must be at least {prop['minimum']}")
    if _is_number(prop.get("maximum")) and value > prop["maximum"]:
        broken.append(f"must be at most {prop['maximum']}")
    if _is_number(prop.get("exclusiveMinimum")) and value <= prop["exclusiveMinimum"]:
        broken.append(f"must be greater than {prop['exclusiveMinimum']}")
    if _is_number(prop.get("exclusiveMaximum")) and value >= prop["exclusiveMaximum"]:
        broken.append(f"must be less than {prop['exclusiveMaximum']}")
    step = prop.get("multipleOf")
    if _is_number(step) and step > 0 and not _is_multiple(value, step):
        broken.append(f"must be a multiple of {step}")
    return broken


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_multiple(value: float, step: float) -> bool:
    if isinstance(value, int) and isinstance(step, int):
        return value % step == 0
    # Decimal steps such as 0.1 are not exact in binary: 0.3 / 0.1 = 2.9999999999999996.
    quotient = value / step
    return math.isclose(quotient, round(quotient), rel_tol=1e-9, abs_tol=1e-9)
