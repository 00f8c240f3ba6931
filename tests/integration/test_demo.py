"""The demo: its task generator (deterministic, disjoint splits, right answers, plausible wrong ones) and, at the
small size, the whole demo through the plugins, held to the issue's learning thresholds."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from demo import rl
from demo.run import (
    MAX_DPO_ACCURACY_DROP,
    MIN_DPO_REWARD_ACCURACY,
    MIN_SFT_ACCURACY,
    MIN_SFT_GAIN,
    SIZES,
    DemoError,
    evaluated_models,
    learning_checks,
    recipe,
    run_stage,
    write_datasets,
)
from demo.task import DemoTaskError, build_task, is_correct, write_task, wrong_answer
from plugin_sdk.data import load_dataset_splits, load_rows
from plugin_sdk.workspace import Workspace


def digits_of(prompt: str) -> list[int]:
    match = re.fullmatch(r"Sort: ((?:\d )*\d)", prompt)
    assert match, prompt
    return [int(d) for d in match.group(1).split()]


def test_task_is_deterministic_and_seeded():
    a, b = build_task(50, 10, 10, seed=3), build_task(50, 10, 10, seed=3)
    assert a == b
    assert build_task(50, 10, 10, seed=4).rows != a.rows
    assert a.settings == {"train": 50, "validation": 10, "test": 10, "min_digits": 4, "max_digits": 5, "seed": 3}


def test_splits_are_sized_and_disjoint():
    task = build_task(2000, 300, 300, seed=0)
    sizes = {split: len(rows) for split, rows in task.rows.items()}
    assert sizes == {"train": 2000, "validation": 300, "test": 300}
    prompts = {split: [r["instruction"] for r in rows] for split, rows in task.rows.items()}
    for split, listed in prompts.items():
        assert len(set(listed)) == len(listed), f"repeated problems in {split}"
    assert not set(prompts["train"]) & set(prompts["validation"])
    assert not set(prompts["train"]) & set(prompts["test"])
    assert not set(prompts["validation"]) & set(prompts["test"])
    lengths = Counter(len(digits_of(p)) for p in prompts["train"])
    assert set(lengths) == {4, 5} and min(lengths.values()) > 200


def test_answers_are_the_digits_in_order():
    task = build_task(500, 50, 50, seed=1)
    for rows in task.rows.values():
        for row in rows:
            digits = digits_of(row["instruction"])
            answer = [int(d) for d in row["output"].split(" ")]
            # checked by counting, independently of sorted()
            assert Counter(answer) == Counter(digits)
            assert all(x <= y for x, y in zip(answer, answer[1:], strict=False))


def slip(chosen: str, rejected: str) -> str:
    """Which plausible slip turns `chosen` into `rejected`; fails when it is none of them."""
    good, bad = [int(d) for d in chosen.split()], [int(d) for d in rejected.split()]
    assert len(good) == len(bad) and good != bad
    diff = [i for i in range(len(good)) if good[i] != bad[i]]
    if len(diff) == 2 and diff[1] == diff[0] + 1 and good[diff[0]] == bad[diff[1]] and good[diff[1]] == bad[diff[0]]:
        return "order"
    assert len(diff) == 1, (chosen, rejected)
    i = diff[0]
    if bad[i] in [good[j] for j in (i - 1, i + 1) if 0 <= j < len(good)]:
        return "count"
    assert abs(bad[i] - good[i]) == 1, (chosen, rejected)
    return "digit"


def test_preference_pairs_are_right_against_plausibly_wrong():
    task = build_task(1000, 100, 100, seed=2)
    kinds = Counter()
    for split, pairs in task.preferences.items():
        assert [p["prompt"] for p in pairs] == [r["instruction"] for r in task.rows[split]]
        for pair, row in zip(pairs, task.rows[split], strict=True):
            assert pair["chosen"] == row["output"]
            assert not is_correct(pair["rejected"], pair["chosen"])
            kinds[slip(pair["chosen"], pair["rejected"])] += 1
    total = sum(kinds.values())
    assert 0.4 < kinds["count"] / total < 0.6 and kinds["order"] / total > 0.15 and kinds["digit"] / total > 0.15


def test_wrong_answer_of_equal_digits_moves_one_digit_inward():
    rng = random.Random(0)
    assert {wrong_answer([0, 0, 0, 0], rng) for _ in range(40)} == {"1 0 0 0", "0 1 0 0", "0 0 1 0", "0 0 0 1"}
    assert {wrong_answer([9, 9, 9], rng) for _ in range(30)} == {"8 9 9", "9 8 9", "9 9 8"}


def test_scoring_ignores_spacing_only():
    assert is_correct(" 1  2 3\n", "1 2 3")
    assert not is_correct("123", "1 2 3") and not is_correct("1 2 3 4", "1 2 3")


@pytest.mark.parametrize(
    ("sizes", "kwargs", "message"),
    [
        ((10, -1, 5), {}, "must be >= 0"),
        ((10, 5, 5), {"min_digits": 3, "max_digits": 2}, "min_digits <= max_digits"),
        ((400, 100, 100), {"min_digits": 2, "max_digits": 2}, "at most 50"),
    ],
)
def test_impossible_sizes_are_refused(sizes, kwargs, message):
    with pytest.raises(DemoTaskError, match=message):
        build_task(*sizes, **kwargs)


def test_written_task_reads_as_datasets_with_splits(tmp_path):
    task = build_task(40, 8, 6, seed=0)
    write_task(task, tmp_path / "sft", tmp_path / "prefs")
    splits = load_dataset_splits(str(tmp_path / "sft"), workspace=None)
    assert list(splits.train) == task.rows["train"] and list(splits.validation) == task.rows["validation"]
    assert list(load_rows(str(tmp_path / "sft"), workspace=None, split="test")) == task.rows["test"]
    assert list(load_rows(str(tmp_path / "prefs"), workspace=None, split="test")) == task.preferences["test"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_a_failed_stage_ends_the_demo_with_its_reason_and_log(tmp_path, capsys):
    params = {"model_name": "tiny-llada", "num_samples": -1, "eval_name": "broken"}
    with pytest.raises(DemoError) as failure:
        run_stage("evaluate", "diffusion_evaluator", params, Workspace(tmp_path), verbose=False)
    message = str(failure.value)
    assert message.startswith("stage 'evaluate' (job 1, diffusion_evaluator) failed: "), message
    assert "num_samples" in message and message.endswith(f"log: {tmp_path / 'jobs' / '1' / 'output_1.txt'}")
    assert "num_samples" not in capsys.readouterr().out  # the job's own lines stay in its log


def test_block_diffusion_checks_hold_the_block_model_to_the_same_bar():
    def model(accuracy: float, perplexity: float) -> dict:
        metrics = [("task_accuracy", accuracy), ("conditional_perplexity", perplexity)]
        return {"metrics": [{"name": name, "value": value} for name, value in metrics]}

    models = {"llada untrained": model(0, 900), "llada SFT": model(1, 1.1), "llada SFT+DPO": model(1, 1.1)}
    dpo = {"val/rewards/accuracies": 0.9}
    assert len(learning_checks(models, dpo)) == 4
    learned = {**models, "bd3lm untrained": model(0.01, 1000.0), "bd3lm SFT": model(0.95, 50.0)}
    checks = {c["check"]: c for c in learning_checks(learned, dpo)[4:]}
    accuracy, gain, ratio = (
        checks["held-out task accuracy after tiny-bd3lm SFT"],
        checks["task accuracy gained by tiny-bd3lm SFT"],
        checks["perplexity bound after tiny-bd3lm SFT / untrained"],
    )
    assert accuracy["value"] == pytest.approx(0.95) and accuracy["passed"]
    assert gain["value"] == pytest.approx(0.94) and gain["passed"]
    assert ratio["value"] == pytest.approx(0.05) and ratio["passed"]
    unlearned = {**learned, "bd3lm SFT": model(0.3, 150.0)}
    assert not any(c["passed"] for c in learning_checks(unlearned, dpo)[4:])
    half = {**learned, "bd3lm SFT": model(0.45, 50.0)}  # gained enough, but under the floor
    assert [c["passed"] for c in learning_checks(half, dpo)[4:]] == [False, True, True]


@pytest.mark.slow
def test_small_demo_learns_through_the_plugins(small_demo):
    """The small demo with its block-diffusion model, as `python -m demo --size small --block-diffusion` runs it (one
    run covers both: the flag adds a stage)."""
    out, root = small_demo.printed, small_demo.workspace.root
    # the report's files, where the demo says they are
    paths = dict(re.findall(r"^(results|chart|html): (.+)$", out, flags=re.M))
    assert {kind: Path(path) for kind, path in paths.items()} == {
        "results": root / "demo" / "results.json",
        "chart": root / "demo" / "metrics.png",
        "html": root / "demo" / "report.html",
    }, out
    document = json.loads((root / "demo" / "results.json").read_text())
    models = {m["label"]: {x["name"]: x for x in m["metrics"]} for m in document["models"]}
    assert list(models) == [
        "llada untrained", "llada SFT", "llada SFT+DPO", "ar untrained", "ar SFT", "bd3lm untrained", "bd3lm SFT"
    ]  # fmt: skip

    def accuracy(label: str) -> float:
        return models[label]["task_accuracy"]["value"]

    # the thresholds, on held-out test problems and held-out preference pairs
    assert accuracy("llada SFT") >= MIN_SFT_ACCURACY, out
    assert accuracy("llada SFT") - accuracy("llada untrained") >= MIN_SFT_GAIN, out
    assert document["dpo_metrics"]["val/rewards/accuracies"] >= MIN_DPO_REWARD_ACCURACY, out
    assert accuracy("llada SFT") - accuracy("llada SFT+DPO") <= MAX_DPO_ACCURACY_DROP + 1e-9, out
    assert all(check["passed"] for check in document["checks"]), out
    # the causal baseline and the block-diffusion model learn too, and every answer was scored on the whole test split
    assert accuracy("ar SFT") >= MIN_SFT_ACCURACY, out
    assert accuracy("bd3lm SFT") >= MIN_SFT_ACCURACY, out
    assert len([c for c in document["checks"] if "tiny-bd3lm" in c["check"]]) == 3
    assert {m["task_accuracy"]["details"]["prompts"] for m in models.values()} == {200}
    # the diffusion models report a perplexity bound of the answers given their prompts, the causal ones the exact
    # value, and SFT lowers it for both
    perplexity = {label: metrics["conditional_perplexity"] for label, metrics in models.items()}
    bounds = ("llada untrained", "llada SFT", "bd3lm untrained", "bd3lm SFT")
    assert {perplexity[label]["kind"] for label in bounds} == {"upper_bound"}
    assert {perplexity[label]["kind"] for label in ("ar untrained", "ar SFT")} == {"exact"}
    assert perplexity["llada SFT"]["value"] < perplexity["llada untrained"]["value"] / 10, out
    assert perplexity["ar SFT"]["value"] < perplexity["ar untrained"]["value"] / 10, out
    assert perplexity["bd3lm SFT"]["value"] < perplexity["bd3lm untrained"]["value"] / 10, out
    assert models["llada SFT"]["tokens_per_sec"]["value"] > 0 and models["ar SFT"]["tokens_per_sec"]["value"] > 0
    # every stage ran as a job the workbench would show, and the report says where it is
    for stage in document["demo"]["stages"]:
        record = json.loads((root / "jobs" / stage["job_id"] / "index.json").read_text())
        assert record["job_data"]["completion_status"] == "success", stage
    assert (root / "demo" / "metrics.png").read_bytes().startswith(b"\x89PNG")
    assert "llada SFT+DPO" in (root / "demo" / "report.html").read_text()
    assert small_demo.returncode == 0, out  # python -m demo exits 0 only when every learning check passes


def test_rl_checks_hold_grpo_to_a_gain_over_its_start():
    def model(accuracy: float) -> dict:
        return {"metrics": [{"name": "task_accuracy", "value": accuracy}]}

    models = {"llada untrained": model(0), "llada SFT": model(1), "llada SFT+DPO": model(1)}
    dpo = {"val/rewards/accuracies": 0.9}
    learned = {**models, "llada short SFT": model(0.49), "llada short SFT+GRPO": model(0.71)}
    (check,) = learning_checks(learned, dpo)[4:]
    assert check["check"] == "task accuracy gained by GRPO"
    assert check["value"] == pytest.approx(0.22) and check["passed"]
    flat = {**learned, "llada short SFT+GRPO": model(0.55)}
    assert not learning_checks(flat, dpo)[4]["passed"]


def test_rl_recipe_and_dataset(tmp_path):
    """The RL stage's jobs: the main SFT's settings with fewer steps, then GRPO on prompt/answer rows (the default
    reward, no reward setting); its dataset is the training split in that shape."""
    size = SIZES["small"]
    jobs = recipe(size, rl_stage=True)
    short = jobs["short_sft"]
    assert short["train_steps"] == size.rl_sft_steps < jobs["sft"]["train_steps"]
    assert {k: v for k, v in short.items() if k not in ("train_steps", "save_steps", "eval_strategy")} == {
        **{k: v for k, v in jobs["sft"].items() if k not in ("train_steps", "save_steps", "eval_strategy")},
        "template_name": "demo-sft-short",
        "adaptor_name": rl.SHORT_SFT_NAME,
    }
    assert jobs["grpo"]["train_steps"] == size.grpo_steps and "reward_funcs" not in jobs["grpo"]
    assert "grpo" not in recipe(size)
    workspace = Workspace(tmp_path)
    task = write_datasets(workspace, size, 0, rl_stage=True)
    rows = [
        json.loads(line) for line in (workspace.dataset_dir(rl.RL_DATASET) / "train.jsonl").read_text().splitlines()
    ]
    train = build_task(size.train, size.validation, size.test, seed=task["seed"]).rows["train"]
    assert rows == [{"prompt": r["instruction"], "answer": r["output"]} for r in train]


@pytest.mark.slow
def test_small_demo_rl_stage_raises_accuracy(small_demo_rl):
    """The RL stage as `--rl` runs it: GRPO from the short SFT raises held-out task accuracy by the check's margin."""
    if small_demo_rl.error is not None:
        raise small_demo_rl.error
    stages = small_demo_rl.stages
    models = evaluated_models(stages[-1], list(rl.LABELS))
    accuracy = {label: models[label]["metrics"] for label in rl.LABELS}
    values = {
        label: next(m["value"] for m in metrics if m["name"] == "task_accuracy") for label, metrics in accuracy.items()
    }
    (check,) = rl.rl_checks(
        models, lambda model: next(m["value"] for m in model["metrics"] if m["name"] == "task_accuracy")
    )
    assert check[1] == pytest.approx(values["llada short SFT+GRPO"] - values["llada short SFT"])
    assert check[3](round(check[1], 9)), (values, small_demo_rl.printed)
    grpo_log = small_demo_rl.workspace.job_dir(stages[1].job_id) / f"output_{stages[1].job_id}.txt"
    assert "estimator coupled, rewards answer_match" in grpo_log.read_text()
