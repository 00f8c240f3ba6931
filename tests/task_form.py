"""What today's Transformer Lab does with a task's typed parameters, from the Queue Task modal to
`job_data.parameters`: a reproduction of its rules, for tests.

Read from transformerlab-app at db4ce30840db (checked against a real browser by
tests/browser/task_form/check_task_form.mjs; its recordings are tests/fixtures/task_form/*.json):

1. The modal (QueueTaskModal/index.tsx `parseParameter`) reads each task.yaml parameter that is a mapping with
   type/default/min/max/options/enum as a declaration, whose value starts as its `default` ('' without one).
2. ParameterInput.tsx sends what each widget holds: a number field `Number(text)`, or '' when cleared; a switch
   true/false; a radio row or a select (the model and dataset pickers too) the option's text; any other field its
   text, as typed. A model or dataset picker whose value is none of its items (an empty default) is null from the
   first render on (Joy's Select reports it so), until an item is chosen or "Enter any string" is ticked, which
   makes a null ''.
3. On submit (`handleSubmit`) every bound (`min`/`max`) is checked with `Number(value)` and the first one broken
   refuses the submission; otherwise `config[key] = value` for every parameter, then the launch settings.
4. Tasks.tsx `handleQueueSubmit` strips the modal-only settings (`STRIPPED`) and posts the task's declarations as
   `parameters` and the rest as `config`; launch_template.py stores `{**parameters, **config}` (secrets replaced)
   as `job_data.parameters`, which `lab.get_config()` returns to the task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

_DECLARATION_KEYS = ("type", "default", "min", "max", "options", "enum")
_NUMBER_TYPES = ("int", "integer", "float", "number")
PICKERS = ("lab_model_select", "lab_dataset_select")
# Tasks.tsx handleQueueSubmit: the modal's settings that do not reach `config`
STRIPPED = (
    "provider_id",
    "provider_name",
    "description",
    "enable_trackio",
    "enable_profiling",
    "enable_profiling_torch",
    "cpus",
    "memory",
    "disk_space",
    "accelerators",
    "num_nodes",
    "minutes_requested",
)


def initial_value(declaration: Any) -> Any:
    """The value the modal starts a parameter with (`parseParameter`)."""
    if isinstance(declaration, Mapping) and any(key in declaration for key in _DECLARATION_KEYS):
        return declaration.get("default", "")
    return declaration


def js_number(text: str) -> int | float:
    """JavaScript's `Number(text)` as JSON carries it: a whole number is an int."""
    value = float(text)
    return int(value) if math.isfinite(value) and value.is_integer() else value


def modal_submission(
    declared: Mapping[str, Any], actions: Sequence[Sequence[str]], listed: Sequence[str] = ()
) -> tuple[str | None, dict | None]:
    """The modal's (refusal, config) after `actions` (check_task_form.mjs's: fill, switch, radio, choose, custom),
    with the pickers listing `listed`."""
    values = {key: initial_value(declaration) for key, declaration in declared.items()}
    for key, declaration in declared.items():
        if isinstance(declaration, Mapping) and declaration.get("ui_widget") in PICKERS and values[key] not in listed:
            values[key] = None
    for kind, key, *rest in actions:
        declaration = declared[key] if isinstance(declared[key], Mapping) else {}
        if kind == "fill" and declaration.get("type") in _NUMBER_TYPES:
            values[key] = js_number(rest[0]) if rest[0] != "" else ""
        elif kind in ("fill", "radio", "choose"):
            values[key] = rest[0]
        elif kind == "switch":
            values[key] = not values[key]
        elif kind == "custom":
            values[key] = "" if values[key] is None else values[key]
        else:
            raise ValueError(f"unknown action {kind}")
    for key, value in values.items():
        refusal = _bound_broken(declared[key], value)
        if refusal:
            return f"{key}: {refusal}", None
    return None, values


def _bound_broken(declaration: Any, value: Any) -> str | None:
    if not isinstance(declaration, Mapping):
        return None
    number = _js_to_number(value)
    if "min" in declaration and not math.isnan(number) and number < declaration["min"]:
        return f"Minimum value is {_js_text(declaration['min'])}"
    if "max" in declaration and not math.isnan(number) and number > declaration["max"]:
        return f"Maximum value is {_js_text(declaration['max'])}"
    return None


def _js_text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _js_to_number(value: Any) -> float:
    # Number(value): '' is 0, booleans 0/1, text that is no number NaN
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if text == "":
        return 0.0
    try:
        return float(text)
    except ValueError:
        return math.nan


def job_parameters(declared: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any] | None:
    """`job_data.parameters` of the job a submission launches (Tasks.tsx, then launch_template.py)."""
    sent = {key: value for key, value in config.items() if key not in STRIPPED}
    merged = {**declared, **sent}
    return merged or None
