"""lm-eval on diffusion LMs: local tasks end to end on tiny-llada (likelihoods equal direct ELBOs, accuracy and exact
match recomputed from them and from direct sampling), rolling likelihoods, the one-step greedy check, seeds, sampler
length rounding, the causal (HFLM) route, and the errors for tasks that are not installed or need the network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from dlm.elbo import elbo, example_generators
from dlm.generation import SamplerSettings, decode_answers, encode_prompts, generate
from dlm.lm_eval import cli
from dlm.lm_eval.errors import LmEvalError
from dlm.lm_eval.model import DiffusionLM, available_device, request_key, settings_for_length
from dlm.lm_eval.run import run_lm_eval
from dlm.lm_eval.tasks import refuse_task_code, task_code
from dlm.loading import load_model_and_tokenizer
from dlm.presets.tiny import ensure_preset

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lm_eval_tasks"
SEED = 7
MC_NUM = 4
# the task asks for 8 tokens: 8 tokens in blocks of 4, with the 1 token per step of these settings -> 8 steps
SAMPLER = SamplerSettings(steps=4, max_new_tokens=4, block_length=4)
TASK_SAMPLER = SamplerSettings(steps=8, max_new_tokens=8, block_length=4)
STOPS = ("\n", ".")


@pytest.fixture(scope="module")
def llada(preset_workspace):
    return load_model_and_tokenizer(str(ensure_preset("tiny-llada", preset_workspace)))


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def _expected_answers(loaded, contexts: list[str]) -> list[str]:
    """What the sampler answers, straight from dlm.generation (one batch, in order, as the adapter batches them)."""
    ids, mask = encode_prompts(
        loaded.tokenizer, [[{"role": "user", "content": c}] for c in contexts], loaded.special_ids.pad,
        apply_chat_template=False,
    )  # fmt: skip
    out = generate(
        loaded.model, loaded.family, loaded.special_ids, ids, mask, TASK_SAMPLER, torch.Generator().manual_seed(SEED)
    )
    answers = []
    for text in decode_answers(loaded.tokenizer, loaded.special_ids, out.sequences, ids.shape[1]):
        for stop in STOPS:
            text = text.split(stop)[0]
        answers.append(text.strip())
    return answers


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, llada):
    """The fixture tasks copied with absolute data paths; the first generation document's answer is what the model
    answers, so exact match is neither 0 nor 1 by construction. Returns (folder, gen rows, expected answers)."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    gen = _rows("tiny_gen.jsonl")
    answers = _expected_answers(llada, [f"Question: what is {row['a']} + {row['b']}? Answer:" for row in gen])
    gen[0]["answer"] = answers[0]
    (folder / "tiny_gen.jsonl").write_text("".join(json.dumps(row) + "\n" for row in gen))
    shutil.copy(FIXTURES / "tiny_mc.jsonl", folder)
    for name in ("tiny_mc", "tiny_gen"):
        config = yaml.safe_load((FIXTURES / f"{name}.yaml").read_text())
        config["dataset_kwargs"]["data_files"]["test"] = str(folder / f"{name}.jsonl")
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return folder, gen, answers


@pytest.fixture(scope="module")
def outcome(llada, tasks):
    logs: list[str] = []
    out = run_lm_eval(
        llada,
        str(tasks[0]),  # a folder: every task defined in it
        batch_size=8,
        mc_num=MC_NUM,
        sampler=SAMPLER,
        seed=SEED,
        log=logs.append,
    )
    return out, logs


def _direct_elbo(loaded, context: str, continuation: str, seed: int = SEED) -> float:
    """dlm.elbo on one request, tokenized as lm-eval does for causal backends: the context's trailing whitespace
    moves to the continuation, the whole text is tokenized, then split after the context's tokens."""
    encode = lambda text: loaded.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped) :] + continuation
    whole, ctx = encode(context + continuation), encode(context)
    return _elbo_of(loaded, ctx, whole[len(ctx) :], seed)


def _elbo_of(loaded, ctx: list[int], cont: list[int], seed: int = SEED) -> float:
    ids = torch.tensor([ctx + cont])
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[0, len(ctx) :] = True
    with torch.no_grad():
        value, _ = elbo(
            loaded.model, ids, response, mask_id=loaded.special_ids.mask, shift=loaded.family.shift_logits, n=MC_NUM,
            generator=example_generators([request_key(ctx, cont)], seed),
        )  # fmt: skip
    return float(value[0])


