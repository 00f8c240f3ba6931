"""ELBO-DPO: the estimator (step-0 identity, variance reduction, per-sample backward = all graphs) on a tiny LLaDA
with LoRA, and the trainer end to end (reference modes, memory modes and accumulation, learning, exact resume,
metric names, bad input)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import pytest
import torch

import dlm.trainers.dpo_trainer as dpo_trainer
from dlm.elbo import elbo_terms
from dlm.errors import ModelError
from dlm.loading import load_model_and_tokenizer
from dlm.lora import apply_lora
from dlm.preference_loss import (
    ElboDPOSettings,
    draw_pair_masks,
    elbo_dpo_loss,
    pair_losses,
    pair_scores,
    response_elbos,
)
from dlm.trainers.dpo_config import DPOConfig, DPOError
from dlm.trainers.dpo_trainer import PreferenceCollator, run_dpo
from plugin_sdk.preferences import PreferenceExample
from tests.helpers import Reporter, max_difference, tiny_run, weights

REPO = Path(__file__).resolve().parents[2]
MC_SAMPLES = 8  # Monte-Carlo samples per response in the tiny estimator tests
LN2_FLOAT32 = float(torch.tensor(math.log(2), dtype=torch.float32))


def pairs(n: int, offset: int = 0) -> list[PreferenceExample]:
    """'Say A' / 'Say B' prompts of varied length (so batches are padded); the chosen answer is the letter asked
    for. Half ask for each letter, so a preference for one letter alone scores 50%."""
    out = []
    for i in range(offset, offset + n):
        letter, other = ("A", "B") if i % 2 == 0 else ("B", "A")
        prompt = f"Say {letter}." + " Please." * (i % 3) + f" ({i})"
        out.append(PreferenceExample(str(i), [{"role": "user", "content": prompt}], letter, other))
    return out


@pytest.fixture(scope="module")
def workspace(preset_workspace: Path) -> str:
    return str(preset_workspace)


def config(workspace: str, out: Path, **overrides) -> DPOConfig:
    values = {
        **tiny_run(workspace, out),
        "batch_size": 4,
        "train_steps": 1,
        "warmup_steps": 0,
        "mc_samples": 2,
        "sft_weight": 0.0,
    }
    return DPOConfig(**{**values, **overrides})


# ---- the estimator on a tiny LoRA model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(workspace: str):
    """(LoRA model with zero adapters = the reference, settings, a padded batch of 3 short random pairs)."""
    loaded = load_model_and_tokenizer("tiny-llada", workspace=workspace, dtype="float32")
    torch.manual_seed(0)
    model = apply_lora(loaded.model, loaded.family, r=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(10, 1000, (n,), generator=generator).tolist()

    shapes = [(2, 5, 3), (4, 3, 6), (3, 6, 4)]  # prompt, chosen and rejected lengths
    rows = [
        {"id": str(i), "prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)}
        for i, (p, c, r) in enumerate(shapes)
    ]
    batch = PreferenceCollator(loaded.special_ids.pad)(rows)
    settings = ElboDPOSettings(
        mask_id=loaded.special_ids.mask, shift=False, beta=0.2, loss_type="sigmoid", block_size=None
    )
    return model, settings, batch


def perturbed(model: torch.nn.Module, scale: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Small random LoRA B matrices (policy != reference); returns the old values to restore."""
    generator = torch.Generator().manual_seed(seed)
    saved = {}
    for name, p in model.named_parameters():
        if "lora_B" in name:
            saved[name] = p.detach().clone()
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return saved


