"""A user's rewards from a Python file (run only with `trust_remote_code`): the functions its `__all__` names,
else its function `reward`, each `fn(prompts, completions, **columns) -> list[float]` and known by its own name.
The columns a function needs are the parameters after the first two that have no default."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from dlm.rewards.errors import RewardSettingError
from dlm.rewards.registry import RewardSpec

DEFAULT_FUNCTION = "reward"


def load_module(path: Path) -> ModuleType:
    if not path.is_file():
        raise RewardSettingError(f"reward_file: {str(path)!r} is not a file")
    name = "dlm_reward_file_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RewardSettingError(f"reward_file: {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise RewardSettingError(
            f"reward_file {str(path)!r} failed to load: {type(error).__name__}: {error}"
        ) from error
    return module


def function_spec(name: str, function: Callable, path: Path) -> RewardSpec:
    """The reward of a file's function: the columns it asks for, and only those passed to it when it takes no
    `**columns`."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError) as error:
        raise RewardSettingError(f"reward_file {str(path)!r}: {name} has no signature to read") from error
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_all = any(p.kind is p.VAR_KEYWORD for p in parameters)
    if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        raise RewardSettingError(
            f"reward_file {str(path)!r}: {name} must take (prompts, completions, **columns), it takes {parameters}"
        )
    named = [p for p in parameters[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    columns = tuple((p.name,) for p in named if p.default is p.empty)
    if takes_all:
        return RewardSpec(name, function, columns)
    accepted = {p.name for p in named}

    def reward(prompts, completions, **given):
        return function(prompts, completions, **{key: value for key, value in given.items() if key in accepted})

    return RewardSpec(name, reward, columns)


def load_reward_file(path: str) -> tuple[RewardSpec, ...]:
    """The rewards the file at `path` defines (see the module's notes); an error naming the file otherwise."""
    file = Path(path).expanduser()
    module = load_module(file)
    names = getattr(module, "__all__", [DEFAULT_FUNCTION])
    specs = []
    for name in names:
        function = getattr(module, name, None)
        if not callable(function):
            hint = "" if hasattr(module, "__all__") else " (or list its reward functions in __all__)"
            raise RewardSettingError(f"reward_file {str(path)!r} defines no function {name!r}{hint}")
        specs.append(function_spec(name, function, file))
    if not specs:
        raise RewardSettingError(f"reward_file {str(path)!r}: its __all__ names no function")
    return tuple(specs)
