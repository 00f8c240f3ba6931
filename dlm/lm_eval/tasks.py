"""lm-eval tasks by name, pattern, YAML file or folder: loaded with errors that say what to fix, and task code
(`!function` in local YAMLs) refused unless trusted."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from dlm.lm_eval.errors import LmEvalError

NETWORK_ERRORS = ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "ReadTimeout")

Log = Callable[[str], None]


@lru_cache(maxsize=4)
def _task_manager(folders: tuple[str, ...], include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(folders) or None, include_defaults=include_defaults)


def looks_like_path(spec: str) -> bool:
    """lm-eval task names hold no slashes: anything else that names a file or folder is one."""
    return "/" in spec or "\\" in spec or spec.startswith((".", "~")) or spec.lower().endswith((".yaml", ".yml"))


def _classify(specs: Sequence[str]) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """[(kind, spec)] with kind name/file/folder, and the folders to index."""
    kinds, folders = [], []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            kinds.append(("folder", str(path.resolve())))
            folders.append(str(path.resolve()))
        elif path.is_file():
            if path.suffix.lower() not in (".yaml", ".yml"):
                raise LmEvalError(f"task file {spec} is not an lm-eval task YAML (.yaml)")
            kinds.append(("file", str(path.resolve())))
        elif looks_like_path(spec):
            raise LmEvalError(f"task file or folder {spec} does not exist")
        else:
            kinds.append(("name", spec))
    return kinds, tuple(dict.fromkeys(folders))


def _unknown_task(spec: str, manager: Any) -> LmEvalError:
    import lm_eval

    names = manager.all_tasks
    lowered = {name.lower(): name for name in names}
    close = [lowered[m] for m in difflib.get_close_matches(spec.lower(), list(lowered), n=5, cutoff=0.6)]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    what = "matches the pattern" if any(c in spec for c in "*?[") else "has that name"
    return LmEvalError(
        f"lm-eval task {spec!r} is not installed: no task, group or tag {what} among the {len(names)} that "
        f"lm-eval {lm_eval.__version__} knows{hint}. Give an installed task name (`lm-eval ls tasks` lists them), "
        "or the path of a task YAML file or of a folder of task YAMLs"
    )


def _network_error(error: BaseException) -> BaseException | None:
    """The link of the exception chain that says the network (or the hub) could not be reached, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).lower()
        if (
            isinstance(error, ConnectionError | TimeoutError)
            or type(error).__name__ in NETWORK_ERRORS
            or "offline" in text
            or "couldn't reach" in text
        ):
            return error
        error = error.__cause__ or error.__context__
    return None


def _load_error(what: str, name: str, error: Exception, manager: Any) -> LmEvalError:
    """The error for task `name` (`what`: how to name it to the user) that failed to load with `error`."""
    network = _network_error(error)
    if network is not None:
        named = re.search(r"'([^']+)' on the hub", str(network), re.IGNORECASE)
        entry = manager.task_index.get(name)
        dataset = named.group(1) if named else (entry.cfg or {}).get("dataset_path") if entry else None
        return LmEvalError(
            f"{what} needs the network to download its dataset{f' {dataset!r}' if dataset else ''}, and the dataset "
            f"hub cannot be reached here (HF_DATASETS_OFFLINE=1 or no network: {network}). Download the dataset once "
            "where the hub is reachable (lm-eval then reads it from the datasets cache), or use a local task YAML "
            "with dataset_path: json and data_files on this machine"
        )
    if isinstance(error, FileNotFoundError):
        return LmEvalError(f"{what} cannot read its data: {error}")
    return LmEvalError(f"{what} cannot be loaded: {type(error).__name__}: {error}")


def _top_level(loaded: dict[str, Any]) -> list[Any]:
    """The items a TaskManager.load result was built from: its outermost groups, else its tasks."""
    groups = loaded.get("groups") or {}
    if not groups:
        return list(loaded["tasks"].values())
    children = {child for names in (loaded.get("group_map") or {}).values() for child in names}
    return [group for name, group in groups.items() if name not in children]


