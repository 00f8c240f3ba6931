"""`python -m demo`: the whole product on this machine, with no download.

A deterministic digit-sorting task (`demo.task`) is written into the workspace as two datasets, then every
stage runs as a real job of the plugins through the local runner, with the job records the workbench shows:
1. evaluate the untrained tiny-llada and tiny-ar on held-out test problems;
2. SFT tiny-llada (masked-diffusion loss, all weights);
3. train tiny-ar with the next-token loss on the same data with the same budget;
4. DPO the SFT model (ELBO-DPO, LoRA) on preference pairs;
5. evaluate SFT+DPO, SFT and the causal model side by side.
With `rl`, an under-trained SFT of tiny-llada is trained further with GRPO on prompt/answer rows and both are
evaluated (`demo.rl`).
With `block_diffusion`, a block-diffusion model (`tiny-bd3lm`, tiny-ar converted to blocks of 4) is SFT-ed with the
same data and budget as tiny-llada (the x_t ⊕ x_0 loss, in blocks of its own size) and evaluated beside the others,
untrained and trained.
The numbers are read back from the jobs' own outputs (the evaluator's results.json, the trainers' metrics.json and
TensorBoard events) into one report in `<workspace>/demo/`: a table on the terminal, results.json, a PNG chart and
an HTML page.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from demo import rl
from demo.task import MAX_DIGITS, build_task, write_task
from dlm.report import ModelResult, comparison_text, write_report
from plugin_sdk.backends.local import JobRecord
from plugin_sdk.errors import PluginError
from plugin_sdk.manifest import find_plugin
from plugin_sdk.runner import run_plugin
from plugin_sdk.safe_files import write_json_atomic
from plugin_sdk.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "demo"
SFT_DATASET = "demo-digit-sort"
PREFERENCE_DATASET = "demo-digit-sort-preferences"
SFT_NAME = "demo-sft"
DPO_NAME = "demo-dpo"
BLOCK_MODEL = "tiny-bd3lm"
BLOCK_STAGE = f"SFT {BLOCK_MODEL}"
# The bar for "it learned": held-out task accuracy after SFT and its gain over the untrained model, held-out
# DPO reward accuracy, and the most task accuracy DPO may cost.
MIN_SFT_ACCURACY = 0.5
MIN_SFT_GAIN = 0.4
MIN_DPO_REWARD_ACCURACY = 0.8
MAX_DPO_ACCURACY_DROP = 0.02
# The block-diffusion model's bar: tiny-llada's accuracy floor and gain, and a perplexity bound at most a tenth of its
# untrained self's.
MAX_BLOCK_PERPLEXITY_RATIO = 0.1
REPORTED_METRICS = ("task_accuracy", "conditional_perplexity", "tokens_per_sec")
PERPLEXITY_NOTE = (
    "conditional_perplexity scores each test answer given its prompt in the model's chat template, as SFT trained "
    "it (the prompt never masked): the diffusion ELBO bound and the exact causal value side by side."
)


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: task splits and training budgets (the same for the diffusion and the causal model)."""

    train: int
    validation: int
    test: int
    sft_steps: int
    dpo_steps: int
    dpo_pairs: int
    mc_num: int
    rl_sft_steps: int = 150  # the RL stage's under-trained start: about half the answers right
    grpo_steps: int = 300


SIZES = {
    "full": DemoSize(train=4000, validation=200, test=500, sft_steps=600, dpo_steps=40, dpo_pairs=2000, mc_num=32),
    "small": DemoSize(train=3000, validation=100, test=200, sft_steps=600, dpo_steps=40, dpo_pairs=2000, mc_num=16),
}


class DemoError(PluginError):
    """A stage of the demo failed; the message names the stage, its job, why, and where its log is."""


@dataclass
class Stage:
    name: str
    job_id: str
    seconds: float
    record: dict[str, Any]
    output_dir: Path


