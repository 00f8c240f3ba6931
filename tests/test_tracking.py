"""What reaches the job record and the trackers: configuration without credentials; result files others can read."""

import json
import stat

from plugin_sdk.tracking import public_config
from plugin_sdk.workspace import write_json_atomic


def test_credentials_are_dropped_and_ordinary_names_kept():
    config = {
        "hf_token": "hf_x",
        "wandb_api_key": "k",
        "WANDB-API-KEY": "k",
        "db_password": "p",
        "client_secret": "s",
        "max_new_tokens": 32,
        "tokenizer_name": "t",
        "keyword": "x",
        "learning_rate": 1e-3,
    }
    assert public_config(config) == {
        "max_new_tokens": 32,
        "tokenizer_name": "t",
        "keyword": "x",
        "learning_rate": 1e-3,
    }


def test_json_results_are_written_whole_and_readable_by_others(tmp_path):
    target = tmp_path / "out" / "results.json"
    target.parent.mkdir()
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]
