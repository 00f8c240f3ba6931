"""The evaluator's settings and the trainers' data settings reach their effects: values as the host sends them
(strings, `--key value`), through the plugin's own `run_job` entry and `from_params`, to what the evaluation is
handed (the sampler built from its settings, the examples kept, the texts' tokens) and what training is handed
(the conversations, the encoded rows). The step after is replaced by a recorder that ends the job, so no model runs:
a test of `build_sampler` or `encode_conversations` alone cannot see a plugin that forgets to pass a setting on."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dlm.eval_models
import dlm.trainers.dpo_trainer as dpo_trainer
import dlm.trainers.sft_trainer as sft_trainer
from dlm.data import IGNORE
from dlm.families import get_family
from dlm.generation import build_sampler
from dlm.metrics.likelihood import scoring_inputs
from dlm.metrics.text import is_correct
from dlm.presets.resolve import resolve_model_path
from dlm.presets.tiny import ensure_preset
from plugin_sdk.job import run_job
from plugin_sdk.params import Params, coerce_and_validate
from tests.plugins.test_bad_inputs import PLUGINS, plugin_work

EVAL, SFT, DPO = "diffusion_evaluator", "diffusion_llm_trainer", "diffusion_dpo_trainer"


class Recorded(Exception):
    """Ends the job once what the next step was handed is recorded."""


@pytest.fixture(scope="module")
def workspace(preset_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace of its own (no other test's adapters or records) whose tiny-llada is the shared preset."""
    root = tmp_path_factory.mktemp("paths_ws")
    (root / "models").mkdir()
    (root / "models" / "tiny-llada").symlink_to(ensure_preset("tiny-llada", preset_workspace), target_is_directory=True)
    return root