def test_multiple_choice_likelihoods_are_the_elbo_and_accuracy_follows(llada, outcome):
    out, _ = outcome
    rows = _rows("tiny_mc.jsonl")
    samples = out["samples"]["dlm_tiny_mc"]
    assert out["results"]["n-samples"]["dlm_tiny_mc"]["effective"] == len(rows) == len(samples)
    correct = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        row = rows[sample["doc_id"]]
        contexts = {ctx for ctx, _ in sample["arguments"]}
        assert contexts == {f"Question: {row['question']}\nAnswer:"}
        assert [cont for _, cont in sample["arguments"]] == [" " + c for c in row["choices"]]
        got = [resp[0][0] for resp in sample["resps"]]
        direct = [_direct_elbo(llada, ctx, cont) for ctx, cont in sample["arguments"]]
        assert got == pytest.approx(direct, rel=1e-5, abs=1e-5)
        correct.append(max(range(len(direct)), key=direct.__getitem__) == row["label"])
    value, stderr = out["metrics"]["dlm_tiny_mc"]["acc"]
    assert value == pytest.approx(sum(correct) / len(correct))
    assert stderr is not None and stderr >= 0
    assert out["results"]["config"]["likelihood"].startswith("count-form ELBO")
    assert out["results"]["config"]["sampler"]["steps"] == SAMPLER.steps


def test_generation_uses_the_sampler_and_exact_match_follows(outcome, tasks):
    out, logs = outcome
    _, gen, answers = tasks
    samples = sorted(out["samples"]["dlm_tiny_gen"], key=lambda s: s["doc_id"])
    assert out["results"]["n-samples"]["dlm_tiny_gen"]["effective"] == len(gen) == len(samples)
    assert [s["resps"][0][0] for s in samples] == answers
    expected = sum(a == row["answer"] for a, row in zip(answers, gen, strict=True)) / len(gen)
    assert 0 < expected < 1
    assert out["metrics"]["dlm_tiny_gen"]["exact_match"][0] == pytest.approx(expected)
    assert any("asks up to 8 new tokens: generating 8" in line and "in 8 steps" in line for line in logs)
    assert out["generation"]["sequences"] == len(gen) and out["generation"]["forward_passes"] == TASK_SAMPLER.steps


def test_chat_template_few_shot_and_limit(llada, tasks):
    out = run_lm_eval(
        llada, [str(tasks[0] / "tiny_mc.yaml")], num_fewshot=1, limit=2, mc_num=MC_NUM, seed=SEED,
        apply_chat_template=True, log=lambda _: None,
    )  # fmt: skip
    assert out["results"]["n-shot"]["dlm_tiny_mc"] == 1
    assert out["results"]["n-samples"]["dlm_tiny_mc"]["effective"] == 2 == len(out["samples"]["dlm_tiny_mc"])
    (ctx, cont), resp = out["samples"]["dlm_tiny_mc"][0]["arguments"][0], out["samples"]["dlm_tiny_mc"][0]["resps"][0]
    assert ctx.startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>")
    assert ctx.count("<|start_header_id|>user") == 2  # the shot and the question
    assert resp[0][0] == pytest.approx(_direct_elbo(llada, ctx, cont), rel=1e-5)


def test_shifted_family_scores_with_shifted_logits(preset_workspace, tasks):
    """Dream predicts token i at position i - 1, and takes an attention mask."""
    loaded = load_model_and_tokenizer(str(ensure_preset("tiny-dream", preset_workspace)))
    out = run_lm_eval(loaded, [str(tasks[0] / "tiny_mc.yaml")], limit=2, mc_num=MC_NUM, seed=SEED, log=lambda _: None)
    for sample in out["samples"]["dlm_tiny_mc"]:
        got = [resp[0][0] for resp in sample["resps"]]
        assert got == pytest.approx([_direct_elbo(loaded, *args) for args in sample["arguments"]], rel=1e-5)


def test_rolling_likelihood_sums_window_elbos(llada):
    lm = DiffusionLM(llada, mc_num=MC_NUM, batch_size=4, seed=SEED, max_length=16)
    text = (
        "Lily walks the red car near the sea every morning. Tom reads a long letter at home after lunch. "
        "The farmer counts five stones on the hill on Sunday. Zoe paints the blue sky."
    )
    tokens = llada.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert 31 <= len(tokens) <= 45
    # windows of max_length - 1 = 15 scored tokens, each given the token before it (the first given BOS), the last
    # one given as many earlier tokens as fit in max_length (lm-eval's rolling windows)
    bos, n = llada.special_ids.bos, len(tokens)
    windows = [([bos], tokens[:15]), ([tokens[14]], tokens[15:30]), (tokens[n - 16 : 30], tokens[30:])]
    expected = sum(_elbo_of(llada, ctx, cont) for ctx, cont in windows)
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert got == pytest.approx(expected, rel=1e-5)