def recipe(size: DemoSize, *, block_diffusion: bool = False, rl_stage: bool = False) -> dict[str, dict[str, Any]]:
    """The parameters of every job, as a person would fill the plugins' forms (with `block_diffusion`, the SFT of
    the block-diffusion model too; with `rl_stage`, the short SFT and GRPO of the RL stage)."""
    # The canvas is as long as the longest answer and its end-of-turn token (one token per digit here). SFT pads a
    # batch only to its longest row, so the model never saw a longer canvas; given one, it ends answers early.
    answer_tokens = MAX_DIGITS + 1
    train = {
        "dataset": SFT_DATASET,
        "lora": False,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "learning_rate_schedule": "cosine",
        "warmup_ratio": 0.05,
        "num_train_epochs": 0,
        "train_steps": size.sft_steps,
        "max_length": 64,
        "logging_steps": 10,
        "eval_strategy": "steps",
        "eval_steps": 0.1,
        "save_steps": size.sft_steps,
        "adaptor_name": SFT_NAME,
    }
    jobs = {
        # Uniform weights: the ELBO's 1/t weights give the draws with few masked tokens large, noisy gradients,
        # which slows learning from scratch several-fold; the evaluation still reports the ELBO bound.
        "sft": {**train, "model_name": "tiny-llada", "template_name": "demo-sft-llada", "loss_weight_type": "uniform"},
        "ar": {**train, "model_name": "tiny-ar", "template_name": "demo-sft-ar", "training_method": "ar"},
        # IPO (a bounded target margin) reached a higher held-out reward accuracy than the sigmoid loss in the same
        # 40 steps (0.90 against 0.79-0.82) and cost less task accuracy on less trained models.
        "dpo": {
            "dataset": PREFERENCE_DATASET,
            "template_name": "demo-dpo",
            "random_sample_size": size.dpo_pairs,
            "lora": True,
            "learning_rate": 5e-4,
            "warmup_steps": 5,
            "num_train_epochs": 0,
            "train_steps": size.dpo_steps,
            "batch_size": 16,
            "loss_type": "ipo",
            "beta": 0.5,
            "mc_samples": 8,
            "sft_weight": 0.05,
            "memory_mode": "keep_graphs",
            "max_length": 64,
            "eval_steps": 0.5,
            "save_steps": size.dpo_steps,
            "adaptor_name": DPO_NAME,
        },
        "evaluate": {
            "dataset": SFT_DATASET,
            "dataset_split": "test",
            "num_samples": size.test,
            "metrics": ["task_accuracy", "conditional_perplexity", "speed"],
            "answer_extraction": "exact",
            "mc_num": size.mc_num,
            "batch_size": 64,
            "steps": answer_tokens,
            "max_new_tokens": answer_tokens,
            "block_length": answer_tokens,
        },
    }
    if block_diffusion:
        # block_size 0: the model's own (4); uniform weights for the same reason as tiny-llada's. The evaluator's
        # settings serve it as they are: a block-diffusion model decodes in the blocks it was trained with (4, not the
        # block_length of 6), laid out as in training (blocks from the prompt's first token), and the ELBO metrics use
        # the same blocks. (Decoded as dllm's sampler lays blocks out, the answer starting a block, the same trained
        # model gets 0.43 of the answers right; in training's layout, 0.95.)
        jobs["block_sft"] = {
            **train,
            "model_name": BLOCK_MODEL,
            "template_name": "demo-sft-bd3lm",
            "loss_weight_type": "uniform",
            "block_size": 0,
        }
    if rl_stage:
        jobs |= rl.rl_jobs(jobs["sft"], size.rl_sft_steps, size.grpo_steps)
    return jobs


