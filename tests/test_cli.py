"""`python -m plugin_sdk`: the gallery, validation and the errors a terminal user meets first."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_sdk.__main__ import main
from plugin_sdk.errors import PluginError
from plugin_sdk.workspace import Workspace, child_path, safe_name

REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).parent / "plugins" / "contract_probe"


def test_validate_passes_on_the_repository(capsys):
    assert main(["validate"]) == 0
    assert "valid" in capsys.readouterr().out


def test_list_shows_every_gallery_plugin(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for entry in json.loads((REPO / "index.json").read_text()):
        assert entry["uniqueId"] in out


def test_unknown_plugin_lists_the_known_ones(capsys, tmp_path):
    assert main(["run", "no_such_plugin", "--workspace", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_plugin" in err
    for entry in json.loads((REPO / "index.json").read_text()):
        assert entry["uniqueId"] in err


def test_malformed_config_names_file_and_line(capsys, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("steps: 3\nmode: [unclosed\n")
    assert main(["run", str(PROBE), "--workspace", str(tmp_path / "ws"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "line" in err


def test_workspace_on_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PluginError, match="not writable"):
        Workspace(blocker / "ws")


@pytest.mark.parametrize("name", ["..", "../..", "/", "", " "])
def test_names_that_would_escape_are_refused(name, tmp_path):
    with pytest.raises(PluginError):
        child_path(tmp_path, name, field="adaptor_name")


def test_names_become_one_safe_component(tmp_path):
    assert safe_name("org/model", field="model_name") == "org_model"
    assert child_path(tmp_path, "../../etc/passwd", field="adaptor_name").parent == tmp_path.resolve()


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "plugin_sdk", "--help"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and "run" in done.stdout
