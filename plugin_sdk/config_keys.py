"""Which parameter names a job accepts, and how a config file is read, so that no value is silently dropped.

- A name is a parameter of the plugin's index.json, one of the names a host adds to every job (`HOST_KEYS`, the
  one list of them), a credential (see `is_secret`), or a documented alias (`COMMON_ALIASES`, `PRECISION_FLAGS`).
  Anything else is an error naming the key and the closest parameters.
- A config file may group its settings in nested blocks (`model:` / `training:`); they are flattened.
- YAML is read with YAML 1.2 booleans (only true/false), so `eval_strategy: no` stays the word "no" (a boolean
  parameter still reads yes/no/on/off); a key given twice is refused with both line numbers.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from plugin_sdk.errors import ParameterError
from plugin_sdk.text_checks import MAX_INT_DIGITS, NumberTooLong

# Names a host puts into a job's parameters besides the form values, from the hosts' own sources.
# Plugin era (transformerlab-app 87087118f1e8): api/transformerlab/shared/shared.py writes job_id, output_dir,
# adaptor_output_dir into the training template's config, which the UI (TrainingModalLoRA.tsx and its tabs, last
# at 89cbbd80e^) filled with the form plus model_name, model_architecture, foundation_model_file_path,
# embedding_model*, dataset_name, the alpaca templates, formatting_*, apply_chat_template, chat_column,
# chatml_formatted_column, template_name, adaptor_name, plugin_name, type and the sweep settings; plugin_sdk/plugin_harness.py adds plugin_dir; the SDK's
# train.py/evals.py/tlab_plugin.py parse input_file, experiment_name, eval_name, run_name, template_name, job_id,
# dataset_name, model_name, model_path, model_adapter, model_filename and set start_time, tensorboard_output_dir.
# Tasks era (`lab` SDK): job_data["parameters"] plus experiment_name. Local runs (this SDK): workspace.
HOST_KEYS = frozenset(
    {
        "job_id",
        "experiment_name",
        "input_file",
        "plugin_dir",
        "template_name",
        "run_name",
        "eval_name",
        "plugin_name",
        "type",
        "model_name",
        "model_architecture",
        "model_path",
        "model_filename",
        "model_adapter",
        "foundation_model_file_path",
        "embedding_model",
        "embedding_model_architecture",
        "embedding_model_file_path",
        "generation_model",
        "dataset_name",
        "output_dir",
        "adaptor_output_dir",
        "adaptor_name",
        "tensorboard_output_dir",
        "instruction_template",
        "input_template",
        "output_template",
        "formatting_template",
        "formatting_chat_template",
        "chatml_formatted_column",
        "chat_column",
        "apply_chat_template",
        "sweep_config",
        "run_sweeps",
        "sweep_metric",
        "lower_is_better",
        "start_time",
        "workspace",
    }
)

# Names users of the reference tools (HF Trainer/TRL, dllm, LaDDPO) type first, to this SDK's parameter names.
# An alias applies only when its target is a parameter of the plugin (or a host key such as model_name).
COMMON_ALIASES = {
    "model_name_or_path": "model_name",
    "pretrained_model_name_or_path": "model_name",
    "preference_data_path": "dataset",
    "data_path": "dataset",
    "per_device_train_batch_size": "batch_size",
    "max_steps": "train_steps",
    "target_modules": "lora_target_modules",
    "lr_scheduler_type": "learning_rate_schedule",
    "max_seq_length": "max_length",
}

# HF-style precision switches, read as the `dtype` they ask for.
PRECISION_FLAGS = {"bf16": "bfloat16", "fp16": "float16", "use_mixed_precision": "bfloat16"}

# A name is a credential when one of its words holds one of these (glued forms too: hubpassphrase, dbpassword) ...
_SECRET_PARTS = ("secret", "password", "passwd", "passphrase", "credential")
# ... or ends with one of these (hftoken, wandbkey, apikey, authtoken) ...
_SECRET_ENDINGS = ("token", "key", "auth")
# ... unless it is one of these ordinary words, or a bare token/key is followed by what describes it rather than
# holding it (token_dtype, pad_token_id, key_length): unknown glued names count as credentials (fail closed).
_ORDINARY_WORDS = {"monkey", "donkey", "turkey", "hockey", "jockey", "whiskey", "lackey", "hotkey"}
_DESCRIBING_WORDS = {"dtype", "type", "id", "ids", "index", "count", "length", "len", "size", "limit", "budget"}
# Values in the formats of well-known credentials are secrets whatever their parameter is called.
_CREDENTIAL_VALUE = re.compile(
    r"^(hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})$"
)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", _CAMEL_BOUNDARY.sub("_", str(name)).lower()) if w]


def is_secret(name: str) -> bool:
    """Whether a parameter name is a credential: hf_token, wandb_api_key, hfToken, HF-TOKEN, apiKey, hftoken,
    wandbkey, hub_passphrase, db-password, ... (any name with token, key, secret, password or passphrase in it).

    Words in any case style, so that max_new_tokens, tokenizer_name, keyword and token_dtype are not ones."""
    words = _words(name)
    for index, word in enumerate(words):
        if any(part in word for part in _SECRET_PARTS):
            return True
        if word.endswith(_SECRET_ENDINGS) and word not in _ORDINARY_WORDS:
            described = word in _SECRET_ENDINGS and index + 1 < len(words) and words[index + 1] in _DESCRIBING_WORDS
            if not described:
                return True
    return False


def looks_like_credential(value: Any) -> bool:
    """Whether a value has the form of a well-known access token (Hugging Face, OpenAI, GitHub, Slack, AWS)."""
    return isinstance(value, str) and bool(_CREDENTIAL_VALUE.match(value.strip()))


def is_secret_value(name: str, value: Any) -> bool:
    """Whether a parameter must stay out of files and command lines: by its name, or by the form of its value."""
    return is_secret(name) or looks_like_credential(value)


def redact(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` without its credentials, for anything written to a file or a command line."""
    return {k: v for k, v in values.items() if not is_secret_value(k, v)}