def restore(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in saved:
                p.copy_(saved[name])


def reference_logps(model, batch, masks, settings) -> torch.Tensor:
    with torch.no_grad(), model.disable_adapter():
        return response_elbos(model, batch, masks, settings)


@pytest.mark.parametrize("antithetic", [True, False])
def test_step0_identity_holds_exactly_with_shared_masks_only(tiny, antithetic):
    model, settings, batch = tiny
    masks = draw_pair_masks(batch, MC_SAMPLES, seed=3, draw="train0")
    reference_masks = masks if antithetic else draw_pair_masks(batch, MC_SAMPLES, seed=3, draw="other")
    out = elbo_dpo_loss(
        model, batch, masks, reference_logps(model, batch, reference_masks, settings), settings, normaliser=3
    )
    if antithetic:
        assert out.scores.tolist() == [0.0] * 3
        assert out.pair_losses.tolist() == [math.log(2)] * 3
        assert (out.chosen_rewards - out.rejected_rewards).tolist() == [0.0] * 3
        assert out.loss.item() == math.log(2)
    else:
        assert bool((out.scores != 0).all())  # independent masks: the same model scores differently
        assert out.loss.item() != math.log(2)


def test_sharing_and_more_samples_cut_the_variance_of_the_score(tiny):
    model, settings, batch = tiny
    saved = perturbed(model, 0.002)
    try:
        repeats = 30

        def elbos(n: int, seeds: range, adapters: bool) -> torch.Tensor:
            masks = torch.cat([draw_pair_masks(batch, n, seed=s, draw="v") for s in seeds])
            kwargs = {"mask_id": settings.mask_id, "shift": False, "attention_mask": batch["attention_mask"]}
            with torch.no_grad(), contextlib.nullcontext() if adapters else model.disable_adapter():
                terms = elbo_terms(model, batch["input_ids"], batch["response_mask"], masks, batch_size=512, **kwargs)
            return terms.reshape(len(seeds), n, -1).mean(1)

        def variance(n: int, shared: bool) -> float:
            policy = elbos(n, range(repeats), adapters=True)
            reference = elbos(n, range(repeats) if shared else range(1000, 1000 + repeats), adapters=False)
            scores = torch.stack([pair_scores(p, r, settings.beta) for p, r in zip(policy, reference, strict=True)])
            return scores.var(dim=0).mean().item()

        shared_1, independent_1, shared_8 = variance(1, True), variance(1, False), variance(8, True)
        policy = elbos(8, range(1), adapters=True)[0]
        assert pair_scores(policy, elbos(8, range(1), adapters=False)[0], settings.beta).abs().max() > 1e-3
    finally:
        restore(model, saved)
    assert independent_1 >= 10 * shared_1, (independent_1, shared_1)
    assert shared_1 >= 4 * shared_8, (shared_1, shared_8)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_per_sample_backward_gives_the_gradient_of_all_graphs(tiny, loss_type):
    model, settings, batch = tiny
    settings = dataclasses.replace(settings, loss_type=loss_type)
    saved = perturbed(model, 0.05, seed=1)
    try:
        masks = draw_pair_masks(batch, MC_SAMPLES, seed=5, draw="g")
        reference = reference_logps(model, batch, masks, settings)
        trained = [p for p in model.parameters() if p.requires_grad]

        model.zero_grad()
        kept = elbo_dpo_loss(model, batch, masks, reference, settings, normaliser=3)
        kept.loss.backward()
        expected = [p.grad.clone() for p in trained]

        model.zero_grad()
        lasts = []

        def backward(unit, last):
            lasts.append(last)
            unit().backward()

        sampled = elbo_dpo_loss(model, batch, masks, reference, settings, normaliser=3, backward=backward)
        got = [p.grad.clone() for p in trained]
    finally:
        restore(model, saved)
        model.zero_grad()
    assert lasts == [False] * 7 + [True]
    assert not sampled.loss.requires_grad and sampled.loss.item() == pytest.approx(kept.loss.item(), abs=1e-12)
    assert sampled.scores.abs().max() > 1e-3  # the coefficients are not the step-0 ones
    scale = max(g.abs().max().item() for g in expected)
    assert scale > 1e-4
    assert max((g - e).abs().max().item() for g, e in zip(got, expected, strict=True)) <= 1e-5 * max(scale, 1.0)


def test_pair_losses():
    scores = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    sigmoid = pair_losses(scores, 0.5, "sigmoid")
    torch.testing.assert_close(sigmoid, torch.log1p(torch.exp(-scores)))
    ipo = pair_losses(scores, 0.5, "ipo")
    torch.testing.assert_close(ipo, (scores / 0.5 - 1.0) ** 2)


def test_collator_lays_out_chosen_then_rejected_with_padding_hidden():
    rows = [
        {"id": "7", "prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
        {"id": "9", "prompt_ids": [1], "chosen_ids": [8], "rejected_ids": [9, 10, 11, 12]},
    ]
    batch = PreferenceCollator(pad_id=0)(rows)
    assert batch["example_ids"] == ["7", "9"]
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 4, 5],
        [1, 8, 0, 0, 0],
        [1, 2, 3, 6, 0],
        [1, 9, 10, 11, 12],
    ]
    assert batch["response_mask"].long().tolist() == [
        [0, 0, 0, 1, 1],
        [0, 1, 0, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 1, 1, 1, 1],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert "reference_logps" not in batch
    with_reference = [{**r, "reference_logps": (-1.5 - i, -2.5 - i)} for i, r in enumerate(rows)]
    assert PreferenceCollator(0)(with_reference)["reference_logps"].tolist() == [-1.5, -2.5, -2.5, -3.5]


# ---- the trainer -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reference", "lora"),
    [
        ("disabled_adapters", True),
        ("frozen_copy", True),
        ("precomputed", True),
        ("frozen_copy", False),
        ("precomputed", False),
    ],
)
def test_every_reference_mode_starts_at_ln2_with_zero_rewards(workspace, tmp_path, reference, lora):
    reporter = Reporter()
    run_dpo(config(workspace, tmp_path, reference=reference, lora=lora), pairs(8), None, reporter)
    # precomputed reference ELBOs come from other batches (other padding): equal up to float rounding
    exact = reference != "precomputed"
    assert reporter.first("train/loss") == (LN2_FLOAT32 if exact else pytest.approx(LN2_FLOAT32, abs=1e-6))
    for name in ("train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins"):
        assert reporter.first(name) == (0.0 if exact else pytest.approx(0.0, abs=1e-6)), name
    assert any(f"reference {reference}" in m for m in reporter.messages)