def test_greedy_check_and_seeds(llada):
    lm = DiffusionLM(llada, mc_num=MC_NUM, batch_size=4, seed=SEED)
    ctx = llada.tokenizer("Question: what is 2 + 3? Answer:", add_special_tokens=False)["input_ids"]
    masked = torch.tensor([ctx + [llada.special_ids.mask] * 3])
    with torch.no_grad():
        argmax = llada.model(masked).logits[0, len(ctx) :].argmax(-1).tolist()
    wrong = [argmax[0], argmax[1], (argmax[2] + 1) % 50]
    longer = llada.tokenizer(" Five, since two and three make five.", add_special_tokens=False)["input_ids"]
    requests = [(("", ""), ctx, argmax), (("", ""), ctx, wrong), (("", ""), ctx, longer)]
    (greedy_value, greedy), (_, not_greedy), (value, _) = lm._loglikelihood_tokens(requests)
    assert greedy is True and not_greedy is False
    assert greedy_value == pytest.approx(_elbo_of(llada, ctx, argmax), rel=1e-5)
    # same seed: same masks whatever the batch or the order; another seed: other masks
    again = DiffusionLM(llada, mc_num=MC_NUM, batch_size=1, seed=SEED)._loglikelihood_tokens(requests[::-1])
    assert [again[2][0], again[0][0]] == pytest.approx([greedy_value, value], rel=1e-6)
    other = DiffusionLM(llada, mc_num=MC_NUM, batch_size=4, seed=SEED + 1)._loglikelihood_tokens(requests)
    assert other[2][0] != pytest.approx(value, rel=1e-3)


def test_sampler_length_follows_the_task():
    llada = settings_for_length(SamplerSettings(steps=32, max_new_tokens=32, block_length=32), 100, "llada")
    assert (llada.max_new_tokens, llada.steps, llada.block_length) == (128, 128, 32)
    blocks = settings_for_length(SamplerSettings(steps=16, max_new_tokens=32, block_length=8), 20, "llada")
    assert (blocks.max_new_tokens, blocks.steps) == (24, 12)  # 3 blocks, 2 tokens per step
    dream = settings_for_length(SamplerSettings(steps=8, max_new_tokens=32), 10, "dream")
    assert (dream.max_new_tokens, dream.steps) == (10, 3)
    assert settings_for_length(SAMPLER, 4, "llada") == SAMPLER


def test_registered_model_reads_string_arguments(llada):
    cls = get_model("dlm_diffusion")
    assert cls is DiffusionLM
    lm = cls.create_from_arg_string(
        f"pretrained={llada.path},mc_num=2,steps=8,max_new_tokens=8,block_length=4,temperature=0.5,top_k=None",
        {"batch_size": 4, "max_batch_size": None, "device": None},
    )
    assert (lm.mc_num, lm.batch_size) == (2, 4)
    assert lm.sampler == SamplerSettings(steps=8, max_new_tokens=8, block_length=4, temperature=0.5)
    assert lm.sampler.stop_at_end  # answers are unchanged by it, so on unless switched off
    fast = cls.create_from_arg_string(f"pretrained={llada.path},suffix_window=16,stop_at_end=false", {})
    assert (fast.sampler.suffix_window, fast.sampler.stop_at_end) == (16, False)
    elastic = cls.create_from_arg_string(f"pretrained={llada.path},cache=elastic,refresh_similarity=0.75", {})
    assert (elastic.sampler.cache, elastic.sampler.refresh_similarity) == ("elastic", 0.75)
    with pytest.raises(LmEvalError, match="unknown dlm_diffusion argument.*stepz"):
        cls.create_from_arg_string(f"pretrained={llada.path},stepz=8")


def test_causal_models_go_through_hflm(preset_workspace, tasks):
    loaded = load_model_and_tokenizer(str(ensure_preset("tiny-ar", preset_workspace)))
    logs: list[str] = []
    out = run_lm_eval(loaded, [str(tasks[0] / "tiny_mc.yaml")], batch_size=4, seed=SEED, log=logs.append)
    assert any("causal LM: lm-eval's HFLM" in line for line in logs) and out["generation"] == {}
    samples = out["samples"]["dlm_tiny_mc"]
    assert len(samples) == 6 and "acc" in out["metrics"]["dlm_tiny_mc"]
    (ctx, cont), resp = samples[0]["arguments"][0], samples[0]["resps"][0][0]
    encode = lambda text: loaded.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    whole, context = encode(ctx + cont), encode(ctx)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([whole])).logits[0].log_softmax(-1)
    exact = sum(float(logits[i - 1, whole[i]]) for i in range(len(context), len(whole)))
    assert resp[0] == pytest.approx(exact, rel=1e-4)


