import json

import pytest

from plugin_sdk.data import dataset_source, load_dataset_splits, load_rows
from plugin_sdk.errors import DatasetError, ParameterError

ROWS = [{"prompt": f"p{i}", "completion": f"c{i}", "n": i} for i in range(20)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ids(rows):
    return list(rows["n"])


# ------------------------------------------------------------------------------------------------ file formats


def test_jsonl(tmp_path):
    rows = load_rows(str(write_jsonl(tmp_path / "d.jsonl", ROWS)), workspace=None)
    assert len(rows) == 20 and rows[3] == ROWS[3]


def test_jsonl_skips_blank_lines_and_unions_columns(tmp_path):
    file = tmp_path / "d.jsonl"
    file.write_text('{"a": 1}\n\n{"a": 2, "b": "x"}\n', encoding="utf-8")
    rows = load_rows(str(file), workspace=None)
    assert rows.column_names == ["a", "b"]
    assert list(rows) == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]


def test_jsonl_bad_line_number(tmp_path):
    file = tmp_path / "d.jsonl"
    file.write_text('{"a": 1}\n{"a": 2}\n\n{"a": 3,}\n{"a": 4}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"d\.jsonl, line 4: invalid JSON \(Expecting property name"):
        load_rows(str(file), workspace=None)


def test_jsonl_line_must_be_object(tmp_path):
    file = tmp_path / "d.jsonl"
    file.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2: expected a JSON object, got list"):
        load_rows(str(file), workspace=None)


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    """U+2028, U+0085 and form feeds are characters inside a string (str.splitlines would cut there); CRLF works."""
    text = "a\u2028b\u0085c\x0cd\u2029e"
    file = tmp_path / "d.jsonl"
    file.write_bytes((json.dumps({"t": text}, ensure_ascii=False) + "\r\n" + '{"t": "x"}\r\n').encode("utf-8"))
    assert list(load_rows(str(file), workspace=None)["t"]) == [text, "x"]


def test_a_json_list_saved_as_jsonl_says_to_rename_it(tmp_path):
    file = tmp_path / "d.jsonl"
    file.write_text(json.dumps(ROWS[:2], indent=1), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"d\.jsonl, line 1: invalid JSON .*holds a JSON list.*name it \.json"):
        load_rows(str(file), workspace=None)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_lone_surrogates_and_overlong_numbers_name_the_file_and_row(tmp_path, suffix):
    file = tmp_path / f"d{suffix}"
    where = "line 2" if suffix == ".jsonl" else "row 1"
    good = '{"a": "x", "b": [1]}'
    for bad, message in [
        ('{"a": "x", "b": ["ok", "\\ud83d"]}', rf"{where}: field 'b'\[1\]: \\ud83d is a lone surrogate"),
        ('{"a": "x\\udfff y", "b": []}', rf"{where}: field 'a': \\udfff is a lone surrogate"),
        ('{"a": "x", "b": [' + "1" * 4400 + "]}", "a number of 4400 digits"),
    ]:
        rows = f"{good}\n{bad}\n" if suffix == ".jsonl" else f"[{good},\n{bad}]"
        file.write_text(rows, encoding="utf-8")
        with pytest.raises(DatasetError, match=message):
            load_rows(str(file), workspace=None)
    emoji = '{"a": "\\ud83d\\ude00 paired is fine", "b": []}'  # an escaped emoji: a surrogate pair, no error
    file.write_text(f"{emoji}\n" if suffix == ".jsonl" else f"[{emoji}]", encoding="utf-8")
    assert load_rows(str(file), workspace=None)["a"] == ["\U0001f600 paired is fine"]


def test_mixed_kinds_in_a_column_name_it(tmp_path):
    file = write_jsonl(tmp_path / "d.jsonl", [{"a": 1, "b": "x"}, {"a": 2, "b": {"k": 1}}])
    with pytest.raises(DatasetError, match="column 'b' mixes kinds of values across rows"):
        load_rows(str(file), workspace=None)


def test_json_list(tmp_path):
    file = tmp_path / "d.json"
    file.write_text(json.dumps(ROWS), encoding="utf-8")
    assert ids(load_rows(str(file), workspace=None)) == list(range(20))


def test_json_object_holding_a_list(tmp_path):
    file = tmp_path / "d.json"
    file.write_text(json.dumps({"data": ROWS[:2], "version": 1}), encoding="utf-8")
    assert ids(load_rows(str(file), workspace=None)) == [0, 1]


def test_json_file_with_json_lines(tmp_path):
    file = write_jsonl(tmp_path / "d.json", ROWS[:3])
    assert ids(load_rows(str(file), workspace=None)) == [0, 1, 2]


def test_json_file_json_lines_bad_line(tmp_path):
    file = tmp_path / "d.json"
    file.write_text('{"a": 1}\n{"a": 2}\n{"a" 3}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"d\.json, line 3: invalid JSON"):
        load_rows(str(file), workspace=None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[\n  {"a": 1},\n  {"a": 2\n]', r"d\.json: invalid JSON at line 4, column 1"),
        ('{"a": [1], "b": [2]}', "an object holding one such list; found an object with keys a, b"),
        ('"text"', "expected a JSON list of rows"),
        ("[1, 2]", "row 0 must be a JSON object, got int"),
    ],
)
def test_bad_json_files(tmp_path, text, message):
    file = tmp_path / "d.json"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        load_rows(str(file), workspace=None)


def test_csv(tmp_path):
    file = tmp_path / "d.csv"
    file.write_text('prompt,completion\nhello,"a, b"\nNA,\n', encoding="utf-8")
    rows = load_rows(str(file), workspace=None)
    assert list(rows) == [{"prompt": "hello", "completion": "a, b"}, {"prompt": "NA", "completion": ""}]


def test_malformed_csv_names_line(tmp_path):
    file = tmp_path / "d.csv"
    file.write_text("a,b\n1,2\n3,4,5\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"d\.csv: malformed CSV: .*line 3"):
        load_rows(str(file), workspace=None)


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS[:5]), file)
    assert ids(load_rows(str(file), workspace=None)) == [0, 1, 2, 3, 4]
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=r"bad\.parquet: not a readable Parquet file"):
        load_rows(str(bad), workspace=None)