def write_datasets(workspace: Workspace, size: DemoSize, seed: int, *, rl_stage: bool = False) -> dict[str, Any]:
    """The task's splits as two workspace datasets (a third, of prompt/answer rows, for the RL stage), stored as the
    workbench stores uploaded ones."""
    task = build_task(size.train, size.validation, size.test, seed=seed)
    if rl_stage:
        rl.write_rl_dataset(workspace, task.rows["train"])
    folders = {name: workspace.dataset_dir(name) for name in (SFT_DATASET, PREFERENCE_DATASET)}
    write_task(task, folders[SFT_DATASET], folders[PREFERENCE_DATASET])
    for name, what in ((SFT_DATASET, "instruction/output"), (PREFERENCE_DATASET, "prompt/chosen/rejected")):
        description = f"Demo task, sort digits: {what}, train/validation/test splits"
        write_json_atomic(
            folders[name] / "index.json", {"dataset_id": name, "location": "local", "description": description}
        )
    return task.settings


def run_stage(name: str, plugin: str, params: Mapping[str, Any], workspace: Workspace, *, verbose: bool) -> Stage:
    """Run one job of `plugin` as the workbench would; a failed job ends the demo with its reason."""
    print(f"[{name}] {plugin} ...", flush=True)
    started = time.perf_counter()
    # The job log keeps every line; unless verbose, the terminal shows only a progress bar (on stderr).
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        code, job_id = run_plugin(
            find_plugin(plugin, REPO_ROOT),
            dict(params),
            workspace=workspace,
            experiment=EXPERIMENT,
            show_progress=sys.stderr.isatty() and not verbose,
        )
    seconds = time.perf_counter() - started
    record = JobRecord(workspace, job_id).read()
    job_data = record.get("job_data", {})
    if code != 0 or job_data.get("completion_status") != "success":
        why = job_data.get("completion_details") or f"exit code {code}"
        log = workspace.job_dir(job_id) / f"output_{job_id}.txt"
        raise DemoError(f"stage {name!r} (job {job_id}, {plugin}) failed: {why}; log: {log}")
    if plugin == "diffusion_evaluator":
        output = workspace.eval_output_dir(EXPERIMENT, params["eval_name"], job_id)
    else:
        output = workspace.trainer_output_dir(EXPERIMENT, params["template_name"])
    print(f"[{name}] job {job_id} done in {seconds:.0f}s: {job_data.get('completion_details', '')}", flush=True)
    return Stage(name, job_id, seconds, record, output)


def evaluated_models(stage: Stage, labels: list[str]) -> dict[str, dict[str, Any]]:
    """The models of an evaluator job's results.json by new label (given in the order the job evaluated them)."""
    models = json.loads((stage.output_dir / "results.json").read_text(encoding="utf-8"))["models"]
    if len(models) != len(labels):
        raise DemoError(
            f"stage {stage.name!r}: expected {len(labels)} evaluated models, results.json has {len(models)}"
        )
    return {label: {**model, "label": label} for model, label in zip(models, labels, strict=True)}


def metric_value(model: Mapping[str, Any], name: str) -> float | None:
    return next((m["value"] for m in model["metrics"] if m["name"] == name), None)


