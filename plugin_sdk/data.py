"""Datasets: find them (file, folder, workspace dataset id, hub id), read them with errors that name the file and
line, and cut deterministic subsets and validation splits.

Sources, tried in order:
1. an existing file (.json: a JSON list of objects or JSON lines; .jsonl; .csv; .parquet) or folder of such files
   (files named train*, validation* / valid* / val* / dev*, test* form those splits; otherwise all are train);
   a folder written by `datasets.save_to_disk` works too;
2. a workspace dataset id: `<workspace>/datasets/<id>/` with `index.json` (`"location": "local"`: the data files
   beside it, as the host stores uploads; another location: the hub id it names);
3. a Hugging Face hub id (or a cached copy when offline).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugin_sdk.errors import DatasetError, ParameterError, PluginError
from plugin_sdk.text_checks import NumberTooLong, load_json, lone_surrogate, may_hold_surrogates
from plugin_sdk.workspace import safe_name

if TYPE_CHECKING:
    import datasets
    import numpy as np

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
# File-name stems (and prefixes such as "train-00000-of-00001") that name a split.
SPLIT_NAMES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}


@dataclass
class DatasetSplits:
    train: datasets.Dataset
    validation: datasets.Dataset | None
    source: str  # where the rows came from, for the job log


@dataclass
class _Source:
    description: str
    loaders: dict[str, Callable[[], datasets.Dataset]]


def dataset_source(params: Mapping[str, Any], missing: str = "no training data") -> str:
    """The dataset a job names: its `dataset` parameter, else the host's `dataset_name`. Neither set: a
    ParameterError that starts with `missing`."""
    source = params.get("dataset") or params.get("dataset_name")
    if not source:
        raise ParameterError(f"{missing}: set dataset (a file, folder or workspace dataset id)")
    return source


def load_rows(
    source: str,
    *,
    workspace: str | Path | None,
    split: str = "train",
    max_samples: int | None = None,
    seed: int = 42,
) -> datasets.Dataset:
    """One split of a dataset, optionally cut to a seeded random subset of `max_samples` rows (None or <= 0: all).

    Data without named splits serves any requested split (an evaluator asking for "test" of a single file).
    """
    opened = _open_source(source, workspace)
    rows = _pick_split(opened, split, fallback=True)
    return _subset(rows, max_samples, _rng(seed))


def load_dataset_splits(
    source: str,
    *,
    workspace: str | Path | None,
    split: str = "train",
    validation_split: str | None = None,
    validation_fraction: float = 0.1,
    max_samples: int | None = None,
    max_validation_samples: int | None = None,
    seed: int = 42,
    row_numbers: str | None = None,
) -> DatasetSplits:
    """Training rows and optional validation rows.

    validation_split: None = the dataset's own validation split if it has one; "auto" = that, or else a seeded
    `validation_fraction` of the training rows carved off (never shared with training); any other value names the
    split to use. `max_samples` cuts the training rows to a seeded subset before any carving;
    `max_validation_samples` cuts the validation rows. `row_numbers` names a column to add that holds each row's
    1-based number in its split as read, before any subset or carving, so that messages can point at the row.
    """
    opened = _open_source(source, workspace)
    train = _pick_split(opened, split, fallback=True)
    validation = None
    if validation_split not in (None, "auto"):
        if _canonical(validation_split) == _canonical(split):
            raise ParameterError(f"the validation split {validation_split!r} is the training split; choose another")
        validation = _pick_split(opened, validation_split, fallback=False)
    elif _canonical(split) != "validation" and "validation" in opened.loaders:
        validation = opened.loaders["validation"]()
    if row_numbers:
        train, validation = (_numbered(rows, row_numbers) for rows in (train, validation))
    rng = _rng(seed)
    train = _subset(train, max_samples, rng)
    # validation_fraction 0 carves nothing: the caller says what needed validation data
    if validation is None and validation_split == "auto" and validation_fraction > 0:
        train, validation = _carve(train, validation_fraction, rng, opened.description)
    if validation is not None:
        validation = _subset(validation, max_validation_samples, rng)
    return DatasetSplits(train=train, validation=validation, source=opened.description)


# ---------------------------------------------------------------------------------------------------------------
# Finding the source


def _open_source(source: str, workspace: str | Path | None) -> _Source:
    if not isinstance(source, str) or not source.strip():
        raise DatasetError("no dataset given: set dataset_name to a file, a folder, or a dataset id")
    source = source.strip()
    path = Path(source).expanduser()
    if path.is_file():
        return _Source(str(path), {"train": _files_loader([path])})
    if path.is_dir():
        return _local_folder(path)
    folder = _workspace_folder(workspace, source)
    if folder is not None and folder.is_dir():
        return _workspace_dataset(folder, source)
    if path.suffix.lower() in DATA_SUFFIXES or source.startswith(("/", "./", "../", "~")):
        raise DatasetError(f"dataset file or folder {source} does not exist")
    return _hub(source, None, workspace)


def _workspace_folder(workspace: str | Path | None, dataset_id: str) -> Path | None:
    # The host stores dataset "org/name" in the folder "org_name".
    if workspace is None:
        return None
    try:
        return Path(workspace) / "datasets" / safe_name(dataset_id, field="dataset_name")
    except PluginError:
        return None


def _workspace_dataset(folder: Path, dataset_id: str) -> _Source:
    metadata: dict[str, Any] = {}
    index = folder / "index.json"
    if index.is_file():
        try:
            metadata = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{index}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        if not isinstance(metadata, dict):
            raise DatasetError(f"{index}: expected a JSON object describing dataset {dataset_id!r}")
    location = metadata.get("location")
    if location == "local" or (location is None and _data_files(folder)):
        return _local_folder(folder)
    extra = metadata.get("json_data") if isinstance(metadata.get("json_data"), dict) else {}
    config = extra.get("dataset_config") or extra.get("config_name")
    return _hub(str(metadata.get("dataset_id") or dataset_id), config, folder.parent.parent)


def _data_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name != "index.json" and p.suffix.lower() in DATA_SUFFIXES
    )


def _local_folder(folder: Path) -> _Source:
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return _saved_to_disk(folder)
    files = _data_files(folder)
    if not files:
        present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise DatasetError(
            f"dataset folder {folder} has no data files ({', '.join(DATA_SUFFIXES)}); it contains: {present}"
        )
    by_split: dict[str, list[Path]] = {}
    for file in files:
        by_split.setdefault(_split_of(file), []).append(file)
    if set(by_split) == {None}:
        by_split = {"train": files}
    elif None in by_split:
        unnamed = by_split.pop(None)
        log.warning("files without a split name in %s are used for training: %s", folder, [f.name for f in unnamed])
        by_split.setdefault("train", []).extend(unnamed)
    return _Source(str(folder), {split: _files_loader(paths) for split, paths in by_split.items()})


def _split_of(file: Path) -> str | None:
    stem = file.name[: -len(file.suffix)].lower()
    for name, split in SPLIT_NAMES.items():
        if stem == name or stem.startswith((f"{name}-", f"{name}_", f"{name}.")):
            return split
    return None


def _saved_to_disk(folder: Path) -> _Source:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as err:  # datasets raises several unrelated types for a damaged folder
        raise DatasetError(f"cannot read the saved dataset in {folder}: {err}") from None
    if isinstance(loaded, datasets.Dataset):
        return _Source(str(folder), {"train": _checked(loaded, str(folder))})
    return _Source(str(folder), _split_loaders(loaded, str(folder)))


def _hub(name: str, config: str | None, workspace: str | Path | None) -> _Source:
    import datasets

    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as err:  # network, offline mode, unknown id, bad config: all end the same way for the user
        where = ""
        if workspace is not None:
            installed = sorted(p.name for p in (Path(workspace) / "datasets").glob("*") if p.is_dir())
            where = f", not a dataset in {Path(workspace) / 'datasets'} (installed: {', '.join(installed) or 'none'})"
        raise DatasetError(
            f"dataset {name!r} is not a local file or folder{where}, and loading it from the Hugging Face hub "
            f"failed: {err}"
        ) from None
    return _Source(f"hub:{name}", _split_loaders(loaded, name))


def _split_loaders(loaded: datasets.DatasetDict, description: str) -> dict[str, Callable[[], datasets.Dataset]]:
    loaders: dict[str, Callable[[], datasets.Dataset]] = {}
    for name, rows in loaded.items():
        loader = _constant(_checked(rows, f"{description} split {name!r}"))
        loaders[name] = loader
        loaders.setdefault(SPLIT_NAMES.get(name.lower(), name), loader)
    return loaders


def _constant(rows: datasets.Dataset) -> Callable[[], datasets.Dataset]:
    return lambda: rows


def _canonical(split: str) -> str:
    return SPLIT_NAMES.get(split.lower(), split)


def _pick_split(opened: _Source, split: str, *, fallback: bool) -> datasets.Dataset:
    for name in (split, _canonical(split)):
        if name in opened.loaders:
            return opened.loaders[name]()
    distinct = {id(loader) for loader in opened.loaders.values()}
    if fallback and len(distinct) == 1:
        only = next(iter(opened.loaders))
        log.warning("%s has no %r split; using its only split %r", opened.description, split, only)
        return opened.loaders[only]()
    raise DatasetError(f"{opened.description} has no {split!r} split; available splits: {', '.join(opened.loaders)}")


# ---------------------------------------------------------------------------------------------------------------
# Reading files


def _files_loader(paths: list[Path]) -> Callable[[], datasets.Dataset]:
    return lambda: _read_files(paths)


def _read_files(paths: list[Path]) -> datasets.Dataset:
    import datasets

    parts = [_read_file(path) for path in paths]
    if len(parts) == 1:
        return parts[0]
    columns = [set(part.column_names) for part in parts]
    if any(c != columns[0] for c in columns):
        listing = "; ".join(f"{p.name}: {', '.join(part.column_names)}" for p, part in zip(paths, parts, strict=True))
        raise DatasetError(f"the files of one split must have the same columns, but they differ ({listing})")
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as err:
        raise DatasetError(f"cannot combine {', '.join(p.name for p in paths)}: {err}") from None


def _read_file(path: Path) -> datasets.Dataset:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = _from_rows(_json_lines(path, path.read_text(encoding="utf-8")), path)
        elif suffix == ".json":
            rows = _from_rows(_json_document(path), path)
        elif suffix == ".csv":
            rows = _read_csv(path)
        elif suffix == ".parquet":
            rows = _read_parquet(path)
        else:
            raise DatasetError(f"{path}: unsupported file type; use one of {', '.join(DATA_SUFFIXES)}")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None
    return _checked(rows, str(path))


def _checked(rows: datasets.Dataset, description: str) -> datasets.Dataset:
    if len(rows) == 0:
        raise DatasetError(f"{description} has no rows")
    return rows


def _json_lines(path: Path, text: str) -> list[dict]:
    rows = []
    # JSON lines end at "\n" only: str.splitlines would also split inside a string at U+2028, U+0085, ...
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = load_json(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{where}: invalid JSON ({err.msg} at column {err.colno}){_list_hint(text)}") from None
        except NumberTooLong as err:
            raise DatasetError(f"{where}: {err}") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
        _refuse_surrogates(row, line, where)
        rows.append(row)
    return rows


def _list_hint(text: str) -> str:
    if text.lstrip().startswith("["):
        return "; the file holds a JSON list, not one object per line: name it .json"
    return ""


def _refuse_surrogates(value: Any, text: str, where: str) -> None:
    found = lone_surrogate(value) if may_hold_surrogates(text) else None
    if found:
        raise DatasetError(f"{where}: {found} is a lone surrogate escape, not a character; remove or fix it")


def _json_document(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    try:
        document = load_json(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and text.lstrip().startswith("{"):
            return _json_lines(path, text)  # JSON lines saved with a .json name
        raise DatasetError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except NumberTooLong as err:
        raise DatasetError(f"{path}: {err}") from None
    if isinstance(document, dict):
        lists = [key for key, value in document.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise DatasetError(
                f"{path}: expected a JSON list of rows (objects), or an object holding one such list; "
                f"found an object with keys {', '.join(document) or '(none)'}"
            )
        document = document[lists[0]]
    if not isinstance(document, list):
        raise DatasetError(f"{path}: expected a JSON list of rows (objects), got {type(document).__name__}")
    for i, row in enumerate(document):
        if not isinstance(row, dict):
            raise DatasetError(f"{path}: row {i} must be a JSON object, got {type(row).__name__}")
        _refuse_surrogates(row, text, f"{path}, row {i}")
    return document


def _from_rows(rows: list[dict], path: Path) -> datasets.Dataset:
    import datasets
    import pyarrow as pa

    columns: dict[str, list] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    table = {key: [row.get(key) for row in rows] for key in columns}
    try:
        return datasets.Dataset.from_dict(table)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        for key, values in table.items():
            try:
                pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as column_err:
                raise DatasetError(f"{path}: column {key!r} mixes kinds of values across rows ({column_err})") from None
        raise DatasetError(f"{path}: cannot build a table from its rows: {err}") from None


def _read_csv(path: Path) -> datasets.Dataset:
    import datasets
    import pandas as pd

    try:
        # keep_default_na=False: empty cells stay "" and words such as "NA" or "null" stay text.
        frame = pd.read_csv(path, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path} has no rows") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise DatasetError(f"{path}: malformed CSV: {str(err).strip()}") from None
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def _read_parquet(path: Path) -> datasets.Dataset:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowIOError) as err:
        raise DatasetError(f"{path}: not a readable Parquet file: {err}") from None
    return datasets.Dataset(InMemoryTable(table))


# ---------------------------------------------------------------------------------------------------------------
# Subsets


def _rng(seed: int) -> np.random.Generator:
    import numpy as np

    return np.random.default_rng(seed)


def _subset(rows: datasets.Dataset, limit: int | None, rng: np.random.Generator) -> datasets.Dataset:
    if limit is None or limit <= 0 or limit >= len(rows):
        return rows
    keep = sorted(rng.permutation(len(rows))[:limit].tolist())
    return rows.select(keep)


def _numbered(rows: datasets.Dataset | None, column: str) -> datasets.Dataset | None:
    if rows is None:
        return None
    if column in rows.column_names:
        raise DatasetError(f"the dataset has a column named {column!r}, which is reserved for row numbers")
    return rows.add_column(column, list(range(1, len(rows) + 1)))


def _carve(
    rows: datasets.Dataset, fraction: float, rng: np.random.Generator, description: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    if not 0 < fraction < 1:
        raise ParameterError(f"validation_fraction must be between 0 and 1 (exclusive), got {fraction}")
    count = max(1, round(len(rows) * fraction))
    if len(rows) - count < 1:
        raise DatasetError(
            f"{description} has {len(rows)} training rows: too few to set {count} aside for validation; "
            "add a validation split, or set validation_fraction=0 (and eval off)"
        )
    order = rng.permutation(len(rows)).tolist()
    return rows.select(sorted(order[count:])), rows.select(sorted(order[:count]))
