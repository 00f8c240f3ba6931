"""Shared test set-up: offline hubs and W&B, and small helpers."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def preset_workspace(tmp_path_factory):
    """A workspace shared by the whole session, so each tiny preset is built once."""
    return tmp_path_factory.getbasetemp() / "preset-workspace"