def curve(stage: Stage, tag: str) -> list[tuple[float, float]]:
    """A scalar series of a trainer job, read from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(stage.record["job_data"]["tensorboard_output_dir"], size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags().get("scalars", []):
        return []
    return [(float(e.step), float(e.value)) for e in events.Scalars(tag)]


def learning_checks(models: Mapping[str, Mapping[str, Any]], dpo_metrics: Mapping[str, float]) -> list[dict]:
    """The issue's learning thresholds, each with the measured value and whether it holds; the block-diffusion
    model's too when it ran."""
    before = metric_value(models["llada untrained"], "task_accuracy")
    sft = metric_value(models["llada SFT"], "task_accuracy")
    dpo = metric_value(models["llada SFT+DPO"], "task_accuracy")
    checks: list[tuple[str, float | None, str, Callable[[float], bool]]] = [
        ("held-out task accuracy after SFT", sft, f">= {MIN_SFT_ACCURACY}", lambda v: v >= MIN_SFT_ACCURACY),
        ("task accuracy gained by SFT", _diff(sft, before), f">= {MIN_SFT_GAIN}", lambda v: v >= MIN_SFT_GAIN),
        (
            "held-out DPO rewards/accuracies",
            dpo_metrics.get("val/rewards/accuracies"),
            f">= {MIN_DPO_REWARD_ACCURACY}",
            lambda v: v >= MIN_DPO_REWARD_ACCURACY,
        ),
        (
            "task accuracy lost by DPO",
            _diff(sft, dpo),
            f"<= {MAX_DPO_ACCURACY_DROP}",
            lambda v: v <= MAX_DPO_ACCURACY_DROP,
        ),
    ]
    if "bd3lm SFT" in models:
        checks += _block_checks(models["bd3lm untrained"], models["bd3lm SFT"])
    if rl.LABELS[1] in models:
        checks += rl.rl_checks(models, lambda model: metric_value(model, "task_accuracy"))
    # Rounded before comparing: differences of accuracies (multiples of 1/n) are not exact in binary.
    return [
        {"check": name, "value": value, "target": target, "passed": value is not None and rule(round(value, 9))}
        for name, value, target, rule in checks
    ]


def _block_checks(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple]:
    """The block-diffusion model held to tiny-llada's bar: task accuracy after SFT and gained, and its perplexity
    bound against its untrained self's."""
    accuracy = metric_value(after, "task_accuracy")
    gain = _diff(accuracy, metric_value(before, "task_accuracy"))
    ratio = _ratio(metric_value(after, "conditional_perplexity"), metric_value(before, "conditional_perplexity"))
    return [
        (
            f"held-out task accuracy after {BLOCK_MODEL} SFT",
            accuracy,
            f">= {MIN_SFT_ACCURACY}",
            lambda v: v >= MIN_SFT_ACCURACY,
        ),
        (f"task accuracy gained by {BLOCK_MODEL} SFT", gain, f">= {MIN_SFT_GAIN}", lambda v: v >= MIN_SFT_GAIN),
        (
            f"perplexity bound after {BLOCK_MODEL} SFT / untrained",
            ratio,
            f"<= {MAX_BLOCK_PERPLEXITY_RATIO}",
            lambda v: v <= MAX_BLOCK_PERPLEXITY_RATIO,
        ),
    ]


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def run_stages(workspace: Workspace, jobs: Mapping[str, Mapping[str, Any]], *, verbose: bool) -> dict[str, Stage]:
    """The jobs in order, by stage name: evaluate untrained, SFT tiny-llada, train tiny-ar, SFT tiny-bd3lm (when
    `jobs` has it), DPO, evaluate trained; then the RL stage's (when `jobs` has it)."""

    def stage(name: str, plugin: str, params: Mapping[str, Any]) -> Stage:
        return run_stage(name, plugin, params, workspace, verbose=verbose)

    bases = ["tiny-llada", "tiny-ar", *([BLOCK_MODEL] if jobs.get("block_sft") else [])]
    trained = [str(workspace.model_dir(f"{base}_{SFT_NAME}")) for base in bases]
    adapter = str(workspace.adaptor_dir(f"tiny-llada_{SFT_NAME}", DPO_NAME))
    # The results of an earlier demo in this workspace: the trainers refuse to write over a result.
    earlier = rl.rl_result_folders(workspace) if jobs.get("grpo") else []
    for folder in [*trained, adapter, *(workspace.adaptor_dir(base, SFT_NAME) for base in bases), *earlier]:
        shutil.rmtree(folder, ignore_errors=True)
    evaluate = jobs["evaluate"]
    stages = [
        stage(
            "evaluate untrained",
            "diffusion_evaluator",
            {**evaluate, "model_name": bases[0], "compare_with": bases[1:], "eval_name": "demo-before"},
        ),
        stage("SFT tiny-llada", "diffusion_llm_trainer", jobs["sft"]),
        stage("train tiny-ar", "diffusion_llm_trainer", jobs["ar"]),
    ]
    if jobs.get("block_sft"):
        stages.append(stage(BLOCK_STAGE, "diffusion_llm_trainer", jobs["block_sft"]))
    dpo = {**jobs["dpo"], "model_name": trained[0], "adaptor_output_dir": adapter}
    stages.append(stage("DPO", "diffusion_dpo_trainer", dpo))
    after = {**evaluate, "model_name": trained[0], "model_adapter": adapter, "eval_name": "demo-after"}
    stages.append(stage("evaluate trained", "diffusion_evaluator", {**after, "compare_with": trained}))
    if jobs.get("grpo"):
        stages += rl.run_rl_stages(workspace, jobs, evaluate, stage)
    return {s.name: s for s in stages}