@pytest.mark.parametrize(("name", "text"), [("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", ""), ("h.csv", "a,b\n")])
def test_empty_dataset(tmp_path, name, text):
    file = tmp_path / name
    file.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match="has no rows"):
        load_rows(str(file), workspace=None)


def test_not_utf8(tmp_path):
    file = tmp_path / "d.jsonl"
    file.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(DatasetError, match=r"is not UTF-8 text"):
        load_rows(str(file), workspace=None)


def test_missing_file_and_empty_source(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset file or folder .*nope\.jsonl does not exist"):
        load_rows(str(tmp_path / "nope.jsonl"), workspace=None)
    with pytest.raises(DatasetError, match="no dataset given"):
        load_rows("  ", workspace=None)


def test_unsupported_file_type(tmp_path):
    file = tmp_path / "d.txt"
    file.write_text("hello", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"d\.txt: unsupported file type; use one of .json, .jsonl, .csv, .parquet"):
        load_rows(str(file), workspace=None)


# ------------------------------------------------------------------------------------------------ folders


def test_folder_with_split_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:10])
    write_jsonl(tmp_path / "valid.jsonl", ROWS[10:13])
    write_jsonl(tmp_path / "test.jsonl", ROWS[13:])
    splits = load_dataset_splits(str(tmp_path), workspace=None)
    assert ids(splits.train) == list(range(10))
    assert ids(splits.validation) == [10, 11, 12]
    assert ids(load_rows(str(tmp_path), workspace=None, split="test")) == list(range(13, 20))
    assert ids(load_rows(str(tmp_path), workspace=None, split="valid")) == [10, 11, 12]


