"""Shared test set-up: offline hubs and W&B, and small helpers."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread, and the multi-process tests must not oversubscribe two cores; set before
# torch is imported, so the plugin processes the tests start inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def preset_workspace(tmp_path_factory):
    """A workspace shared by the whole session, so each tiny preset is built once."""
    return tmp_path_factory.getbasetemp() / "preset-workspace"