def form_params(plugin: str, edits: dict[str, str]) -> Params:
    """The parameters a job of `plugin` gets from a form submission of `edits` (strings) over the defaults."""
    manifest = json.loads((PLUGINS / plugin / "index.json").read_text())
    return coerce_and_validate(dict(edits), manifest["parameters"], aliases=manifest.get("parameter_aliases"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run_recorded(plugin: str, workspace: Path, values: dict[str, str], spies: dict[tuple[Any, str], Callable]) -> None:
    """Run a job of `plugin` with `values` (strings, as the host passes them) and `spies` in place; a spy raises
    `Recorded` to end the job, which must then have failed for that reason alone."""
    argv = ["--workspace", str(workspace)]
    for key, value in values.items():
        argv += [f"--{key}", value]
    before = set((workspace / "jobs").glob("*/index.json"))
    with pytest.MonkeyPatch.context() as patch:
        for (module, name), spy in spies.items():
            patch.setattr(module, name, spy)
        with pytest.raises(SystemExit) as ended:
            run_job(PLUGINS / plugin / "main.py", plugin_work(plugin), argv)
    [record] = set((workspace / "jobs").glob("*/index.json")) - before
    details = json.loads(record.read_text())["job_data"].get("completion_details", "")
    assert ended.value.code == 1 and Recorded.__name__ in details, details  # ended by the recorder, nothing else


# ---- the evaluator --------------------------------------------------------------------------------------------
# columns the inference would not choose by itself: the edits must name them
EVAL_ROWS = [
    {"prompt": f"p{i}", "answer": f"a{i}", "q": f"What is {i} plus {i}?", "gold": str(2 * i), "body": "ab " * (20 + i)}
    for i in range(6)
]
EVAL_EDITS = {
    "steps": "24",
    "max_new_tokens": "48",
    "block_length": "16",
    "temperature": "0.7",
    "remasking": "random",
    "cfg_scale": "1.5",
    "suppress_eos_confidence": "true",
    "cache": "prefix",
    "parallel_threshold": "0.9",
    "grow_canvas": "16",
    "suffix_window": "8",
    "refresh_similarity": "0.35",
    "alg": "maskgit_plus",
    "alg_temp": "0.3",
    "top_p": "0.9",
    "top_k": "5",
    "metrics": "perplexity,task_accuracy",
    "num_samples": "4",
    "limit": "3",
    "num_fewshot": "2",
    "mc_num": "3",
    "mask_ratios": "0.25, 0.75",
    "batch_size": "5",
    "seed": "11",
    "max_length": "12",
    "apply_chat_template": "false",
    "answer_extraction": "regex",
    "answer_regex": r"answer: (\d+)",
    "dtype": "float32",
    "trust_remote_code": "true",
    "compare_with": "tiny-ar, tiny-llada",
    "dataset_split": "validation",
    "text_column": "body",
    "prompt_column": "q",
    "reference_column": "gold",
}


@dataclass
class EvalCall:
    """What the plugin handed `evaluate_models`."""

    specs: list[Any]
    examples: list[Any]
    settings: Any
    lm_eval: Any
    load: Any


def evaluator_call(workspace: Path, edits: dict[str, str]) -> EvalCall:
    data = workspace / "eval_data"
    write_jsonl(data / "test.jsonl", [{"prompt": "t", "answer": "t", "q": "t", "gold": "0", "body": "t"}] * 2)
    write_jsonl(data / "validation.jsonl", EVAL_ROWS)
    calls: list[EvalCall] = []

    def record(specs, examples, settings, *, lm_eval, load, log, progress):
        calls.append(EvalCall(list(specs), list(examples), settings, lm_eval, load))
        raise Recorded

    values = {"model_name": "tiny-llada", "dataset": str(data), **edits}
    run_recorded(EVAL, workspace, values, {(dlm.eval_models, "evaluate_models"): record})
    [call] = calls
    return call


@pytest.fixture(scope="module")
def eval_call(workspace: Path) -> EvalCall:
    return evaluator_call(workspace, EVAL_EDITS)


def llada_sampler(call: EvalCall) -> Any:
    return build_sampler(get_family("llada"), call.settings.sampler)


def dream_sampler(call: EvalCall) -> Any:
    return build_sampler(get_family("dream"), call.settings.sampler)


def eval_settings(call: EvalCall) -> Any:
    return call.settings


def lm_eval_options(call: EvalCall) -> Any:
    return call.lm_eval


def load_options(call: EvalCall) -> Any:
    return call.load


def attribute(part: Callable[[EvalCall], Any], name: str) -> Callable[[EvalCall], Any]:
    """The observable `part(call).name`, named so in the test ids."""

    def observable(call: EvalCall) -> Any:
        return getattr(part(call), name)

    observable.__name__ = f"{part.__name__}.{name}"
    return observable


def example_count(call: EvalCall) -> int:
    return len(call.examples)


def example_prompts(call: EvalCall) -> list[str]:
    return [example.prompt[-1]["content"] for example in call.examples]


def example_references(call: EvalCall) -> list[str]:
    return [example.reference for example in call.examples]


def example_texts(call: EvalCall) -> list[str]:
    return [example.text for example in call.examples]


def scored_lengths(call: EvalCall) -> list[int]:
    """The tokens each text is scored on, cut at the evaluation's max_length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(call.specs[0].model, call.load.workspace))
    inputs = scoring_inputs(tokenizer, tokenizer.bos_token_id, example_texts(call), call.settings.max_length)
    return [len(ids) for ids in inputs.ids]


def regex_scores(call: EvalCall) -> list[bool]:
    """Whether each answer counts as correct under the evaluation's answer extraction."""
    outputs = ["The answer: 7 (not 8)", "7", "answer: 8"]
    return [is_correct(o, "7", call.settings.answer_extraction, call.settings.answer_regex) for o in outputs]


def model_labels(call: EvalCall) -> list[str]:
    return [spec.label for spec in call.specs]


EVAL_CASES = [
    ("steps", attribute(llada_sampler, "steps"), 24),
    ("max_new_tokens", attribute(llada_sampler, "gen_length"), 48),
    ("max_new_tokens", attribute(dream_sampler, "max_new_tokens"), 48),
    ("block_length", attribute(llada_sampler, "block_length"), 16),
    ("block_length", attribute(dream_sampler, "block_length"), 16),  # Dream decodes in blocks with a cache
    ("temperature", attribute(llada_sampler, "temperature"), 0.7),
    ("temperature", attribute(dream_sampler, "temperature"), 0.7),
    ("remasking", attribute(llada_sampler, "remasking"), "random"),
    ("cfg_scale", attribute(llada_sampler, "cfg_scale"), 1.5),
    ("suppress_eos_confidence", attribute(llada_sampler, "suppress_eos_in_confidence"), True),
    ("cache", attribute(llada_sampler, "cache"), "prefix"),
    ("cache", attribute(dream_sampler, "cache"), "prefix"),
    ("parallel_threshold", attribute(llada_sampler, "parallel_threshold"), 0.9),
    ("parallel_threshold", attribute(dream_sampler, "parallel_threshold"), 0.9),
    ("grow_canvas", attribute(llada_sampler, "grow_canvas"), 16),
    ("suffix_window", attribute(llada_sampler, "suffix_window"), 8),
    ("suffix_window", attribute(dream_sampler, "suffix_window"), 8),
    ("refresh_similarity", attribute(llada_sampler, "refresh_similarity"), 0.35),
    ("alg", attribute(dream_sampler, "alg"), "maskgit_plus"),
    ("alg_temp", attribute(dream_sampler, "alg_temp"), 0.3),
    ("top_p", attribute(dream_sampler, "top_p"), 0.9),
    ("top_k", attribute(dream_sampler, "top_k"), 5),
    ("metrics", attribute(eval_settings, "metrics"), ("perplexity", "task_accuracy")),
    ("num_samples", example_count, 4),
    ("limit", attribute(lm_eval_options, "limit"), 3),
    ("num_fewshot", attribute(lm_eval_options, "num_fewshot"), 2),
    ("trust_remote_code", attribute(lm_eval_options, "trust_remote_code"), True),
    ("trust_remote_code", attribute(load_options, "trust_remote_code"), True),
    ("dtype", attribute(load_options, "dtype"), "float32"),
    ("mc_num", attribute(eval_settings, "mc_num"), 3),
    ("mask_ratios", attribute(eval_settings, "mask_ratios"), (0.25, 0.75)),
    ("batch_size", attribute(eval_settings, "batch_size"), 5),
    ("seed", attribute(eval_settings, "seed"), 11),
    ("apply_chat_template", attribute(eval_settings, "apply_chat_template"), False),
    ("max_length", scored_lengths, [12, 12, 12, 12]),  # each body is over 20 tokens: all cut to 12
    ("answer_extraction", regex_scores, [True, False, False]),  # group 1 of the regex, not the whole answer
    ("answer_regex", regex_scores, [True, False, False]),
    ("compare_with", model_labels, ["tiny-llada", "tiny-ar", "tiny-llada#2"]),
    ("dataset_split", example_references, ["0", "2", "4", "6"]),  # the validation file's rows, not the test file's
    ("prompt_column", example_prompts, [f"What is {i} plus {i}?" for i in range(4)]),
    ("reference_column", example_references, ["0", "2", "4", "6"]),
    ("text_column", example_texts, ["ab " * (20 + i) for i in range(4)]),
]


@pytest.mark.parametrize(
    ("parameter", "observable", "expected"), EVAL_CASES, ids=[f"{p}-{o.__name__}" for p, o, _ in EVAL_CASES]
)
def test_every_evaluator_parameter_reaches_its_effect(eval_call, parameter, observable, expected):
    assert parameter in EVAL_EDITS
    assert observable(eval_call) == expected


def test_every_evaluator_edit_differs_from_the_default_and_is_checked():
    """A case whose edited value is the default proves nothing about the value being passed on; an edit without a
    case is a parameter whose path is not checked."""
    defaults, edited = form_params(EVAL, {}), form_params(EVAL, EVAL_EDITS)
    assert [name for name in EVAL_EDITS if edited[name] == defaults[name]] == []
    assert set(EVAL_EDITS) == {parameter for parameter, _, _ in EVAL_CASES}


def test_the_evaluator_defaults_reach_the_sampler_as_off(workspace):
    """The form's "off" values (alg_temp 0, top_p 1, top_k 0, suffix_window -1) reach the sampler as None."""
    call = evaluator_call(workspace, {"metrics": "perplexity"})
    assert form_params(EVAL, {})["suffix_window"] == -1  # the default sent is the form's "off", not None
    sampler = dream_sampler(call)
    assert (sampler.alg_temp, sampler.top_p, sampler.top_k) == (None, None, None)
    assert sampler.suffix_window is None and llada_sampler(call).suffix_window is None
    assert len(call.examples) == 2  # the test split by default
    assert call.lm_eval.limit is None  # 1: all of each task's examples


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_the_default_cache_auto_is_the_dual_cache_with_threshold_0_99_where_a_family_has_it(workspace, family):
    """The form's default `cache` "auto" with its default threshold (0, off) and its growing canvas decodes LLaDA
    and Dream with the dual cache and a threshold of 0.99; a threshold set in the form is kept."""
    assert form_params(EVAL, {})["cache"] == "auto" and form_params(EVAL, {})["parallel_threshold"] == 0
    assert form_params(EVAL, {})["grow_canvas"] > 0
    sampler = build_sampler(get_family(family), evaluator_call(workspace, {"metrics": "perplexity"}).settings.sampler)
    assert (sampler.cache, sampler.parallel_threshold) == ("dual", 0.99)
    edited = evaluator_call(workspace, {"metrics": "perplexity", "parallel_threshold": "0.5"})
    assert build_sampler(get_family(family), edited.settings.sampler).parallel_threshold == 0.5


@pytest.mark.parametrize(("family", "decoded"), [("llada", "elastic"), ("dream", "dual")])
def test_cache_auto_over_the_whole_window_is_the_elastic_cache_where_a_family_has_it(workspace, family, decoded):
    """With the growing canvas off (grow_canvas 0 in the form), `cache` auto decodes LLaDA with the elastic cache
    and the form's refresh similarity, Dream (no elastic cache) with the dual cache; both at threshold 0.99."""
    call = evaluator_call(workspace, {"metrics": "perplexity", "grow_canvas": "0", "refresh_similarity": "0.6"})
    sampler = build_sampler(get_family(family), call.settings.sampler)
    assert (sampler.cache, sampler.parallel_threshold) == (decoded, 0.99)
    if family == "llada":
        assert sampler.refresh_similarity == 0.6


@pytest.mark.parametrize("family", ["ar", "bd3lm", "sdar", "llada2"])
def test_the_default_cache_auto_leaves_families_without_a_canvas_cache_as_they_decode(workspace, family):
    from dlm.generation import check_decoding_settings, in_blocks, resolve_auto

    settings = evaluator_call(workspace, {"metrics": "perplexity"}).settings.sampler
    resolved = resolve_auto(get_family(family), settings)
    assert settings.cache == "auto" and resolved.cache == "none" and resolved.parallel_threshold is None
    check_decoding_settings(get_family(family), settings)  # no SamplingError for a cache the family lacks
    assert in_blocks(get_family(family), settings) == in_blocks(get_family(family), resolved)


# ---- the SFT trainer's data settings ---------------------------------------------------------------------------
LONG = "word " * 40  # over max_length once in a conversation: kept cut (truncation=right) or dropped (filter)
SFT_ROWS = [
    {
        "dialog": [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": LONG if i % 3 == 0 else str(2 * i)},
        ],
        "question": f"What is {i} plus {i}?",
        "answer": str(2 * i),
    }
    for i in range(12)
]
SFT_DATA_EDITS = {
    "max_length": "64",
    "truncation": "filter",
    "mask_prompt_loss": "false",
    "max_samples": "10",
    "validation_fraction": "0.2",
    "system_message": "Be terse.",
}
# chat_column: a host key the plugin-era host sends (its dataset tab), not a form parameter; validation needs an
# eval_strategy
SFT_HOST = {"chat_column": "dialog", "eval_strategy": "steps"}


@dataclass
class TrainCall:
    """What the plugin handed `run_sft` (conversations), and what `run_sft` handed the Trainer (encoded rows)."""

    config: Any = None
    train: list[Any] | None = None
    validation: list[Any] | None = None
    encoded_train: list[dict[str, list[int]]] | None = None
    encoded_validation: list[dict[str, list[int]]] | None = None


def train_call(
    plugin: str, module: Any, run: str, workspace: Path, data: Path, values: dict[str, str], *, encode: bool = True
) -> TrainCall:
    """The job of a trainer plugin up to its Trainer: what `module.<run>` and its `_build_trainer` were handed."""
    call = TrainCall()
    real_run = getattr(module, run)

    def record_rows(config, train_rows, validation_rows, reporter):
        call.config, call.train, call.validation = config, list(train_rows), validation_rows
        if not encode:
            raise Recorded
        return real_run(config, train_rows, validation_rows, reporter)

    def record_encoded(config, loaded, model, train, validation, *rest):
        call.encoded_train, call.encoded_validation = list(train), validation
        raise Recorded

    base = {"model_name": "tiny-llada", "dataset": str(data), "train_device": "cpu", "dtype": "float32"}
    base |= {"num_train_epochs": "1", "adaptor_name": f"paths_{data.parent.name}"}
    spies = {(module, run): record_rows, (module, "_build_trainer"): record_encoded}
    run_recorded(plugin, workspace, {**base, **values}, spies)
    return call


def sft_call(workspace: Path, tmp_path: Path, values: dict[str, str], *, encode: bool = True) -> TrainCall:
    data = values.get("dataset") or str(write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS))
    return train_call(SFT, sft_trainer, "run_sft", workspace, Path(data), values, encode=encode)


@pytest.fixture(scope="module")
def sft_data_call(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainCall:
    return sft_call(workspace, tmp_path_factory.mktemp("sft_data"), {**SFT_DATA_EDITS, **SFT_HOST})


def conversations(call: TrainCall) -> list[Any]:
    return call.train + (call.validation or [])


def test_max_samples_and_validation_fraction_choose_the_rows(sft_data_call):
    assert len(conversations(sft_data_call)) == 10  # max_samples of the 12 rows
    assert len(sft_data_call.validation) == 2  # validation_fraction 0.2 of them


def test_system_message_opens_every_conversation(sft_data_call):
    assert {c[0]["role"] for c in conversations(sft_data_call)} == {"system"}
    assert {c[0]["content"] for c in conversations(sft_data_call)} == {"Be terse."}


def test_chat_column_names_the_conversations(sft_data_call):
    """The dialog column (not the question/answer columns, which inference would take) gives the messages."""
    questions = {row["dialog"][0]["content"]: row["dialog"] for row in SFT_ROWS}
    for conversation in conversations(sft_data_call):
        assert conversation[1:] == questions[conversation[1]["content"]]


def test_max_length_and_truncation_filter_drop_the_long_conversations(sft_data_call):
    call = sft_data_call
    short = [c for c in call.train if c[-1]["content"] != LONG]
    assert len(short) < len(call.train)  # the subset holds long conversations, else this case proves nothing
    assert len(call.encoded_train) == len(short)  # truncation=filter dropped the long ones
    assert max(len(row["input_ids"]) for row in call.encoded_train) <= 64
    assert call.config.max_length == 64


def test_mask_prompt_loss_off_trains_the_prompt_too(sft_data_call):
    assert all(row["labels"] == row["input_ids"] for row in sft_data_call.encoded_train)
    assert all(IGNORE not in row["labels"] for row in sft_data_call.encoded_train)


def test_the_default_truncation_clips_long_conversations_to_max_length(workspace, tmp_path):
    call = sft_call(
        workspace, tmp_path, {"max_length": "64", "max_samples": "6", "eval_strategy": "no", "chat_column": "dialog"}
    )
    assert len(call.encoded_train) == len(call.train)  # none dropped
    lengths = [len(row["input_ids"]) for row in call.encoded_train]
    assert max(lengths) == 64 and any(c[-1]["content"] == LONG for c in call.train)
    assert any(label == IGNORE for row in call.encoded_train for label in row["labels"])  # prompts masked


def test_the_instruction_templates_make_the_messages(workspace, tmp_path):
    templates = {
        "instruction_template": "Answer in digits.",
        "input_template": "Q: {{ question }}",
        "output_template": "A: {{ answer }}",
        "max_samples": "3",
        "eval_strategy": "no",
    }
    rows = [{"question": r["question"], "answer": r["answer"]} for r in SFT_ROWS]
    write_jsonl(tmp_path / "templated" / "train.jsonl", rows)
    values = {**templates, "dataset": str(tmp_path / "templated")}
    call = sft_call(workspace, tmp_path, values, encode=False)
    by_question = {f"Q: {r['question']}": f"A: {r['answer']}" for r in rows}
    for conversation in call.train:
        system, user, assistant = conversation
        assert system == {"role": "system", "content": "Answer in digits."}
        assert by_question[user["content"]] == assistant["content"]


def test_every_sft_data_edit_differs_from_the_default():
    defaults, edited = form_params(SFT, {}), form_params(SFT, SFT_DATA_EDITS)
    assert [name for name in SFT_DATA_EDITS if edited[name] == defaults[name]] == []


# ---- the DPO trainer's data settings ---------------------------------------------------------------------------
def preference_rows(count: int, tag: str) -> list[dict[str, str]]:
    """Prompt / chosen / rejected rows; every third prompt is long, every fourth chosen answer too."""
    return [
        {
            "prompt": (f"{tag} question {i}: " + "context " * (30 if i % 3 == 0 else 0)).strip(),
            "chosen": f"yes {i}" + " indeed" * (40 if i % 4 == 0 else 0),
            "rejected": f"no {i}",
        }
        for i in range(count)
    ]


DPO_DATA_EDITS = {
    "dataset_split": "test",
    "random_sample_size": "6",
    "validation_fraction": "0.5",
    "max_length": "48",
    "max_prompt_length": "24",
}


@pytest.fixture(scope="module")
def dpo_data_call(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainCall:
    data = tmp_path_factory.mktemp("dpo_data") / "pairs"
    write_jsonl(data / "train.jsonl", preference_rows(4, "train"))
    write_jsonl(data / "test.jsonl", preference_rows(10, "test"))
    values = {**DPO_DATA_EDITS, "batch_size": "2", "warmup_steps": "0"}
    return train_call(DPO, dpo_trainer, "run_dpo", workspace, data / "train.jsonl", {**values, "dataset": str(data)})


def test_dataset_split_random_sample_size_and_validation_fraction_choose_the_pairs(dpo_data_call):
    pairs = dpo_data_call.train + dpo_data_call.validation
    assert {pair.prompt[-1]["content"].split()[0] for pair in pairs} == {"test"}  # not the train file's
    assert len(pairs) == 6 and len(dpo_data_call.validation) == 3


def test_max_length_and_max_prompt_length_bound_the_encoded_pairs(dpo_data_call):
    rows = dpo_data_call.encoded_train + dpo_data_call.encoded_validation
    assert max(len(row["prompt_ids"]) for row in rows) == 24  # the long prompts, cut from the left
    assert max(len(row["prompt_ids"]) + len(row["chosen_ids"]) for row in rows) == 48  # the long answers, clipped
    assert max(len(row["prompt_ids"]) + len(row["rejected_ids"]) for row in rows) <= 48


def test_every_dpo_data_edit_differs_from_the_default():
    defaults, edited = form_params(DPO, {}), form_params(DPO, DPO_DATA_EDITS)
    assert [name for name in DPO_DATA_EDITS if edited[name] == defaults[name]] == []