def without_secret_arguments(argv: list[str]) -> list[str]:
    """A command line's arguments less every credential (`--hftoken VALUE`, `--hftoken=VALUE`, or a value in the
    form of a token), so that a child's command line, readable by every user, never holds one; the credentials
    travel in its environment (`secret_environment`)."""
    kept: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        name, has_value, value = arg.partition("=")
        name = name.lstrip("-")
        if arg.startswith("--") and has_value:
            index += 1
            if not is_secret_value(name, value):
                kept.append(arg)
            continue
        following = argv[index + 1] if index + 1 < len(argv) and not argv[index + 1].startswith("--") else None
        if arg.startswith("--") and following is not None:
            index += 2
            if not is_secret_value(name, following):
                kept += [arg, following]
            continue
        index += 1
        if not looks_like_credential(arg) and not (arg.startswith("--") and is_secret(name)):
            kept.append(arg)
    return kept


SECRETS_ENV = "DLM_SECRET_PARAMETERS"  # how the runner hands credentials to the plugin process


def secret_environment(values: Mapping[str, Any]) -> dict[str, str]:
    """Environment variables that carry the credentials among `values` to a child process (JSON, one variable)."""
    secrets = {k: str(v) for k, v in values.items() if is_secret_value(k, v) and v not in (None, "")}
    return {SECRETS_ENV: json.dumps(secrets)} if secrets else {}


# Credentials the libraries read from the environment, by their parameter name in snake_case.
_LIBRARY_ENV = {"hf_token": "HF_TOKEN", "wandb_api_key": "WANDB_API_KEY"}


def export_library_secrets(values: Mapping[str, Any]) -> None:
    """Put hf_token / wandb_api_key (any case style) where huggingface_hub and wandb look for them."""
    for name, value in values.items():
        variable = _LIBRARY_ENV.get(_CAMEL_BOUNDARY.sub("_", str(name)).lower().replace("-", "_"))
        if variable and value not in (None, ""):
            os.environ[variable] = str(value)


def take_secret_parameters() -> dict[str, str]:
    """The credentials a parent process handed over (removed from this process's environment, so that the
    processes this one starts do not inherit them by accident)."""
    text = os.environ.pop(SECRETS_ENV, "")
    try:
        secrets = json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise ParameterError(f"{SECRETS_ENV} is not valid JSON") from None
    return {str(k): str(v) for k, v in secrets.items()} if isinstance(secrets, dict) else {}


# ---------------------------------------------------------------------------------------------------------------
# Names


