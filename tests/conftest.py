"""Shared test set-up: offline hubs and W&B, and the tiny preset models, built once per test run."""

import os
from pathlib import Path

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
    """A workspace shared by the whole session, so each tiny preset is built once (on first use)."""
    return tmp_path_factory.getbasetemp() / "preset-workspace"


@pytest.fixture(scope="session")
def workspace_with_presets(preset_workspace, tmp_path_factory):
    """`make(name)`: a new, empty workspace whose models/ links to every tiny preset of `preset_workspace`, built
    once per session; for tests whose jobs must not see each other's records, adapters or models."""
    from dlm.presets.tiny import PRESETS, ensure_preset

    built = {name: ensure_preset(name, preset_workspace) for name in PRESETS}

    def make(name: str) -> Path:
        root = tmp_path_factory.mktemp(name)
        (root / "models").mkdir()
        for preset, folder in built.items():
            (root / "models" / preset).symlink_to(folder, target_is_directory=True)
        return root

    return make


GOLDEN = Path(__file__).parent / "fixtures" / "golden"


@pytest.fixture(scope="module")
def llada():
    """The golden tiny LLaDA checkpoint in eval mode (one per test module: a test may wrap or change it)."""
    from transformers import AutoModelForMaskedLM

    import dlm  # noqa: F401  (registers LLaDA and Dream with the Auto classes)

    return AutoModelForMaskedLM.from_pretrained(GOLDEN / "llada-tiny").eval()


@pytest.fixture(scope="module")
def dream():
    """The golden tiny Dream checkpoint in eval mode (one per test module)."""
    from transformers import AutoModelForMaskedLM

    import dlm  # noqa: F401

    return AutoModelForMaskedLM.from_pretrained(GOLDEN / "dream-tiny").eval()
