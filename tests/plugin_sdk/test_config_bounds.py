"""A parameter file costs what its size says: alias bombs, huge and deeply nested files are refused before they are
built, naming what to change."""

from __future__ import annotations

import time

import pytest

from plugin_sdk import config_keys
from plugin_sdk.config_keys import load_yaml
from plugin_sdk.errors import ParameterError
from plugin_sdk.params import read_raw_parameters


def billion_laughs(levels: int) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs(9))  # 9**9 strings, ~1.5 GB once written out
    start = time.process_time()
    with pytest.raises(ParameterError, match=r"bomb.yaml: its aliases .* expand to more than 4096 KiB"):
        read_raw_parameters(["--config", str(path)])
    assert time.process_time() - start < 3  # CPU time: expanding it would take minutes


def test_aliases_within_the_budget_still_work(monkeypatch) -> None:
    text = "base: &b {learning_rate: 0.001}\nrun: *b\n"
    assert load_yaml(text, "ok.yaml") == {"base": {"learning_rate": 0.001}, "run": {"learning_rate": 0.001}}
    assert load_yaml(billion_laughs(3), "small.yaml")["c"][0][0] == ["lol"] * 9
    monkeypatch.setattr(config_keys, "MAX_CONFIG_BYTES", 200)
    with pytest.raises(ParameterError, match="small.yaml: its aliases"):
        load_yaml(billion_laughs(3), "small.yaml")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_parameter_file_over_the_size_limit_is_refused_unread(tmp_path, monkeypatch, suffix) -> None:
    monkeypatch.setattr(config_keys, "MAX_CONFIG_BYTES", 1000)
    path = tmp_path / f"big{suffix}"
    path.write_text('{"learning_rate": "' + "1" * 2000 + '"}')
    with pytest.raises(ParameterError, match=r"big\.(yaml|json): 2\d\d\d bytes is over the 0 KiB"):
        read_raw_parameters(["--config", str(path)])
    path.write_text('{"config": {"learning_rate": "' + "1" * 2000 + '"}}')
    with pytest.raises(ParameterError, match="bytes is over"):
        read_raw_parameters(["--input_file", str(path)])


@pytest.mark.parametrize("suffix, text", [(".json", "[" * 100_000), (".yaml", "[" * 100_000)])
def test_a_deeply_nested_file_is_a_parameter_error(tmp_path, suffix, text) -> None:
    path = tmp_path / f"deep{suffix}"
    path.write_text(text + "]" * 100_000)
    with pytest.raises(ParameterError, match="nested too deeply"):
        read_raw_parameters(["--config", str(path)])