def task_code(paths: Sequence[str | Path]) -> list[str]:
    """`file:line` of every `!function` entry (Python imported and run by lm-eval) in the task YAML files and
    folders of `paths`."""
    found = []
    for path in map(Path, paths):
        files = sorted([*path.rglob("*.yaml"), *path.rglob("*.yml")]) if path.is_dir() else [path]
        for file in files:
            if not file.is_file():
                continue
            for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if "!function" in line.split("#", 1)[0]:
                    found.append(f"{file}:{number}")
    return found


def refuse_task_code(paths: Sequence[str | Path], trust_remote_code: bool) -> None:
    """Raise naming the task YAML lines that would run Python code, unless `trust_remote_code`."""
    found = [] if trust_remote_code else task_code(paths)
    if found:
        raise LmEvalError(
            f"task YAML runs Python code (!function) at {', '.join(found[:5])}"
            + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            + "; it runs only with trust_remote_code (--trust_remote_code on the command line)"
        )


def load_tasks(
    specs: Sequence[str], log: Log | None = None, *, trust_remote_code: bool = False
) -> tuple[Any, list[Any]]:
    """(TaskManager, lm-eval Task/Group objects) for task names, glob patterns (`mmlu_*`), task YAML files and
    folders of task YAMLs (every task defined in the folder). Datasets are loaded here, so a task that cannot get
    its data fails here, named. Local YAMLs that import Python (`!function`) load only with `trust_remote_code`.

    lm-eval's own task index (about 10 s to build) is read only when a name is asked for, or when local YAMLs do not
    load without it (a local group of installed tasks).
    """
    kinds, folders = _classify(specs)
    refuse_task_code([spec for kind, spec in kinds if kind != "name"], trust_remote_code)
    with_defaults = any(kind == "name" for kind, _ in kinds)
    try:
        return _load_with(_task_manager(folders, with_defaults), kinds, log)
    except LmEvalError as e:
        cause = e.__cause__
        if with_defaults or cause is None or isinstance(cause, FileNotFoundError) or _network_error(cause):
            raise
        return _load_with(_task_manager(folders, True), kinds, log)


def _load_with(manager: Any, kinds: list[tuple[str, str]], log: Log | None) -> tuple[Any, list[Any]]:
    from lm_eval.api.group import Group

    items: list[Any] = []
    for kind, spec in kinds:
        if kind == "folder":
            names = [
                name
                for name in manager.all_subtasks
                if (path := manager.task_index[name].yaml_path) is not None and Path(path).is_relative_to(spec)
            ]
            if not names:
                raise LmEvalError(f"task folder {spec} defines no lm-eval task (no YAML with a `task:` key)")
        elif kind == "name" and any(c in spec for c in "*?["):
            names = manager.match_tasks([spec])
            if not names:
                raise _unknown_task(spec, manager)
        elif kind == "name" and spec not in manager.task_index:
            raise _unknown_task(spec, manager)
        else:
            names = [spec]
        for name in names:
            try:
                loaded = manager.load([name])
            except Exception as e:  # a task's own loading code can raise anything; the message names the task
                what = f"lm-eval task file {name}" if kind == "file" else f"lm-eval task {name!r}"
                raise _load_error(what, name, e, manager) from e
            items.extend(_top_level(loaded))
    seen: dict[str, str] = {}
    for item in items:
        source = item.name if isinstance(item, Group) else item.task_name
        for task in item.get_all_tasks() if isinstance(item, Group) else [item]:
            if task.task_name in seen:
                raise LmEvalError(
                    f"lm-eval task {task.task_name!r} is asked for twice: in {seen[task.task_name]!r} and in {source!r}"
                )
            seen[task.task_name] = source
            if getattr(task, "UNSAFE_CODE", False):
                raise LmEvalError(
                    f"lm-eval task {task.task_name!r} runs code written by the model (marked unsafe); this evaluator "
                    "does not run it"
                )
    if log is not None:
        log(f"lm-eval tasks: {', '.join(seen)}")
    return manager, items