def all_evaluated_models(stages: Mapping[str, Stage]) -> dict[str, dict[str, Any]]:
    """The models both evaluator jobs scored, by label."""
    block = ["bd3lm"] if BLOCK_STAGE in stages else []
    models = evaluated_models(stages["evaluate untrained"], [f"{f} untrained" for f in ("llada", "ar", *block)])
    labels = ["llada SFT+DPO", *(f"{f} SFT" for f in ("llada", "ar", *block))]
    models |= evaluated_models(stages["evaluate trained"], labels)
    if rl.EVALUATE_STAGE in stages:
        models |= evaluated_models(stages[rl.EVALUATE_STAGE], list(rl.LABELS))
    return models


def model_results(
    models: Mapping[str, Mapping[str, Any]], stages: Mapping[str, Stage], dpo_metrics: Mapping[str, float]
) -> list[ModelResult]:
    """The models of the report, in its order, with the trainers' own numbers beside the evaluator's."""
    extra_metrics = {
        "llada SFT": [_job_seconds(stages["SFT tiny-llada"])],
        "ar SFT": [_job_seconds(stages["train tiny-ar"])],
        "llada SFT+DPO": [
            {
                "name": "val/rewards/accuracies",
                "value": dpo_metrics.get("val/rewards/accuracies"),
                "kind": "estimate",
                "details": {"job": stages["DPO"].job_id, "measured on": "held-out preference pairs, by the DPO job"},
            }
        ],
    }
    order = ["llada untrained", "llada SFT", "llada SFT+DPO", "ar untrained", "ar SFT"]
    if BLOCK_STAGE in stages:
        extra_metrics["bd3lm SFT"] = [_job_seconds(stages[BLOCK_STAGE])]
        order += ["bd3lm untrained", "bd3lm SFT"]
    if rl.GRPO_STAGE in stages:
        extra_metrics[rl.LABELS[0]] = [_job_seconds(stages[rl.SHORT_SFT_STAGE])]
        extra_metrics[rl.LABELS[1]] = [_job_seconds(stages[rl.GRPO_STAGE])]
        order += list(rl.LABELS)
    return [_model_result(models[label], extra_metrics.get(label, [])) for label in order]


def training_curves(stages: Mapping[str, Stage]) -> dict[str, list[tuple[float, float]]]:
    curves = {
        "SFT llada train/loss": curve(stages["SFT tiny-llada"], "train/loss"),
        "SFT ar train/loss": curve(stages["train tiny-ar"], "train/loss"),
    }
    if BLOCK_STAGE in stages:
        curves["SFT bd3lm train/loss"] = curve(stages[BLOCK_STAGE], "train/loss")
    if rl.GRPO_STAGE in stages:
        curves["GRPO train/reward"] = curve(stages[rl.GRPO_STAGE], "train/reward")
    return curves | {
        "DPO train/loss": curve(stages["DPO"], "train/loss"),
        "DPO val/rewards/accuracies": curve(stages["DPO"], "val/rewards/accuracies"),
    }


