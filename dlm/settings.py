"""`setting`: a dataclass field that carries what a form, a task file and `--help` show of it (TRL's
`field(metadata={"help": ...})`, widened). The metadata is a plain dict under the key `"form"`, so a reader needs
nothing of dlm: `plugin_sdk.forms` turns such fields into a plugin's index.json form and task.yaml parameters.

Keys of the dict (only those given are present): title, help (the description under the field), group (where
`--help` lists it), type (a JSON-schema type, when the annotation does not say it), choices, minimum, maximum,
exclusive_minimum, multiple_of, items (the JSON schema of a list's items), unique_items, and for the form's layout
widget, choice_labels, ui_help (help shown beside the field), placeholder and ui_options; for the task form of today's
Transformer Lab, task_widget (its `ui_widget`, e.g. the host's `lab_dataset_select` picker), task_help (its
description where the help speaks of the plugin-era workbench) and required.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Self

FORM = "form"  # the metadata key


def setting(
    default: Any,
    *,
    title: str,
    group: str,
    help: str | None = None,
    type: str | None = None,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    multiple_of: float | None = None,
    items: Mapping[str, Any] | None = None,
    unique_items: bool | None = None,
    widget: str | None = None,
    choice_labels: Sequence[str] | None = None,
    ui_help: str | None = None,
    placeholder: str | None = None,
    ui_options: Mapping[str, Any] | None = None,
    task_widget: str | None = None,
    task_help: str | None = None,
    required: bool | None = None,
) -> Any:
    """A dataclass field with default `default` and its form metadata. A list or tuple default is stored as a tuple
    (a field default must not be shared mutable state)."""
    described = {
        "title": title,
        "group": group,
        "help": help,
        "type": type,
        "choices": tuple(choices) if choices is not None else None,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "multiple_of": multiple_of,
        "items": dict(items) if items is not None else None,
        "unique_items": unique_items,
        "widget": widget,
        "choice_labels": tuple(choice_labels) if choice_labels is not None else None,
        "ui_help": ui_help,
        "placeholder": placeholder,
        "ui_options": dict(ui_options) if ui_options is not None else None,
        "task_widget": task_widget,
        "task_help": task_help,
        "required": required,
    }
    metadata = {FORM: {key: value for key, value in described.items() if value is not None}}
    if isinstance(default, list | tuple):
        default = tuple(default)
    return dataclasses.field(default=default, metadata=metadata)


class FromParams:
    """`from_params` for a settings dataclass."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> Self:
        """The settings from a job's parameters (unknown names and None values ignored), then `overrides`."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in params.items() if k in names and v is not None}
        return cls(**{**values, **overrides})