def test_folder_without_split_names_is_all_train(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS[:2])
    (tmp_path / "b.json").write_text(json.dumps(ROWS[2:4]), encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    (tmp_path / ".hidden.jsonl").write_text("junk", encoding="utf-8")
    assert ids(load_rows(str(tmp_path), workspace=None)) == [0, 1, 2, 3]
    # Unsplit data serves any split an evaluator asks for.
    assert ids(load_rows(str(tmp_path), workspace=None, split="test")) == [0, 1, 2, 3]


def test_folder_missing_split_lists_available(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "validation.jsonl", ROWS[2:4])
    with pytest.raises(DatasetError, match="has no 'test' split; available splits: train, validation"):
        load_rows(str(tmp_path), workspace=None, split="test")


def test_folder_files_with_different_columns(tmp_path):
    write_jsonl(tmp_path / "train-1.jsonl", [{"a": 1}])
    write_jsonl(tmp_path / "train-2.jsonl", [{"b": 1}])
    with pytest.raises(DatasetError, match=r"same columns, but they differ \(train-1\.jsonl: a; train-2\.jsonl: b\)"):
        load_rows(str(tmp_path), workspace=None)


def test_folder_without_data_files(tmp_path):
    (tmp_path / "readme.md").write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"has no data files \(.json, .jsonl, .csv, .parquet\); it contains: readme"):
        load_rows(str(tmp_path), workspace=None)


def test_saved_to_disk_folder(tmp_path):
    import datasets

    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:4]), "validation": datasets.Dataset.from_list(ROWS[4:6])}
    ).save_to_disk(str(tmp_path / "saved"))
    splits = load_dataset_splits(str(tmp_path / "saved"), workspace=None)
    assert ids(splits.train) == [0, 1, 2, 3] and ids(splits.validation) == [4, 5]


# ------------------------------------------------------------------------------------------------ workspace ids


def make_workspace_dataset(workspace, folder_name, metadata, rows=None):
    folder = workspace / "datasets" / folder_name
    folder.mkdir(parents=True)
    (folder / "index.json").write_text(json.dumps(metadata), encoding="utf-8")
    if rows is not None:
        write_jsonl(folder / "data.jsonl", rows)
    return folder


def test_workspace_dataset_id(tmp_path):
    make_workspace_dataset(tmp_path, "my_data", {"dataset_id": "my_data", "location": "local"}, ROWS[:3])
    splits = load_dataset_splits("my_data", workspace=tmp_path)
    assert ids(splits.train) == [0, 1, 2] and splits.validation is None
    assert splits.source == str(tmp_path / "datasets" / "my_data")


def test_workspace_dataset_id_with_slash(tmp_path):
    make_workspace_dataset(tmp_path, "org_data", {"location": "local"}, ROWS[:2])
    assert ids(load_rows("org/data", workspace=tmp_path)) == [0, 1]


def test_workspace_dataset_without_files(tmp_path):
    make_workspace_dataset(tmp_path, "empty", {"location": "local"})
    with pytest.raises(DatasetError, match="has no data files .* it contains: index.json"):
        load_rows("empty", workspace=tmp_path)


def test_workspace_dataset_bad_index(tmp_path):
    folder = tmp_path / "datasets" / "broken"
    folder.mkdir(parents=True)
    (folder / "index.json").write_text('{"location": \n}', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"index\.json: invalid JSON at line 2, column 1"):
        load_rows("broken", workspace=tmp_path)


def test_hub_dataset_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_workspace_dataset(tmp_path, "local_one", {"location": "local"}, ROWS[:1])
    make_workspace_dataset(tmp_path, "someone_remote-data", {"dataset_id": "someone/remote-data", "location": "hf"})
    with pytest.raises(DatasetError) as info:
        load_rows("someone/remote-data", workspace=tmp_path)
    assert "dataset 'someone/remote-data' is not a local file or folder" in str(info.value)
    assert "loading it from the Hugging Face hub failed" in str(info.value)
    with pytest.raises(
        DatasetError, match=r"not a dataset in .*datasets \(installed: local_one, someone_remote-data\)"
    ):
        load_rows("nobody/unknown", workspace=tmp_path)


