"""Each trainer's config and its plugin's index.json agree on every default (one default per setting)."""

import dataclasses
import json
from pathlib import Path

import pytest

from dlm.trainers.dpo_config import DPOConfig
from dlm.trainers.sft_config import SFTConfig

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


@pytest.mark.parametrize(
    ("plugin", "config"), [("diffusion_llm_trainer", SFTConfig), ("diffusion_dpo_trainer", DPOConfig)]
)
def test_index_json_defaults_equal_config_defaults(plugin, config):
    schema = json.loads((PLUGINS / plugin / "index.json").read_text())["parameters"]
    fields = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    shared = sorted(set(schema) & set(fields))
    assert len(shared) > 20
    differing = {
        name: (schema[name].get("default"), fields[name])
        for name in shared
        if schema[name].get("default") != fields[name]
    }
    assert differing == {}