def run_demo(
    workspace: Workspace,
    size_name: str = "full",
    *,
    seed: int = 0,
    verbose: bool = False,
    block_diffusion: bool = False,
    rl_stage: bool = False,
) -> dict:
    """Run every stage and write the report into `<workspace>/demo/`; returns the report's paths, the learning
    checks and the wall time. `block_diffusion` adds the block-diffusion model (`BLOCK_MODEL`), `rl_stage` the RL
    stage (`demo.rl`)."""
    size = SIZES[size_name]
    jobs = recipe(size, block_diffusion=block_diffusion, rl_stage=rl_stage)
    started = time.perf_counter()
    task = write_datasets(workspace, size, seed, rl_stage=rl_stage)
    print(f"Demo ({size_name}) in workspace {workspace.root}; task: {task}", flush=True)
    stages = run_stages(workspace, jobs, verbose=verbose)
    dpo_metrics = json.loads((stages["DPO"].output_dir / "metrics.json").read_text(encoding="utf-8"))
    models = all_evaluated_models(stages)
    checks = learning_checks(models, dpo_metrics)
    results = model_results(models, stages, dpo_metrics)
    total = time.perf_counter() - started
    summary = {
        "size": size_name,
        **asdict(size),
        "seed": seed,
        "wall_time_s": round(total, 1),
        "stages": [
            {"stage": s.name, "job_id": s.job_id, "seconds": round(s.seconds, 1), "output_dir": str(s.output_dir)}
            for s in stages.values()
        ],
    }
    settings = {
        "demo": summary,
        "learning checks": "\n".join(_check_text(check) for check in checks),
        "perplexity": PERPLEXITY_NOTE,
        **{f"{name} job": params for name, params in jobs.items()},
    }
    extra = {"demo": summary, "checks": checks, "dpo_metrics": dpo_metrics}
    dataset = {"source": SFT_DATASET, "split": "test", "num_examples": size.test, "task": task}
    paths = write_report(
        workspace.root / "demo", results, settings, dataset=dataset, extra=extra, curves=training_curves(stages)
    )
    print_summary(results, checks, list(stages.values()), total, paths)
    return {"paths": paths, "checks": checks, "wall_time_s": total}


def print_summary(
    results: Sequence[ModelResult],
    checks: Sequence[Mapping[str, Any]],
    stages: Sequence[Stage],
    total: float,
    paths: Mapping[str, Path],
) -> None:
    print("\nHeld-out test problems (mean ± standard error; ≤ marks the diffusion ELBO bound, AR is exact):")
    print(comparison_text(results))
    print(f"Note: {PERPLEXITY_NOTE}")
    print("\nLearning checks:")
    for check in checks:
        print("  " + _check_text(check))
    print("\nStages: " + ", ".join(f"{s.name} {s.seconds:.0f}s (job {s.job_id})" for s in stages))
    print(f"Total: {total:.0f}s")
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def _check_text(check: Mapping[str, Any]) -> str:
    value = "n/a" if check["value"] is None else f"{check['value']:.3f}"
    return f"{'PASS' if check['passed'] else 'FAIL'}  {check['check']}: {value} (target {check['target']})"


def _job_seconds(stage: Stage) -> dict[str, Any]:
    return {"name": "train_job_seconds", "value": stage.seconds, "kind": "exact", "details": {"job": stage.job_id}}


def _model_result(model: Mapping[str, Any], extra_metrics: list[dict[str, Any]]) -> ModelResult:
    return ModelResult(
        label=model["label"],
        model=model["model"],
        path=model["path"],
        family=model["family"],
        adapter=model.get("adapter"),
        metrics=[m for m in model["metrics"] if m["name"] in REPORTED_METRICS] + extra_metrics,
        samples=model.get("samples", []),
        seconds=model.get("seconds"),
    )