# ------------------------------------------------------------------------------------------------ subsets and splits


def test_max_samples_is_a_deterministic_seeded_subset(tmp_path):
    file = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    first = ids(load_rows(file, workspace=None, max_samples=5, seed=1))
    assert first == ids(load_rows(file, workspace=None, max_samples=5, seed=1))
    assert len(first) == 5 and len(set(first)) == 5 and first == sorted(first)
    assert first != list(range(5))  # a random subset, not the head
    assert first != ids(load_rows(file, workspace=None, max_samples=5, seed=2))
    for everything in (None, 0, -1, 20, 100):
        assert ids(load_rows(file, workspace=None, max_samples=everything)) == list(range(20))


def test_validation_carve_is_deterministic_and_disjoint(tmp_path):
    file = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    splits = load_dataset_splits(file, workspace=None, validation_split="auto", validation_fraction=0.25, seed=3)
    train, validation = ids(splits.train), ids(splits.validation)
    assert len(validation) == 5 and len(train) == 15
    assert sorted(train + validation) == list(range(20))
    again = load_dataset_splits(file, workspace=None, validation_split="auto", validation_fraction=0.25, seed=3)
    assert ids(again.validation) == validation
    other = load_dataset_splits(file, workspace=None, validation_split="auto", validation_fraction=0.25, seed=4)
    assert ids(other.validation) != validation


def test_no_validation_unless_asked_or_present(tmp_path):
    file = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    splits = load_dataset_splits(file, workspace=None)
    assert splits.validation is None and len(splits.train) == 20


def test_own_validation_split_is_preferred_to_carving(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:10])
    write_jsonl(tmp_path / "dev.jsonl", ROWS[10:])
    splits = load_dataset_splits(str(tmp_path), workspace=None, validation_split="auto", max_validation_samples=4)
    assert ids(splits.train) == list(range(10))
    assert len(splits.validation) == 4 and set(ids(splits.validation)) <= set(range(10, 20))


def test_max_samples_applies_before_carving(tmp_path):
    file = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    splits = load_dataset_splits(file, workspace=None, validation_split="auto", validation_fraction=0.2, max_samples=10)
    assert len(splits.train) == 8 and len(splits.validation) == 2
    assert not set(ids(splits.train)) & set(ids(splits.validation))


def test_named_validation_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:10])
    write_jsonl(tmp_path / "test.jsonl", ROWS[10:])
    splits = load_dataset_splits(str(tmp_path), workspace=None, validation_split="test")
    assert ids(splits.validation) == list(range(10, 20))
    with pytest.raises(DatasetError, match="has no 'validation' split; available splits: test, train"):
        load_dataset_splits(str(tmp_path), workspace=None, validation_split="validation")
    with pytest.raises(ParameterError, match="the validation split 'train' is the training split"):
        load_dataset_splits(str(tmp_path), workspace=None, validation_split="train")


def test_carving_needs_enough_rows(tmp_path):
    file = str(write_jsonl(tmp_path / "d.jsonl", ROWS[:1]))
    with pytest.raises(DatasetError, match="has 1 training rows: too few to set 1 aside for validation"):
        load_dataset_splits(file, workspace=None, validation_split="auto")
    with pytest.raises(ParameterError, match="validation_fraction must be between 0 and 1"):
        load_dataset_splits(file, workspace=None, validation_split="auto", validation_fraction=1.5)


def test_dataset_source_prefers_dataset_then_the_hosts_dataset_name():
    assert dataset_source({"dataset": "mine.jsonl", "dataset_name": "host_id"}) == "mine.jsonl"
    assert dataset_source({"dataset": "", "dataset_name": "host_id"}) == "host_id"
    with pytest.raises(ParameterError, match=r"^no training data: set dataset \(a file"):
        dataset_source({"dataset": None})
    with pytest.raises(ParameterError, match=r"^metrics need a dataset: set dataset"):
        dataset_source({}, "metrics need a dataset")
