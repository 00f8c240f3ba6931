"""The diffusion_evaluator plugin: column inference, model and adapter loading, an end-to-end job through the
local runner (host formats, results.json, chart, HTML), and bad input ending the job as failed with its reason."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from plugin_sdk.backends.local import JobRecord
from plugin_sdk.errors import DatasetError
from plugin_sdk.eval_data import check_columns, eval_examples, infer_eval_columns
from plugin_sdk.workspace import Workspace

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "diffusion_evaluator"
ROWS = [
    {"prompt": "What is 1 plus 2?", "answer": "3"},
    {"prompt": "What is 3 plus 4?", "answer": "7"},
    {"prompt": "Where does Lily live?", "answer": "in a small house"},
]
NEEDS = {"perplexity": ("text",), "generation": ("prompt",), "task_accuracy": ("prompt", "reference")}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; several threads on a shared 2-core machine spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def examples_of(rows, needs=NEEDS, **columns):
    found = infer_eval_columns(list(rows[0]), first_row=rows[0], **columns)
    check_columns(found, list(rows[0]), needs)
    return found, eval_examples(rows, found, needs)


# ---------------------------------------------------------------------------------------------------------------
# Column inference


def test_prompt_answer_columns_give_prompt_reference_and_a_text_of_both():
    columns, examples = examples_of(ROWS)
    assert (columns.text, columns.prompt, columns.reference, columns.conversation) == (None, "prompt", "answer", None)
    assert examples[0] == {
        "text": "What is 1 plus 2?\n3",
        "prompt": [{"role": "user", "content": "What is 1 plus 2?"}],
        "reference": "3",
    }


def test_chat_messages_split_at_the_final_assistant_turn():
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        }
    ]
    columns, examples = examples_of(rows)
    assert columns.conversation == "chat" and columns.prompt == "messages"
    assert examples[0]["prompt"] == rows[0]["messages"][:-1] and examples[0]["reference"] == "4"
    assert examples[0]["text"] == "Be brief.\nHi\nHello\n2+2?\n4"
    # CSV files hold the messages as a JSON string; ShareGPT turns are read too
    sharegpt = [{"conversations": json.dumps([{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}])}]
    assert examples_of(sharegpt)[1][0]["prompt"] == [{"role": "user", "content": "Q"}]


def test_trainer_formats_and_common_eval_columns():
    alpaca = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}]
    _, examples = examples_of(alpaca)
    assert examples[0]["prompt"] == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}]
    assert examples[0]["reference"] == "5"
    gsm8k = [{"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = 5\n#### 5"}]
    columns, examples = examples_of(gsm8k)
    assert (columns.prompt, columns.reference) == ("question", "answer")
    assert examples[0]["reference"] == "3 + 2 = 5\n#### 5"
    completion = [{"prompt": "Say hi", "completion": "hi"}]
    assert examples_of(completion)[1][0]["reference"] == "hi"


def test_text_column_and_named_columns_win():
    rows = [{"text": "A whole document.", "q": "Question?", "gold": 42, "answer": "not this one"}]
    columns, examples = examples_of(rows, prompt_column="q", reference_column="gold")
    assert (columns.text, columns.prompt, columns.reference) == ("text", "q", "gold")
    assert examples[0] == {
        "text": "A whole document.",
        "prompt": [{"role": "user", "content": "Question?"}],
        "reference": "42",
    }
    listed = [{"chat": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
    assert examples_of(listed, prompt_column="chat")[1][0]["reference"] == "Yo"


def test_missing_columns_are_named_with_the_columns_available():
    with pytest.raises(DatasetError, match=r"reference_column='gold' is not a column .* prompt, answer"):
        infer_eval_columns(["prompt", "answer"], reference_column="gold")
    only_prompts = [{"prompt": "Hi"}]
    with pytest.raises(DatasetError, match=r"metric 'task_accuracy' needs reference .* columns are: prompt"):
        examples_of(only_prompts, needs={"task_accuracy": ("prompt", "reference")})
    with pytest.raises(DatasetError, match=r"metric 'perplexity' needs text"):
        examples_of(only_prompts, needs={"perplexity": ("text",)})
    with pytest.raises(DatasetError, match=r"metric 'generation' needs prompt"):
        examples_of([{"text": "t"}], needs={"generation": ("prompt",)})
    gaps = [*ROWS, {"prompt": "Q", "answer": ""}]
    with pytest.raises(DatasetError, match=r"row 3: its reference .* is empty, but metric 'task_accuracy'"):
        examples_of(gaps, needs={"task_accuracy": ("prompt", "reference")})
    with pytest.raises(DatasetError, match=r"row 0: column 'prompt' must hold text, got dict"):
        examples_of([{"prompt": {"a": 1}, "answer": "x"}])


def test_manifest_is_valid_for_the_host():
    from plugin_sdk.manifest import load_manifest, validate_plugin

    assert validate_plugin(PLUGIN) == []
    manifest = load_manifest(PLUGIN)
    assert manifest["type"] == "evaluator" and manifest["evalsType"] == "model" and manifest["_dataset"] is True
    assert {"LLaDAModelLM", "DreamModel", "ModernBertForMaskedLM", "LlamaForCausalLM"} <= set(
        manifest["model_architectures"]
    )
    from dlm.evaluation.settings import METRIC_GROUPS

    assert manifest["parameters"]["metrics"]["items"]["enum"] == list(METRIC_GROUPS)


def test_load_eval_examples_takes_the_first_rows_and_describes_them(tmp_path):
    from plugin_sdk.eval_data import load_eval_examples

    data = write_rows(tmp_path / "data.jsonl", ROWS)
    examples, described = load_eval_examples(str(data), NEEDS, workspace=tmp_path, num_samples=2)
    assert examples == examples_of(ROWS)[1][:2]
    assert described == {
        "source": str(data),
        "split": "test",
        "num_examples": 2,
        "columns": "text=prompt and reference, prompt=prompt, reference=answer",
    }
    assert len(load_eval_examples(str(data), NEEDS, workspace=tmp_path)[0]) == len(ROWS)  # 0: every row


def test_an_empty_split_is_named(tmp_path, monkeypatch):
    import datasets

    import plugin_sdk.eval_data as eval_data

    folder = tmp_path / "splits"
    folder.mkdir()
    write_rows(folder / "train.jsonl", ROWS)
    (folder / "test.jsonl").write_text("")
    with pytest.raises(DatasetError, match=r"test.jsonl has no rows"):
        eval_data.load_eval_examples(str(folder), NEEDS, workspace=tmp_path, split="test")
    assert len(eval_data.load_eval_examples(str(folder), NEEDS, workspace=tmp_path, split="train")[0]) == len(ROWS)
    # a hub dataset's split is not read from a file here: an empty one is caught before its first row is read
    empty = datasets.Dataset.from_dict({"prompt": [], "answer": []})
    monkeypatch.setattr(eval_data, "load_rows", lambda *args, **kwargs: empty)
    with pytest.raises(DatasetError, match=r"the 'test' split of org/data is empty: there is nothing to evaluate"):
        eval_data.load_eval_examples("org/data", NEEDS, workspace=tmp_path)


def test_model_labels_are_unique():
    from dlm.eval_models import ModelSpec, model_specs

    adapter = Path("/ws/adaptors/tiny-llada/sft")
    specs = model_specs("/ws/models/tiny-llada", ["tiny-ar", "org/tiny-llada", "tiny-ar"], adapter=adapter)
    assert specs == [
        ModelSpec("tiny-llada+sft", "/ws/models/tiny-llada", adapter),
        ModelSpec("tiny-ar", "tiny-ar"),
        ModelSpec("tiny-llada", "org/tiny-llada"),
        ModelSpec("tiny-ar#2", "tiny-ar"),
    ]
    assert [s.label for s in model_specs("/ws/x", ["x"], label="main")] == ["main", "x"]


# ---------------------------------------------------------------------------------------------------------------
# Models and adapters


def save_adapter(workspace: Path, base: str, name: str, seed: int = 0) -> Path:
    """A LoRA adapter with non-zero B matrices (so it changes the model), saved where the host keeps adapters."""
    from dlm.loading import load_model_and_tokenizer
    from dlm.lora import apply_lora

    loaded = load_model_and_tokenizer(base, workspace=workspace, dtype="float32")
    model = apply_lora(loaded.model, loaded.family, r=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if "lora_B" in parameter_name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    folder = Workspace(workspace).adaptor_dir(base, name)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter(preset_workspace) -> Path:
    return save_adapter(preset_workspace, "tiny-llada", "eval_adapter")


def test_adapter_loads_on_its_base_and_changes_the_model(preset_workspace, adapter):
    from dlm.loading import load_model_and_tokenizer
    from dlm.lora import load_model_with_adapter

    ids = torch.arange(3, 19).reshape(2, 8)
    base = load_model_and_tokenizer("tiny-llada", workspace=preset_workspace, dtype="float32")
    expected = base.model(ids).logits
    with_adapter = load_model_with_adapter("tiny-llada", adapter, workspace=preset_workspace, dtype="float32")
    # the adapted forward equals base + scale * B A x on every adapted layer: rebuild it by merging by hand
    from peft import PeftModel

    manual = PeftModel.from_pretrained(base.model, str(adapter)).merge_and_unload()
    got = with_adapter.model(ids).logits
    assert torch.allclose(got, manual(ids).logits, atol=1e-5)
    assert (got - expected).abs().max() > 1e-2
    assert not with_adapter.model.training
    # an adapter folder given as the model loads its base model first
    from_folder = load_model_with_adapter(str(adapter), workspace=preset_workspace, dtype="float32")
    assert torch.allclose(from_folder.model(ids).logits, got, atol=1e-6)
    assert from_folder.family.name == "llada"


def test_unknown_family_and_mismatched_adapter_are_named(preset_workspace, tmp_path):
    from dlm.errors import ModelError
    from dlm.lora import load_model_with_adapter

    gpt2 = tmp_path / "gpt2-like"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ModelError, match=r"(?s)cannot tell which model family.*GPT2LMHeadModel.*llada: LLaDAModelLM"):
        load_model_with_adapter(str(gpt2), workspace=preset_workspace)
    causal_adapter = save_adapter(preset_workspace, "tiny-ar", "ar_adapter")
    with pytest.raises(ModelError, match=r"the LoRA adapter .*ar_adapter \(trained on .*tiny-ar\) does not fit"):
        load_model_with_adapter("tiny-dream", causal_adapter, workspace=preset_workspace, dtype="float32")
    # same layer shapes, some layer names in common: peft alone would only warn and run a half-adapted model
    converted_adapter = save_adapter(preset_workspace, "tiny-a2d", "a2d_adapter")
    with pytest.raises(ModelError, match=r"does not fit .*tiny-llada.*adapted weights of the model are not in the"):
        load_model_with_adapter("tiny-llada", converted_adapter, workspace=preset_workspace, dtype="float32")


def test_models_are_checked_from_their_configs_before_loading(preset_workspace, adapter, monkeypatch):
    import dlm.eval_models as eval_models
    from dlm.evaluation.settings import EvalSettings
    from dlm.generation import SamplerSettings
    from dlm.metrics.result import EvaluationError

    monkeypatch.setattr(eval_models, "load_model_with_adapter", lambda *a, **k: pytest.fail("a model was loaded"))
    load = _load(preset_workspace)
    blocks = EvalSettings(metrics=("speed",), sampler=SamplerSettings(steps=8, max_new_tokens=8, block_length=3))
    # an adapter folder given as the model is checked as its base model's family
    specs = [eval_models.ModelSpec("ar", "tiny-ar"), eval_models.ModelSpec("adapted", str(adapter))]
    with pytest.raises(EvaluationError, match=r"^adapted \(llada family\): sampler settings .*block_length=3"):
        eval_models.evaluate_models(specs, [], blocks, load=load)
    # without generation the sampler settings do not matter; Dream has no blocks at all
    eval_models.check_models(specs, EvalSettings(metrics=("perplexity",), sampler=blocks.sampler), load)
    eval_models.check_models([eval_models.ModelSpec("d", "tiny-dream")], blocks, load)


# ---------------------------------------------------------------------------------------------------------------
# End to end


def local_task(folder: Path, name: str) -> Path:
    """A copy of a fixture lm-eval task whose data file is named by its absolute path (lm-eval reads data_files
    relative to the working directory)."""
    fixtures = Path(__file__).parents[1] / "fixtures" / "lm_eval_tasks"
    data = folder / f"{name}.jsonl"
    data.write_bytes((fixtures / f"{name}.jsonl").read_bytes())
    task = folder / f"{name}.yaml"
    task.write_text((fixtures / f"{name}.yaml").read_text().replace(f"test: {name}.jsonl", f"test: {data}"))
    return task


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


FAST = {
    "mc_num": "2",
    "steps": "4",
    "max_new_tokens": "4",
    "block_length": "4",
    "batch_size": "4",
    "dtype": "float32",
    "seed": "3",
}


@pytest.mark.slow
def test_job_compares_models_with_an_adapter_in_the_host_formats(preset_workspace, adapter, tmp_path, monkeypatch):
    from plugin_sdk.runner import run_plugin

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    ws = Workspace(preset_workspace)
    values = {
        "model_name": "tiny-llada",
        "model_adapter": adapter.name,  # the host passes the adapter's name; it lives under adaptors/<model>/
        "compare_with": ["tiny-ar", "tiny-llada"],
        "dataset": str(write_rows(tmp_path / "data.jsonl", ROWS)),
        "metrics": ["perplexity", "generation", "task_accuracy", "speed"],
        "tasks": [str(local_task(tmp_path, "tiny_mc"))],
        "limit": "2",
        **FAST,
    }
    code, job_id = run_plugin(PLUGIN, values, workspace=ws, experiment="eval", show_progress=False)
    log = (ws.job_dir(job_id) / f"output_{job_id}.txt").read_text()
    record = JobRecord(ws, job_id).read()
    assert code == 0, log
    assert record["status"] == "COMPLETE" and record["job_data"]["completion_status"] == "success", log
    out = ws.eval_output_dir("eval", "diffusion_evaluator", job_id)

    document = json.loads((out / "results.json").read_text())
    labels = [m["label"] for m in document["models"]]
    assert labels == ["tiny-llada+eval_adapter", "tiny-ar", "tiny-llada"]
    assert [m["family"] for m in document["models"]] == ["llada", "ar", "llada"]
    assert document["models"][0]["adapter"] == str(adapter) and document["models"][2]["adapter"] is None
    assert document["settings"]["mc_num"] == 2 and document["settings"]["compare_with"] == ["tiny-ar", "tiny-llada"]
    assert document["settings"]["max_new_tokens"] == 4 and document["dataset"]["num_examples"] == 3
    metrics = [{m["name"]: m for m in model["metrics"]} for model in document["models"]]
    assert {"perplexity", "generation_perplexity", "unigram_entropy", "task_accuracy", "tokens_per_sec"} <= set(
        metrics[0]
    )
    assert metrics[0]["perplexity"]["kind"] == "upper_bound" and metrics[1]["perplexity"]["kind"] == "exact"
    assert metrics[0]["perplexity"]["details"]["mc_num"] == 2
    assert metrics[0]["task_accuracy"]["details"]["sampler"]["steps"] == 4
    assert all(len(model["samples"]) == len(ROWS) for model in document["models"])
    # lm-eval ran on every model: its accuracy is a metric, its per-document records are beside results.json
    lm_samples = json.loads((out / "lm_eval_samples.json").read_text())
    assert list(lm_samples) == labels
    for label, by_name in zip(labels, metrics, strict=True):
        accuracy = by_name["dlm_tiny_mc/acc"]
        assert accuracy["details"]["source"] == "lm-eval" and accuracy["details"]["limit"] == 2
        assert accuracy["details"]["seed"] == 3 and accuracy["details"]["batch_size"] == 4
        if by_name["perplexity"]["kind"] == "upper_bound":  # diffusion: ELBO likelihoods, our sampler
            assert accuracy["details"]["mc_num"] == 2 and accuracy["details"]["sampler"]["steps"] == 4
        else:  # causal: lm-eval's HFLM, exact likelihoods and the task's own generation settings
            assert "mc_num" not in accuracy["details"] and "sampler" not in accuracy["details"]
        documents = lm_samples[label]["dlm_tiny_mc"]
        assert len(documents) == 2 and accuracy["value"] == pytest.approx(sum(d["acc"] for d in documents) / 2)

    # the plugin handed the right examples and settings over: the same numbers computed here, in process
    from dlm.eval_models import ModelSpec, evaluate_models
    from dlm.evaluation.settings import EvalExample, EvalSettings
    from dlm.generation import SamplerSettings

    _, examples = examples_of(ROWS)
    settings = EvalSettings(
        metrics=("perplexity",), mc_num=2, batch_size=4, seed=3, max_length=1024, sampler=SamplerSettings()
    )
    specs = [ModelSpec("a", "tiny-llada", adapter), ModelSpec("b", "tiny-llada")]
    again = evaluate_models(specs, [EvalExample(**e) for e in examples], settings, load=_load(preset_workspace))
    assert again[0].metrics[0].value == pytest.approx(metrics[0]["perplexity"]["value"], rel=1e-6)
    assert again[1].metrics[0].value == pytest.approx(metrics[2]["perplexity"]["value"], rel=1e-6)
    assert abs(metrics[0]["perplexity"]["value"] - metrics[2]["perplexity"]["value"]) > 1  # the adapter applied

    # host formats: CSV with per-sample rows, plot data, the job score of the main model (headline first)
    import pandas as pd

    csv = pd.read_csv(record["job_data"]["additional_output_path"], keep_default_na=False)
    assert list(csv.columns[:3]) == ["test_case_id", "metric_name", "score"]
    for label, by_name in zip(labels, metrics, strict=True):
        correct = csv[(csv.model == label) & (csv.metric_name == "answer_correct")]
        assert len(correct) == len(ROWS) and list(correct.expected_output) == [r["answer"] for r in ROWS]
        assert correct.score.mean() == pytest.approx(by_name["task_accuracy"]["value"])
        assert set(correct.input) == {r["prompt"] for r in ROWS}
    # plot data as the host writes it: every CSV row's test case, display-style metric name and score
    plot = json.loads(Path(record["job_data"]["plot_data_path"]).read_text())
    assert all(set(point) == {"test_case_id", "metric_name", "score"} for point in plot) and len(plot) == len(csv)
    assert {"Task Accuracy", "Answer Correct", "Perplexity"} <= {point["metric_name"] for point in plot}
    headline = next(p for p in plot if p["test_case_id"] == labels[0] and p["metric_name"] == "Task Accuracy")
    assert headline["score"] == pytest.approx(metrics[0]["task_accuracy"]["value"])
    score = json.loads(record["job_data"]["score"])
    assert score[0] == {"type": "task_accuracy", "score": metrics[0]["task_accuracy"]["value"]}
    assert {s["type"] for s in score} == {n for n, m in metrics[0].items() if m["value"] is not None}

    assert (out / "metrics.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = (out / "report.html").read_text()
    assert all(f"<th>{label}</th>" in page for label in labels) and "data:image/png;base64," in page
    header = next(line for line in log.splitlines() if line.startswith("metric "))
    assert header.split() == ["metric", *labels]
    assert f"results: {out / 'results.json'}" in log


def _load(workspace):
    from dlm.eval_models import LoadOptions

    return LoadOptions(dtype="float32", workspace=str(workspace))


# ---------------------------------------------------------------------------------------------------------------
# Bad input: the job ends failed with the reason


def run_in_process(workspace: Path, job_id: str, **values) -> dict:
    """Run the plugin's job in this process (as the harness would, without a new interpreter); the job record."""
    from plugin_sdk.job import run_job

    spec = importlib.util.spec_from_file_location("diffusion_evaluator_main", PLUGIN / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--workspace", str(workspace), "--job_id", job_id, "--experiment_name", "bad"]
    for key, value in {**FAST, **values}.items():
        argv += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    with pytest.raises(SystemExit) as ended:
        run_job(module.__file__, module.run, argv=argv)
    record = JobRecord(Workspace(workspace), job_id).read()
    assert ended.value.code == 1 and record["status"] == "FAILED", record
    assert record["job_data"]["completion_status"] == "failed"
    assert not list(Workspace(workspace).eval_output_dir("bad", "diffusion_evaluator", job_id).glob("results.json"))
    return record["job_data"]


@pytest.mark.parametrize(
    ("case", "values", "message"),
    [
        ("mc_num", {"mc_num": "0", "model_name": "tiny-llada"}, r"mc_num \(Monte-Carlo samples\): must be at least 1"),
        ("empty", {"model_name": "tiny-llada", "dataset": "EMPTY"}, r"empty.jsonl has no rows"),
        (
            "no_reference",
            {"model_name": "tiny-llada", "dataset": "PROMPTS", "metrics": ["task_accuracy"]},
            r"metric 'task_accuracy' needs reference for every example, but the dataset has none.*columns are: prompt",
        ),
        (
            "no_answer",
            {"model_name": "tiny-llada", "dataset": "PROMPTS", "metrics": ["conditional_perplexity"]},
            r"metric 'conditional_perplexity' needs reference for every example, but the dataset has none: add an "
            r"answer-like column .*columns are: prompt",
        ),
        (
            "unknown_family",
            {"model_name": "GPT2", "dataset": "DATA"},
            r"(?s)cannot tell which model family.*Supported families and architectures:.*dream: DreamModel",
        ),
        (
            "no_adapter",
            {"model_name": "tiny-llada", "model_adapter": "missing", "dataset": "DATA"},
            r"model_adapter='missing' is neither an adapter folder nor an adapter of tiny-llada .*adapters there: ",
        ),
        (  # unknown task names and tasks that need the network: tests/dlm/test_lm_eval_adapter.py (same early check)
            "missing_task",
            {"model_name": "tiny-llada", "metrics": "[]", "tasks": ["./no/such_task.yaml"]},
            r"task file or folder ./no/such_task.yaml does not exist",
        ),
        ("nothing", {"model_name": "tiny-llada", "metrics": "[]"}, r"nothing to evaluate"),
    ],
)
def test_bad_input_fails_the_job_with_its_reason(preset_workspace, tmp_path, case, values, message):
    import re

    files = {
        "EMPTY": tmp_path / "empty.jsonl",
        "PROMPTS": write_rows(tmp_path / "prompts.jsonl", [{"prompt": "Hi"}, {"prompt": "Yo"}]),
        "DATA": write_rows(tmp_path / "data.jsonl", ROWS),
        "GPT2": tmp_path / "gpt2-like",
    }
    files["EMPTY"].write_text("\n")
    files["GPT2"].mkdir()
    (files["GPT2"] / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    values = {k: str(files[v]) if isinstance(v, str) and v in files else v for k, v in values.items()}
    values.setdefault("dataset", str(files["DATA"]))
    data = run_in_process(preset_workspace, f"bad_{case}", **values)
    assert re.search(message, data["completion_details"]), data["completion_details"]
    assert "Traceback" not in data["completion_details"]


@pytest.mark.parametrize(
    ("case", "compare", "values", "message"),
    [
        (
            "compare_unknown",
            "GPT2",
            {},
            r"(?s)cannot tell which model family .*gpt2-like.*Supported families and architectures:.*llada",
        ),
        (
            "compare_blocks",
            "tiny-llada",
            {"steps": "8", "max_new_tokens": "8", "block_length": "3"},
            r"tiny-llada \(llada family\): sampler settings .*block_length=3 must divide gen_length=8; block "
            r"lengths that work: 1, 2, 4, 8",
        ),
        (
            "compare_steps",
            "tiny-llada",
            {"steps": "6", "max_new_tokens": "8", "block_length": "2"},
            r"steps=6 must be a positive multiple of the number of blocks.*use steps=4 or steps=8",
        ),
    ],
)
def test_a_bad_compared_model_fails_the_job_before_any_model_runs(
    preset_workspace, tmp_path, capsys, case, compare, values, message
):
    """The main model (a causal LM: no block sampler) is fine; the compared one is checked before it is evaluated."""
    import re

    if compare == "GPT2":
        compare = str(tmp_path / "gpt2-like")
        Path(compare).mkdir()
        (Path(compare) / "config.json").write_text(
            json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
        )
    job_id = f"bad_{case}"
    data = run_in_process(
        preset_workspace,
        job_id,
        model_name="tiny-ar",
        compare_with=[compare],
        dataset=str(write_rows(tmp_path / "data.jsonl", ROWS)),
        metrics=["perplexity", "generation"],
        **values,
    )
    assert re.search(message, data["completion_details"]), data["completion_details"]
    log = capsys.readouterr().out
    assert "3 examples from" in log and "tiny-ar: ar model from" not in log, log  # no model was loaded
