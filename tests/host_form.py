"""What the plugin-era workbench sends for a plugin's form: a reproduction of its submit rule, for tests.

Read from transformerlab-app at 7b14f5ea5 (DynamicPluginForm.tsx, TrainingModalLoRA.tsx) and before 3609a6a74
(EvalModal.tsx), with @rjsf/core 5.24.3, and checked against a real browser by tests/browser/check_forms.mjs (its
recordings are tests/fixtures/host_form/*.json):

1. DynamicPluginForm renders the index.json `parameters` with RJSF. Its `formData` state starts as the modal's
   `config`: the index.json defaults in the evaluation modal, {} for a new training template, whose defaults RJSF
   fills in and reports through onChange at once.
2. Each onChange stores the typed form data in that state and in `window.currentFormData`.
3. The modal submits `Object.fromEntries(new FormData(form))`: the entries of RJSF's own inputs, then one hidden
   input per key of the `formData` state (lists comma-joined, lists of objects as JSON, null as ""), the last entry
   of a name winning; then `Object.assign(formJson, window.currentFormData)` when that is set.
4. The training modal then sets `type`, the job type the host's dispatch reads: index.json's `train_type`, "LoRA"
   when absent.
5. The workbench's select widget (CustomSelectSimple) never calls onChange, so a choice made in one is lost: the
   form data, and with it the hidden input and currentFormData, keep the old value.
6. The evaluation modal sets no type: the host saves the submission as an evaluation task's `script_parameters` and
   queues it as an EVAL job, which it starts (transformerlab-api's `run_evaluation_script`) as the harness with
   `--key value` per submitted key (lists as JSON, anything else as Python's `str`), then its own arguments, among
   them an input file whose `config` is the submission again.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

Mode = Literal["eval", "train"]


def js_string(value: Any) -> str:
    """JavaScript's String(value) for the JSON values a form holds."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _js_number(value)
    if isinstance(value, list):
        return ",".join("" if item is None else js_string(item) for item in value)
    return str(value)


def _js_number(x: float) -> str:
    # ECMAScript Number::toString: the shortest digits, in exponent form below 1e-6 and from 1e21.
    if x == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(float(x))).normalize().as_tuple()
    text = "".join(map(str, digits))
    k, n = len(text), len(text) + exponent
    if k <= n <= 21:
        body = text + "0" * (n - k)
    elif 0 < n <= 21:
        body = text[:n] + "." + text[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + text
    else:
        mantissa = text[0] + ("." + text[1:] if k > 1 else "")
        body = f"{mantissa}e{'+' if n - 1 > 0 else '-'}{abs(n - 1)}"
    return ("-" if sign else "") + body


def widget_of(key: str, manifest: dict) -> str:
    """Which control the workbench renders for a parameter."""
    prop = manifest["parameters"][key]
    ui = manifest.get("parameters_ui", {}).get(key, {})
    chosen = ui.get("ui:widget")
    if prop["type"] == "array":
        if chosen in ("text", "TextWidget"):
            return "input"  # one text box holding the comma-joined list; the person types a string
        if chosen and chosen != "checkboxes":
            return "custom"  # RJSF hands the whole list to the named widget (AutoCompleteWidget: no named input)
        return "checkboxes" if "enum" in prop.get("items", {}) else "list"
    if prop["type"] == "boolean":
        return "checkbox"
    if "enum" in prop:
        return chosen or "select"
    return "input"


def host_submission(manifest: dict, mode: Mode, edits: dict | None = None) -> dict:
    """The object the workbench's modal submits for `manifest`'s form after a person made `edits` (parameter ->
    value as the form holds it: numbers, booleans, lists)."""
    parameters = manifest["parameters"]
    defaults = {key: prop.get("default") for key, prop in parameters.items()}
    kept = {k: v for k, v in (edits or {}).items() if widget_of(k, manifest) != "select"}
    form_data = {**defaults, **kept}
    if mode == "train":
        form_data = {k: v for k, v in form_data.items() if v is not None}  # RJSF fills in only what has a default
    posted: dict[str, Any] = {}
    for name, value in _rjsf_entries(manifest, form_data, edits or {}):
        posted[name] = value
    for key, value in form_data.items():
        posted[key] = _hidden_value(value)
    if mode == "train" or kept:  # RJSF reports its filled-in defaults at once; the evaluation modal's, on an edit
        posted.update(form_data)
    if mode == "train":
        posted["type"] = manifest.get("train_type") or "LoRA"
    return posted


def _rjsf_entries(manifest: dict, form_data: dict, edits: dict) -> list[tuple[str, str]]:
    entries = []
    for key, prop in manifest["parameters"].items():
        widget, value = widget_of(key, manifest), form_data.get(key)
        if widget == "select":
            entries.append((key, js_string(edits.get(key, value))))  # the DOM shows the choice; nothing else does
        elif widget == "radio" and value in prop["enum"]:
            entries.append((key, str(prop["enum"].index(value))))
        elif widget == "checkbox" and value:
            entries.append((key, "on"))
        elif widget == "checkboxes":
            entries += [(key, str(i)) for i, option in enumerate(prop["items"]["enum"]) if option in (value or [])]
        elif widget == "list":
            entries += [(f"{key}-{i}", js_string(item)) for i, item in enumerate(value or [])]
        elif widget == "input":
            entries.append((key, "" if value is None else js_string(value)))
    return entries


def _hidden_value(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else js_string(value)


def host_eval_arguments(submitted: dict, input_file: Path) -> list[str]:
    """The arguments the plugin-era host starts an evaluator's harness with for the evaluation modal's `submitted`
    object (after `--plugin_dir`), writing the input file it names."""
    input_file.write_text(json.dumps({"experiment": {"name": "exp", "config": {}}, "config": submitted}))
    argv = []
    for key, value in submitted.items():
        argv += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    host = {"experiment_name": "exp", "eval_name": "eval", "input_file": str(input_file), "model_name": "tiny-llada"}
    host |= {"model_path": "", "model_architecture": "LLaDAModelLM", "model_adapter": "", "job_id": "1"}
    return argv + [part for key, value in host.items() for part in (f"--{key}", value)]