@pytest.mark.slow
def test_unknown_and_network_tasks_are_named(llada, tmp_path):
    run = lambda tasks: run_lm_eval(llada, tasks, mc_num=1, log=lambda _: None)  # noqa: E731
    with pytest.raises(LmEvalError, match=r"'hellaswg' is not installed.*close matches: hellaswag"):
        run("hellaswg")
    with pytest.raises(LmEvalError, match="does not exist"):
        run([str(tmp_path / "missing.yaml")])
    with pytest.raises(LmEvalError, match="no lm-eval task given"):
        run(" , ")
    offline = tmp_path / "offline.yaml"
    offline.write_text(
        "task: dlm_offline\ndataset_path: some-org/never-downloaded\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: label\n"
    )
    with pytest.raises(LmEvalError, match=rf"{offline} needs the network to download its dataset 'some-org/never-"):
        run([str(offline)])
    with pytest.raises(LmEvalError, match=r"'arc_easy' needs the network to download its dataset 'allenai/ai2_arc'"):
        run("arc_easy")


# -------------------------------------------------------------------- lm-eval's command line


def test_the_cpu_stands_in_for_a_missing_gpu(llada, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    logs: list[str] = []
    lm = get_model("dlm_diffusion").create_from_arg_string(
        f"pretrained={llada.path},mc_num=2", {"batch_size": 2, "max_batch_size": None, "device": "cuda:0"}
    )
    assert lm._device == torch.device("cpu")
    assert available_device("cuda:0", logs.append) == "cpu" and "runs on the CPU" in logs[0]
    assert available_device("cpu", logs.append) == "cpu" and len(logs) == 1


def test_options_the_adapter_cannot_honour_are_named(llada):
    cls = get_model("dlm_diffusion")
    with pytest.raises(LmEvalError, match="cannot honour max_batch_size=64: it applies to --batch_size auto"):
        cls.create_from_arg_string(f"pretrained={llada.path}", {"batch_size": 2, "max_batch_size": 64})
    with pytest.raises(LmEvalError, match="batch_size must be a positive integer, got 'auto'"):
        cls.create_from_arg_string(f"pretrained={llada.path}", {"batch_size": "auto"})


def _task_with_code(folder: Path) -> Path:
    config = yaml.safe_load((FIXTURES / "tiny_mc.yaml").read_text())
    text = yaml.safe_dump(config) + "process_docs: !function utils.process_docs\n"
    (folder / "tiny_code.yaml").write_text(text)
    return folder / "tiny_code.yaml"


def test_task_code_in_yaml_runs_only_under_trust_remote_code(llada, tmp_path, capsys):
    path = _task_with_code(tmp_path)
    line = len(path.read_text().splitlines())
    assert task_code([tmp_path]) == [f"{path}:{line}"] == task_code([path])
    with pytest.raises(LmEvalError, match=rf"runs Python code \(!function\) at {path}:{line}.*trust_remote_code"):
        run_lm_eval(llada, [str(path)], log=lambda _: None)
    with pytest.raises(SystemExit, match="runs Python code"):
        cli.main(["--model", "dlm_diffusion", "--tasks", str(path), "--model_args", "pretrained=tiny-llada"])
    with pytest.raises(SystemExit, match="runs Python code"):
        cli.main(["--model=dlm_diffusion", "--tasks", "x", "--include_path", str(tmp_path)])
    refuse_task_code([tmp_path], trust_remote_code=True)  # allowed when trusted


@pytest.mark.slow
def test_stock_lm_eval_command_line_runs_dlm_diffusion_on_the_cpu(tasks, preset_workspace, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [sys.executable, "-m", "dlm.lm_eval_cli", "--model", "dlm_diffusion", "--tasks"]
    model = f"pretrained={ensure_preset('tiny-llada', preset_workspace)},mc_num=2"
    command += [str(tasks[0] / "tiny_mc.yaml"), "--model_args", model, "--limit", "3", "--batch_size", "4"]
    command += ["--output_path", str(tmp_path / "out")]  # lm-eval's own options pass through
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "|dlm_tiny_mc|" in done.stdout and "runs on the CPU instead of cuda:0" in done.stderr
    (results,) = (tmp_path / "out").rglob("results_*.json")
    assert json.loads(results.read_text())["results"]["dlm_tiny_mc"]["acc,none"] in (0, 1 / 3, 2 / 3, 1)