def test_without_sharing_the_first_step_is_not_the_identity(workspace, tmp_path):
    reporter = Reporter()
    run_dpo(config(workspace, tmp_path, antithetic=False), pairs(8), None, reporter)
    assert reporter.first("train/rewards/margins") != 0.0
    assert reporter.first("train/loss") != LN2_FLOAT32


@pytest.fixture
def sgd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train with SGD without clipping: the update is lr x gradient, so weights compare gradients (Adam's first
    steps are about lr x sign(gradient), which turns rounding noise in near-zero gradients into lr-sized steps)."""
    make_args = dpo_trainer.training_arguments
    monkeypatch.setattr(
        dpo_trainer, "training_arguments", lambda *a: dataclasses.replace(make_args(*a), optim="sgd", max_grad_norm=0.0)
    )


def test_memory_modes_and_accumulation_give_the_same_step(workspace, tmp_path, monkeypatch, sgd):
    """One SGD step (update = lr x gradient) of all weights, SFT term included: all graphs kept in one batch of 4
    pairs, and per-sample backward over 2 micro-batches of 2, end at the same weights."""

    def fixed_mask(batch, config, generator=None):  # SFT masks from the content: the same for any batching
        ids = batch["input_ids"]
        t = 0.2 + ((ids * batch["attention_mask"]).sum(-1) % 7).float() / 10
        positions = torch.arange(ids.shape[1])
        return t, (batch["labels"] != -100) & ((ids + positions) % 2 == 0)

    monkeypatch.setattr(dpo_trainer, "draw_mask", fixed_mask)
    common = {"lora": False, "learning_rate": 1.0, "sft_weight": 0.5, "mc_samples": 3}
    kept = run_dpo(
        config(workspace, tmp_path / "kept", memory_mode="keep_graphs", **common), pairs(8), None, Reporter()
    )
    sampled = run_dpo(
        config(
            workspace,
            tmp_path / "sampled",
            memory_mode="per_sample_backward",
            batch_size=2,
            gradient_accumulation_steps=2,
            **common,
        ),
        pairs(8),
        None,
        Reporter(),
    )
    before = weights(load_model_and_tokenizer("tiny-llada", workspace=workspace, dtype="float32").model)
    assert max_difference(weights(kept.model), before) > 1e-3  # the step did something
    assert max_difference(weights(kept.model), weights(sampled.model)) <= 1e-6


def test_precomputed_reference_trains_like_the_live_one_without_reference_passes(workspace, tmp_path, monkeypatch, sgd):
    passes, draws = [], []
    reference_logps, draw = dpo_trainer.DiffusionDPOTrainer._reference_logps, dpo_trainer.draw_pair_masks

    def counting(self, inputs, masks):
        passes.append("reference_logps" not in inputs)
        return reference_logps(self, inputs, masks)

    def recording(batch, n, seed, name, block_size=None):
        draws.append(name)
        return draw(batch, n, seed, name, block_size)

    monkeypatch.setattr(dpo_trainer.DiffusionDPOTrainer, "_reference_logps", counting)
    monkeypatch.setattr(dpo_trainer, "draw_pair_masks", recording)
    common = {"train_steps": 0, "num_train_epochs": 1, "learning_rate": 1.0}
    live = run_dpo(
        config(workspace, tmp_path / "live", reference="disabled_adapters", **common), pairs(8), None, Reporter()
    )
    assert passes == [True, True]  # a reference pass per step
    passes.clear()
    stored = run_dpo(
        config(workspace, tmp_path / "stored", reference="precomputed", **common), pairs(8), None, Reporter()
    )
    assert passes == [True, True, False, False]  # 8 pairs scored in 2 batches before training, none after
    # the same masks (per example), reference ELBOs equal up to the rounding of other padding: the same training
    trained = weights(live.model)
    assert max(v.abs().max().item() for k, v in trained.items() if "lora_B" in k) > 1e-3  # LoRA B starts at 0
    assert max_difference(trained, weights(stored.model)) <= 1e-6
    passes.clear()
    draws.clear()
    run_dpo(
        config(workspace, tmp_path / "epochs", reference="precomputed", num_train_epochs=2, train_steps=0),
        pairs(8),
        None,
        Reporter(),
    )
    assert passes == [True, True, False, False, False, False]  # later epochs reuse the stored ELBOs...
    assert draws == ["train0"] * 6  # ...and the masks they were computed on


def test_learns_a_held_out_preference(workspace, tmp_path):
    reporter = Reporter()
    result = run_dpo(
        config(
            workspace,
            tmp_path,
            lora=False,  # (reference: frozen_copy) LoRA on the random tiny model learns this task far slower
            train_steps=40,
            learning_rate=5e-3,
            learning_rate_schedule="cosine",
            mc_samples=4,
            sft_weight=0.05,
            eval_steps=20,
            seed=7,
        ),
        pairs(64),
        pairs(16, offset=1000),
        reporter,
    )
    history = [m["val/rewards/accuracies"] for _, m in reporter.metrics if "val/rewards/accuracies" in m]
    assert len(history) == 2 and history[-1] == result.validation_metrics["eval_rewards/accuracies"]
    assert history[-1] >= 0.9, history
    assert result.validation_metrics["eval_rewards/margins"] > 0.5
    names = {name for _, m in reporter.metrics for name in m}
    expected = {f"{split}/{metric}" for split in ("train", "val") for metric in dpo_trainer.METRICS}
    expected |= {"train/loss", "train/lr", "train/grad_norm", "train/memory_gb", "train/sft_loss", "val/loss"}
    assert expected <= names, expected - names
    assert result.global_step == 40


def test_stop_and_resume_equals_uninterrupted_run(workspace, tmp_path):
    common = {"train_steps": 4, "mc_samples": 4, "sft_weight": 0.1}  # per_sample_backward (auto) with the SFT term
    examples = pairs(16)
    whole = run_dpo(config(workspace, tmp_path / "whole", **common), examples, None, Reporter())
    out = tmp_path / "stopped"
    first = run_dpo(config(workspace, out, **common), examples, None, Reporter(stop_at=2))
    assert first.stopped and first.global_step == 2
    resumed = run_dpo(config(workspace, out, resume_from_checkpoint="latest", **common), examples, None, Reporter())
    assert resumed.global_step == 4 and not resumed.stopped
    assert max_difference(weights(whole.model), weights(resumed.model)) <= 1e-6


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"reference": "disabled_adapters", "lora": False}, DPOError, "reference=disabled_adapters .* lora is off"),
        ({"mc_samples": 0}, DPOError, "mc_samples must be at least 1"),
        ({"memory_mode": "sometimes"}, DPOError, "memory_mode='sometimes' is not one of"),
        ({"model_name": "tiny-ar"}, ModelError, "tiny-ar is a ar model without a mask token"),
    ],
)
def test_bad_settings_are_named(workspace, tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        run_dpo(config(workspace, tmp_path, **overrides), pairs(4), None, Reporter())


RANK_PROBE = '''
"""Run by `accelerate launch` from tests/dlm/test_dpo.py: one SGD step on this process's share, weights saved per rank."""
import dataclasses, sys
from pathlib import Path