def accepted_names(
    values: Mapping[str, Any], schema: Mapping[str, Any], aliases: Mapping[str, str] | None
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Translate precision flags, merge the aliases, and list the keys no one would read.

    Returns (values, aliases to resolve, problems)."""
    merged = {alias: target for alias, target in COMMON_ALIASES.items() if target in schema or target in HOST_KEYS}
    merged.update(aliases or {})
    values, problems = _translate_precision(values, schema)
    values = {name: _joined_if_text(value, schema.get(merged.get(name, name))) for name, value in values.items()}
    for name in values:
        if not _known(name, schema, merged):
            problems.append(_unknown_message(name, schema, merged))
    return values, merged, problems


def _joined_if_text(value: Any, prop: Any) -> Any:
    # `target_modules: [q_proj, v_proj]` (a list in PEFT configs) for a comma-separated text parameter
    if isinstance(prop, Mapping) and prop.get("type") == "string" and isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return value


def _known(name: str, schema: Mapping[str, Any], aliases: Mapping[str, str]) -> bool:
    name = str(name)
    target = aliases.get(name, name)
    return (
        target in schema
        or target.replace("-", "_") in schema
        or target in HOST_KEYS
        or name.startswith("_")  # host-internal (the SDK's `_config`)
        or is_secret(name)
    )


def _unknown_message(name: str, schema: Mapping[str, Any], aliases: Mapping[str, str]) -> str:
    candidates = [*schema, *(a for a, t in aliases.items() if t in schema)]
    close = difflib.get_close_matches(str(name), candidates, n=3, cutoff=0.5)
    close = [aliases.get(c, c) for c in close]
    hint = f"; closest parameters: {', '.join(dict.fromkeys(close))}" if close else ""
    return f"{name}: is not a parameter of this plugin{hint} (see its index.json or the README's aliases)"


def _translate_precision(values: Mapping[str, Any], schema: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    flags = {name: values[name] for name in PRECISION_FLAGS if name in values}
    rest = {k: v for k, v in values.items() if k not in flags}
    if not flags or "dtype" not in schema:
        return {**rest, **flags}, []
    asked = []
    for name, value in flags.items():
        word = str(value).strip().lower()
        if word not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return rest, [f"{name}: expected true or false (got {value!r})"]
        if word in ("true", "1", "yes", "on"):
            asked.append((name, PRECISION_FLAGS[name]))
    dtypes = {dtype for _, dtype in asked} or {"float32"}
    if len(dtypes) > 1:
        given = " and ".join(f"{name}=true" for name, _ in asked)
        return rest, [f"dtype: {given} ask for different precisions; set dtype to one of them"]
    dtype = dtypes.pop()
    if "dtype" in rest and str(rest["dtype"]) != dtype:
        shown = ", ".join(f"{k}={v!r}" for k, v in flags.items())
        return rest, [f"dtype: given as {rest['dtype']!r} and as {shown} (= {dtype}); give only dtype"]
    return {**rest, "dtype": dtype}, []


# ---------------------------------------------------------------------------------------------------------------
# Config files


def flatten_blocks(document: Mapping[str, Any], schema_names: set[str] | None = None, *, path: str) -> dict:
    """A config file's mapping with nested blocks (`model: {model_name_or_path: ...}`) lifted to the top level.

    A value that is a mapping is a block unless its key is itself a parameter; a key set in two blocks is refused."""
    flat: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value, where in _walk(document, schema_names or set(), ""):
        if key in flat:
            raise ParameterError(
                f"{path}: {key} is set twice ({origin[key] or 'top level'} and {where or 'top level'})"
            )
        flat[key] = value
        origin[key] = where
    return flat


def _walk(document: Mapping[str, Any], schema_names: set[str], where: str):
    for key, value in document.items():
        if isinstance(value, Mapping) and key not in schema_names:
            yield from _walk(value, schema_names, f"{where}.{key}" if where else str(key))
        else:
            yield key, value, where


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (true/false only) that refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ParameterError(f"{self.name}: {key} is given twice, at lines {seen[key]} and {line}")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = len(str(node.value).lstrip("+-").replace("_", ""))
        if digits > MAX_INT_DIGITS:
            raise ParameterError(f"{self.name}, line {node.start_mark.line + 1}: {NumberTooLong(digits)}")
        return super().construct_yaml_int(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str, path: str) -> Any:
    """Parse a YAML parameter file (see the module docstring); syntax errors name the line.

    A document whose aliases expand past MAX_CONFIG_BYTES is refused before it is built: a "billion laughs" file of
    a few lines expanded to 8.6 GB when the job's parameters were written out."""
    refuse_large_config(len(text.encode("utf-8", "surrogatepass")), path)
    loader = _StrictLoader(text)
    loader.name = path
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_CONFIG_BYTES:
            raise ParameterError(
                f"{path}: its aliases (*name) expand to more than {MAX_CONFIG_BYTES // 1024} KiB; write the values "
                "out instead of repeating anchors"
            )
        return loader.construct_document(node)
    except RecursionError:
        raise ParameterError(f"{path}: nested too deeply to read; flatten its blocks") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ParameterError(f"{path}: invalid YAML{where}: {problem}") from None
    finally:
        loader.dispose()


# A parameter file (and what its aliases expand to) is read whole and its values written into the job's input
# file, so both are bounded; real ones are a few KiB.
MAX_CONFIG_BYTES = 4 * 2**20


def refuse_large_config(size: int, path: str) -> None:
    """ParameterError when a parameter file of `size` bytes is over MAX_CONFIG_BYTES."""
    if size > MAX_CONFIG_BYTES:
        raise ParameterError(
            f"{path}: {size} bytes is over the {MAX_CONFIG_BYTES // 1024} KiB a parameter file may have; "
            "give data as a dataset, not inside the parameters"
        )


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Characters of `node` with every alias written out (each shared node counted once per use, computed once)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.ScalarNode):
        size = len(node.value) + 1
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    sizes[id(node)] = size
    return size
