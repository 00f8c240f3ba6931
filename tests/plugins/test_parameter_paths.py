"""Every form parameter reaches its effect: values as the form sends them (strings), coerced against the plugin's
index.json, made into the trainer's config as the plugin makes it, then trained on a tiny preset; each case names
the observable of the trained model, the log or the resumed checkpoint that the parameter must change. Tests of
`apply_lora` or `latest_checkpoint` alone cannot see a trainer that forgets to pass a setting on."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import dlm.trainers.dpo_trainer as dpo_trainer
import dlm.trainers.sft_trainer as sft_trainer
from dlm.resume import write_owner
from dlm.trainers.dpo_config import DPOConfig
from dlm.trainers.dpo_trainer import run_dpo
from dlm.trainers.model import load_for_training, trainable_model
from dlm.trainers.resuming import resume_path
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft
from plugin_sdk.params import Params, coerce_and_validate
from tests.dlm.test_dpo import pairs
from tests.helpers import Reporter, doubling_conversations

REPO = Path(__file__).resolve().parents[2]

# The tiny, quick run every case starts from, as a person would type it into the form.
TINY_FORM = {
    "num_train_epochs": "0",
    "train_steps": "2",
    "batch_size": "2",
    "max_length": "64",
    "learning_rate_schedule": "constant",
    "warmup_ratio": "0",
    "logging_steps": "1",
    "save_steps": "1000",
    "train_device": "cpu",
    "dtype": "float32",
}


def form_params(plugin: str, edits: dict[str, str]) -> Params:
    """The parameters a job of `plugin` gets from a form submission of `edits` (strings) over the tiny run."""
    manifest = json.loads((REPO / "plugins" / plugin / "index.json").read_text())
    submitted = {**TINY_FORM, **edits}
    return coerce_and_validate(submitted, manifest["parameters"], aliases=manifest.get("parameter_aliases"))


def host_keys(workspace: str, out: Path) -> dict[str, Any]:
    """What the plugin adds from the host (`plugins/*/main.py`): the model, the checkpoint folder, the workspace."""
    return {"model_name": "tiny-llada", "output_dir": str(out), "workspace": workspace}


@pytest.fixture(scope="module")
def workspace(preset_workspace: Path) -> str:
    return str(preset_workspace)


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and m.lora_A}


def block_count(model: torch.nn.Module) -> int:
    return sum(1 for name, _ in model.named_modules() if name.endswith(".q_proj") and "lora" not in name)


# ---- the SFT trainer: one run with every edit below, then one observable per parameter -----------------------------
SFT_EDITS = {
    "lora_target_modules": "q_proj,v_proj",
    "lora_r": "4",
    "lora_alpha": "12",
    "lora_dropout": "0.25",
    "learning_rate": "0.002",
    "weight_decay": "0.1",
    "max_grad_norm": "0.5",
    "seed": "7",
    "noise_schedule": "cosine",
    "time_epsilon": "0.01",
    "loss_weight_type": "uniform",
    "loss_norm_type": "sequence",
}
DPO_FORM = {"train_steps": "1", "batch_size": "4", "warmup_steps": "0", "mc_samples": "2", "sft_weight": "0"}
DPO_EDITS = {"lora_target_modules": "q_proj,k_proj", "lora_r": "8", "lora_alpha": "24", "beta": "0.5"}


@dataclass
class Run:
    """A tiny training run and what it passed on: the logged values, the Trainer's arguments, the settings each
    loss was computed with."""

    reporter: Reporter
    result: Any = None
    arguments: list[Any] = field(default_factory=list)
    settings: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def sft_run(workspace: str, tmp_path_factory: pytest.TempPathFactory):
    params = form_params("diffusion_llm_trainer", SFT_EDITS)
    config = SFTConfig.from_params(params, **host_keys(workspace, tmp_path_factory.mktemp("sft_paths")))
    run = Run(reporter=Reporter())
    arguments, loss = sft_trainer.TrainingArguments, sft_trainer.diffusion_loss
    with pytest.MonkeyPatch.context() as patch:  # what the Hugging Face Trainer and the loss get, recorded
        patch.setattr(
            sft_trainer, "TrainingArguments", lambda **k: run.arguments.append(arguments(**k)) or run.arguments[-1]
        )
        patch.setattr(sft_trainer, "diffusion_loss", lambda *a, **k: run.settings.append(k["config"]) or loss(*a, **k))
        run.result = run_sft(config, doubling_conversations(4), None, run.reporter)
    return run


def adapted_suffixes(run: Run) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name in lora_layers(run.result.model)}


def adapted_count(run: Run) -> int:
    return len(lora_layers(run.result.model))


def ranks(run: Run) -> set[int]:
    return {layer.lora_A["default"].out_features for layer in lora_layers(run.result.model).values()}


def scalings(run: Run) -> set[float]:
    return {layer.scaling["default"] for layer in lora_layers(run.result.model).values()}


def adapter_outputs_over_base(run: Run) -> float:
    """(layer(x) - base(x)) / (B A x) of one adapted layer: the scale the adapter is applied with."""
    layer = next(iter(lora_layers(run.result.model).values()))
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        delta = x @ a.T @ b.T
        return float(((layer(x) - layer.base_layer(x)) * delta).sum() / (delta * delta).sum())


def dropouts(run: Run) -> set[float]:
    return {layer.lora_dropout["default"].p for layer in lora_layers(run.result.model).values()}


def logged_learning_rates(run: Run) -> set[float]:
    return {metrics["train/lr"] for _, metrics in run.reporter.metrics if "train/lr" in metrics}


def trainer_arguments(name: str):
    def observable(run: Run) -> Any:
        return getattr(run.arguments[-1], name)

    observable.__name__ = f"trainer_{name}"
    return observable


def loss_settings(name: str):
    def observable(run: Run) -> set[Any]:
        return {getattr(settings, name) for settings in run.settings}

    observable.__name__ = f"loss_{name}"
    return observable


def trained_steps(run: Run) -> int:
    return max(step for step, metrics in run.reporter.metrics if "train/loss" in metrics)


@pytest.mark.parametrize(
    ("parameter", "observable", "expected"),
    [
        ("lora_target_modules", adapted_suffixes, {"q_proj", "v_proj"}),
        ("lora_target_modules", adapted_count, "2 per block"),
        ("lora_r", ranks, {4}),
        ("lora_alpha", scalings, {12 / 4}),
        ("lora_alpha", adapter_outputs_over_base, pytest.approx(12 / 4, rel=1e-4)),
        ("lora_dropout", dropouts, {0.25}),
        ("learning_rate", logged_learning_rates, {0.002}),
        ("train_steps", trained_steps, 2),
        ("weight_decay", trainer_arguments("weight_decay"), 0.1),
        ("max_grad_norm", trainer_arguments("max_grad_norm"), 0.5),
        ("seed", trainer_arguments("seed"), 7),
        ("batch_size", trainer_arguments("per_device_train_batch_size"), 2),
        ("noise_schedule", loss_settings("noise_schedule"), {"cosine"}),
        ("time_epsilon", loss_settings("time_epsilon"), {0.01}),
        ("loss_weight_type", loss_settings("loss_weight_type"), {"uniform"}),
        ("loss_norm_type", loss_settings("loss_norm_type"), {"sequence"}),
    ],
    ids=lambda v: getattr(v, "__name__", None) if callable(v) else None,
)
def test_every_sft_parameter_reaches_its_effect(sft_run, parameter, observable, expected):
    if expected == "2 per block":
        expected = 2 * block_count(sft_run.result.model)
    assert observable(sft_run) == expected


@pytest.mark.parametrize(
    ("plugin", "edits"), [("diffusion_llm_trainer", SFT_EDITS), ("diffusion_dpo_trainer", DPO_EDITS)]
)
def test_every_edit_differs_from_the_default(plugin, edits):
    """A case whose edited value is the default proves nothing about the value being passed on."""
    defaults, edited = form_params(plugin, {}), form_params(plugin, edits)
    assert all(edited[name] != defaults[name] for name in edits)


def test_lora_off_trains_the_whole_model(workspace, tmp_path):
    params = form_params("diffusion_llm_trainer", {"lora": "false"})
    config = SFTConfig.from_params(params, **host_keys(workspace, tmp_path))
    loaded = load_for_training(config)
    model = trainable_model(config, loaded, Reporter())
    assert not lora_layers(model)
    assert all(p.requires_grad for p in model.parameters())


def test_the_default_target_modules_are_the_familys(workspace, tmp_path):
    """`default` means the family's own list, which differs from the edited one (else the first case proves
    nothing about the value being passed on)."""
    params = form_params("diffusion_llm_trainer", {"lora_r": "4"})
    config = SFTConfig.from_params(params, **host_keys(workspace, tmp_path))
    loaded = load_for_training(config)
    model = trainable_model(config, loaded, Reporter())
    assert {name.rsplit(".", 1)[-1] for name in lora_layers(model)} != {"q_proj", "v_proj"}


# ---- the DPO trainer -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo_run(workspace: str, tmp_path_factory: pytest.TempPathFactory):
    params = form_params("diffusion_dpo_trainer", {**DPO_FORM, **DPO_EDITS})
    config = DPOConfig.from_params(params, **host_keys(workspace, tmp_path_factory.mktemp("dpo_paths")))
    run = Run(reporter=Reporter())
    real = dpo_trainer.elbo_dpo_loss
    with pytest.MonkeyPatch.context() as patch:  # the settings the loss gets, recorded
        patch.setattr(dpo_trainer, "elbo_dpo_loss", lambda *a, **k: run.settings.append(a[4]) or real(*a, **k))
        run.result = run_dpo(config, pairs(4), None, run.reporter)
    return run


@pytest.mark.parametrize(
    ("parameter", "observable", "expected"),
    [
        ("lora_target_modules", adapted_suffixes, {"q_proj", "k_proj"}),
        ("lora_r", ranks, {8}),
        ("lora_alpha", scalings, {24 / 8}),
        ("beta", loss_settings("beta"), {0.5}),
    ],
    ids=["lora_target_modules", "lora_r", "lora_alpha", "beta"],
)
def test_every_dpo_parameter_reaches_its_effect(dpo_run, parameter, observable, expected):
    assert observable(dpo_run) == expected


# ---- resume_from_checkpoint=latest, from the form to the checkpoint resumed --------------------------------------
def fake_checkpoint(folder: Path, step: int) -> None:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_latest_resumes_the_newest_of_several_checkpoints_in_the_jobs_folder(workspace, tmp_path):
    out = tmp_path / "checkpoints_job_1"
    params = form_params("diffusion_llm_trainer", {"resume_from_checkpoint": "latest"})
    config = SFTConfig.from_params(params, **host_keys(workspace, out))
    write_owner(out, trainer="SFTConfig", model_name="tiny-llada")
    for step in (9, 30, 10, 2):  # numeric order, not the order of names or of creation
        fake_checkpoint(out, step)
    assert resume_path(config, out, print) == str(out / "checkpoint-30")


def test_latest_resumes_the_newest_of_several_earlier_jobs(workspace, tmp_path):
    """A job resumed from the workbench is a new job: `latest` takes the newest of the earlier jobs' checkpoints
    (newer by every measure here: later job, later files, more steps)."""
    params = form_params("diffusion_llm_trainer", {"resume_from_checkpoint": "latest"})
    new = tmp_path / "checkpoints_job_4"
    config = SFTConfig.from_params(params, **host_keys(workspace, new))
    for job, (step, age) in enumerate([(4, 300), (8, 200), (12, 100)], start=1):
        folder = tmp_path / f"checkpoints_job_{job}"
        write_owner(folder, trainer="SFTConfig", model_name="tiny-llada")
        for k in (step - 2, step):
            fake_checkpoint(folder, k)
            then = 1_700_000_000 - age + k
            os.utime(folder / f"checkpoint-{k}", (then, then))
    assert resume_path(config, new, print) == str(tmp_path / "checkpoints_job_3" / "checkpoint-12")


# ---- learning_rate_schedule=constant with a warm-up: transformers' `constant` ignores the warm-up -------------------
@pytest.mark.parametrize(
    ("plugin", "config_class", "train", "data", "edits"),
    [
        ("diffusion_llm_trainer", SFTConfig, run_sft, doubling_conversations(8), {"warmup_ratio": "0.5"}),
        ("diffusion_dpo_trainer", DPOConfig, run_dpo, pairs(8), {**DPO_FORM, "batch_size": "2", "warmup_steps": "2"}),
    ],
    ids=["sft_warmup_ratio", "dpo_warmup_steps"],
)
def test_a_constant_schedule_with_a_warm_up_warms_up_and_says_so(
    workspace, tmp_path, plugin, config_class, train, data, edits
):
    form = {**edits, "train_steps": "4", "learning_rate": "0.001", "learning_rate_schedule": "constant"}
    config = config_class.from_params(form_params(plugin, form), **host_keys(workspace, tmp_path))
    reporter = Reporter()
    train(config, data, None, reporter)
    logged = [metrics["train/lr"] for _, metrics in reporter.metrics if "train/lr" in metrics]
    # a warm-up of 2 steps (half of 4, or warmup_steps=2): step k (from 1) trains at min(1, (k - 1) / 2) of the rate
    assert logged == pytest.approx([0.001 * min(1.0, (k - 1) / 2) for k in range(1, 5)])
    notes = [m for m in reporter.messages if "learning_rate_schedule=constant" in m]
    assert len(notes) == 1 and "using constant_with_warmup" in notes[0], reporter.messages