import torch

import dlm.trainers.dpo_trainer
from tests.dlm.test_dpo import config, pairs, Reporter

workspace, out, batch_size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
make_args = dlm.trainers.dpo_trainer.training_arguments
dlm.trainers.dpo_trainer.training_arguments = lambda *a: dataclasses.replace(make_args(*a), optim="sgd", max_grad_norm=0.0)
result = dlm.trainers.dpo_trainer.run_dpo(
    config(workspace, out / "checkpoints", batch_size=batch_size, learning_rate=1.0, mc_samples=4, sft_weight=0.0),
    pairs(16),
    None,
    Reporter(),
)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
torch.save({k: v.detach() for k, v in result.model.state_dict().items()}, out / f"weights{rank}.pt")
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
'''


@pytest.mark.slow
def test_two_processes_take_the_step_of_one_process_with_both_batches(workspace, tmp_path):
    """Data parallel with the default path (LoRA, adapters-disabled reference, per-sample backward): 2 processes x
    2 pairs end at the weights of 1 process x 4 pairs (the loss is normalised over both processes' pairs, and the
    gradients are synchronised once per micro-batch)."""
    import os
    import subprocess
    import sys

    from plugin_sdk.launch import LaunchPlan, accelerate_command

    script = tmp_path / "dpo_rank_probe.py"
    script.write_text(RANK_PROBE)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO)}
    runs = {"one": (1, "4"), "two": (2, "2")}
    for name, (processes, batch_size) in runs.items():
        argv = [str(script), workspace, str(tmp_path / name), batch_size]
        command = accelerate_command(LaunchPlan(num_processes=processes, use_cpu=True), argv)
        if processes == 1:
            command = [sys.executable, *argv]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "weights0.pt")
    two = [torch.load(tmp_path / "two" / f"weights{rank}.pt") for rank in (0, 1)]
    assert max_difference(two[0], two[1]) == 0.0
    assert max(v.abs().max().item() for k, v in one.items() if "lora_B" in k) > 1e-3  # the step did something
    assert max_difference(one, two[0]) <= 1e-6


@pytest.mark.parametrize("model", ["tiny-dream", "tiny-bert", "tiny-a2d", "tiny-llada-moe"])
def test_other_families_start_at_the_identity_and_train(workspace, tmp_path, model):
    reporter = Reporter()
    result = run_dpo(
        config(workspace, tmp_path, model_name=model, train_steps=2, sft_weight=0.05), pairs(8), None, reporter
    )
    assert result.global_step == 2
    assert reporter.first("train/rewards/margins") == 0.0 and reporter.first("train/rewards/chosen") == 0.0
    losses = [m["train/loss"] for _, m in reporter.metrics if "train/loss" in m]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert reporter.last("train/rewards/margins") != 0.0  # the first step changed the policy
