"""Evaluation metrics: perplexity bound against exact enumeration of every mask, causal perplexity and accuracies
against brute-force loops over the models' full logits, answer extraction, Self-BLEU/distinct/entropy against
hand-computed values and sacreBLEU, speed counts, one shared generation pass, and bad-input messages."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import sacrebleu
import torch

import dlm.evaluation.answers as answers
import dlm.evaluation.settings as evaluation_settings
from dlm.elbo import exact_elbo, example_generators
from dlm.evaluation.run import evaluate
from dlm.evaluation.settings import EvalExample, EvalSettings
from dlm.generation import SamplerSettings, decode_answers, encode_prompts, generate
from dlm.loading import load_model_and_tokenizer
from dlm.metrics.likelihood import (
    ScoringInputs,
    causal_scores,
    masked_token_accuracy,
    next_token_accuracy,
    perplexity,
    ratio_masks,
    scoring_inputs,
    text_elbos,
)
from dlm.metrics.result import EvaluationError
from dlm.metrics.text import distinct_n, extract_answer, is_correct, reference_answer, self_bleu, unigram_entropy

FIXTURES = Path(__file__).parents[1] / "fixtures" / "golden"
TEXTS = [
    "Lily reads a book in the park.",
    "Tom has 12 coins and gives away 6, so 6 are left.",
    "What is 3 + 4? Answer: 3 + 4 = 7.",
    "The farmer walks near the sea.",
]
PROMPTS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "Where does Lily live?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
]


@pytest.fixture(scope="module")
def golden() -> dict:
    """The golden LLaDA (unshifted) and Dream (shifted) checkpoints: spread-out logits, so argmax and likelihoods
    vary with the context."""
    models = {}
    for name in ("llada-tiny", "dream-tiny"):
        loaded = load_model_and_tokenizer(FIXTURES / name)
        loaded.model.eval()
        models[name] = loaded
    return models


@pytest.fixture(scope="module")
def presets(preset_workspace) -> dict:
    models = {}
    for name in ("tiny-llada", "tiny-ar", "tiny-dream"):
        loaded = load_model_and_tokenizer(name, workspace=preset_workspace)
        loaded.model.eval()
        models[name] = loaded
    return models


def _random_inputs(bos: int, lengths: list[int], vocab: int, seed: int = 0) -> ScoringInputs:
    """Scoring inputs of random ordinary tokens (ids 5..vocab-1): BOS then `length` scored tokens per text."""
    generator = torch.Generator().manual_seed(seed)
    ids = [[bos, *torch.randint(5, vocab, (n,), generator=generator).tolist()] for n in lengths]
    return ScoringInputs(ids=ids, indices=list(range(len(ids))), bos=bos)


# ---------------------------------------------------------------------------------------------- likelihood inputs


def test_scoring_inputs_prepend_bos_truncate_and_skip(presets) -> None:
    tokenizer = presets["tiny-llada"].tokenizer
    bos = presets["tiny-llada"].special_ids.bos
    plain = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    inputs = scoring_inputs(tokenizer, bos, [TEXTS[0], "", TEXTS[1]], max_length=10)
    assert inputs.indices == [0, 2] and inputs.skipped == [1]
    assert inputs.ids[0] == [bos, *plain[0]][:10]
    assert inputs.ids[1] == [bos, *plain[1]][:10]
    assert inputs.truncated == [i for i, p in zip([0, 2], (plain[0], plain[1]), strict=True) if len(p) + 1 > 10]
    assert inputs.scored_tokens == sum(len(ids) - 1 for ids in inputs.ids)
    # without BOS the first text token is the context: one token less is scored
    no_bos = scoring_inputs(tokenizer, None, [TEXTS[0]])
    assert no_bos.ids == [plain[0]] and no_bos.scored_tokens == len(plain[0]) - 1
    with pytest.raises(EvaluationError, match="none of the 2 texts has a token to score"):
        scoring_inputs(tokenizer, bos, ["", ""])


def test_causal_and_diffusion_perplexity_score_the_same_tokens(presets) -> None:
    """tiny-ar and tiny-llada share a tokenizer: both perplexities cover the very same token ids."""
    ar = perplexity(presets["tiny-ar"], TEXTS, batch_size=3)
    diffusion = perplexity(presets["tiny-llada"], TEXTS, mc_num=4, batch_size=8)
    assert ar.kind == "exact" and ar.stderr is None
    assert diffusion.kind == "upper_bound" and diffusion.stderr > 0 and diffusion.details["mc_num"] == 4
    assert ar.details["scored_tokens"] == diffusion.details["scored_tokens"] > len(TEXTS)
    assert ar.details["texts"] == diffusion.details["texts"] == len(TEXTS)


# ------------------------------------------------------------------------------------------ diffusion perplexity


@pytest.mark.parametrize("name", ["llada-tiny", "dream-tiny"])
def test_perplexity_bound_matches_exact_enumeration(golden, name: str) -> None:
    loaded = golden[name]
    vocab = loaded.model.config.vocab_size
    inputs = _random_inputs(loaded.special_ids.bos, [3, 8, 5, 6, 1, 6], vocab, seed=1)
    mc_num = 48
    metric = perplexity(loaded, inputs, mc_num=mc_num, batch_size=32, seed=3)
    means, stderrs = text_elbos(loaded, inputs, mc_num=mc_num, batch_size=32, seed=3)

    exact = []
    for ids in inputs.ids:
        row = torch.tensor([ids])
        scored = torch.ones_like(row, dtype=torch.bool)
        scored[0, 0] = False
        with torch.no_grad():
            exact.append(
                float(
                    exact_elbo(loaded.model, row, scored, mask_id=loaded.special_ids.mask, shift=name == "dream-tiny")
                )
            )
    exact = torch.tensor(exact, dtype=torch.float64)
    single = torch.tensor([len(ids) == 2 for ids in inputs.ids])  # one scored token: one possible mask
    assert bool((stderrs[~single] > 0).all()) and bool((stderrs[single] == 0).all())
    # per text and in total, the Monte-Carlo mean is within 3 standard errors of the exact ELBO
    assert bool(((means - exact).abs() <= 3 * stderrs + 1e-4).all()), (means, exact, stderrs)
    assert abs(float(means.sum() - exact.sum())) <= 3 * math.sqrt(float(stderrs.square().sum()))
    tokens = inputs.scored_tokens
    assert metric.value == pytest.approx(math.exp(-float(means.sum()) / tokens), rel=1e-12)
    assert abs(metric.value - math.exp(-float(exact.sum()) / tokens)) <= 3 * metric.stderr
    assert metric.stderr == pytest.approx(metric.value * math.sqrt(float(stderrs.square().sum())) / tokens)
    # the ELBO varies with the mask, so agreeing within 3 errors is not trivial
    assert float(stderrs.max()) > 0.05


def test_elbo_masks_do_not_depend_on_batching(golden) -> None:
    loaded = golden["llada-tiny"]
    inputs = _random_inputs(loaded.special_ids.bos, [4, 4, 6, 4], loaded.model.config.vocab_size)
    one, _ = text_elbos(loaded, inputs, mc_num=8, batch_size=1, seed=0)
    many, _ = text_elbos(loaded, inputs, mc_num=8, batch_size=32, seed=0)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5)
    other_seed, _ = text_elbos(loaded, inputs, mc_num=8, batch_size=32, seed=1)
    assert not torch.allclose(many, other_seed)


def test_mc_num_must_be_positive(golden) -> None:
    with pytest.raises(EvaluationError, match="mc_num .* must be at least 1, got 0"):
        perplexity(golden["llada-tiny"], TEXTS, mc_num=0)


# --------------------------------------------------------------------------------------------- causal likelihood


def _greedy_texts(loaded, seed: int = 0) -> ScoringInputs:
    """BOS, random tokens, greedy continuations, random tokens: next-token accuracy is far from 0 and 1."""
    model, bos = loaded.model, loaded.special_ids.bos
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for start, greedy, tail in [(2, 5, 2), (4, 3, 1), (1, 6, 3), (3, 0, 4)]:
        ids = [bos, *torch.randint(5, 1000, (start,), generator=generator).tolist()]
        for _ in range(greedy):
            with torch.no_grad():
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        ids += torch.randint(5, 1000, (tail,), generator=generator).tolist()
        rows.append(ids)
    return ScoringInputs(ids=rows, indices=list(range(len(rows))), bos=bos)


def test_causal_perplexity_and_next_token_accuracy_match_brute_force(presets) -> None:
    loaded = presets["tiny-ar"]
    inputs = _greedy_texts(loaded)
    nll, hits, tokens = 0.0, 0, 0
    for ids in inputs.ids:
        with torch.no_grad():
            logits = loaded.model(torch.tensor([ids])).logits[0].double()
        for i in range(1, len(ids)):
            nll -= float(torch.log_softmax(logits[i - 1], -1)[ids[i]])
            hits += int(logits[i - 1].argmax()) == ids[i]
            tokens += 1
    ppl = perplexity(loaded, inputs, batch_size=3)  # batches of unequal lengths: right padding
    assert ppl.value == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert ppl.details["nll_per_token"] == pytest.approx(nll / tokens, rel=1e-5)
    accuracy = next_token_accuracy(loaded, inputs, batch_size=3)
    assert 0.2 < accuracy.value < 0.9
    assert accuracy.value == hits / tokens and accuracy.stderr > 0
    scores = causal_scores(loaded, inputs, batch_size=1)
    assert scores.tokens.tolist() == [len(ids) - 1 for ids in inputs.ids]
    with pytest.raises(EvaluationError, match="needs a diffusion model"):
        masked_token_accuracy(loaded, inputs, 0.5)
    with pytest.raises(EvaluationError, match="need a causal LM"):
        next_token_accuracy(presets["tiny-llada"], TEXTS)


# ------------------------------------------------------------------------------------------ masked-token accuracy


def _mask_of(index: int, length: int, ratio: float, seed: int) -> torch.Tensor:
    """The mask `masked_token_accuracy` documents for text `index` of `length` ids (the first one unscored)."""
    scored = torch.ones(1, length, dtype=torch.bool)
    scored[0, 0] = False
    return ratio_masks(scored, ratio, example_generators([f"masked_accuracy@{ratio:g}:{index}"], seed))[0]


def _half_predicted(loaded, lengths: list[int], shift: bool, ratio: float, seed: int) -> ScoringInputs:
    """Random texts where every other masked position holds the model's prediction there: masked positions do not
    change the model's input, so those predictions stay hits and the accuracy is far from 0 and 1."""
    inputs = _random_inputs(loaded.special_ids.bos, lengths, loaded.model.config.vocab_size, seed=2)
    mask_id = loaded.special_ids.mask
    for index, ids in zip(inputs.indices, inputs.ids, strict=True):
        mask = _mask_of(index, len(ids), ratio, seed)
        with torch.no_grad():
            logits = loaded.model(torch.tensor([ids]).masked_fill(mask, mask_id)).logits[0]
        for p in mask.nonzero()[:, 0].tolist()[::2]:
            predicted = int(logits[p - 1 if shift else p].argmax())
            if predicted != mask_id:
                ids[p] = predicted
    return inputs


def test_ratio_masks_mask_exactly_the_rounded_count() -> None:
    scored = torch.ones(3, 9, dtype=torch.bool)
    scored[:, 0] = False
    scored[2, 5:] = False  # 4 scored tokens
    masks = ratio_masks(scored, 0.5, example_generators([0, 1, 2]))
    assert masks.sum(-1).tolist() == [4, 4, 2] and not bool((masks & ~scored).any())
    assert ratio_masks(scored, 0.01, example_generators([0, 1, 2])).sum(-1).tolist() == [1, 1, 1]
    assert bool((ratio_masks(scored, 1.0, example_generators([0, 1, 2])) == scored).all())
    with pytest.raises(EvaluationError, match=r"mask ratios must lie in \(0, 1\], got 1.5"):
        ratio_masks(scored, 1.5, example_generators([0, 1, 2]))


@pytest.mark.parametrize("name", ["llada-tiny", "dream-tiny"])
@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_masked_accuracy_matches_brute_force(golden, name: str, ratio: float) -> None:
    loaded = golden[name]
    shift = name == "dream-tiny"
    seed = 5
    inputs = _half_predicted(loaded, [6, 9, 6, 4, 7], shift, ratio, seed)
    metric = masked_token_accuracy(loaded, inputs, ratio, batch_size=2, seed=seed)
    hits = masked = 0
    per_text = []
    for index, ids in zip(inputs.indices, inputs.ids, strict=True):
        row = torch.tensor([ids])
        mask = _mask_of(index, len(ids), ratio, seed)
        with torch.no_grad():
            logits = loaded.model(row.masked_fill(mask, loaded.special_ids.mask)).logits[0]
        text_hits = sum(int(logits[p - 1 if shift else p].argmax()) == ids[p] for p in mask.nonzero()[:, 0].tolist())
        hits += text_hits
        masked += int(mask.sum())
        per_text.append((text_hits, int(mask.sum())))
    assert metric.name == f"masked_accuracy@{ratio:g}" and metric.details["masked_tokens"] == masked
    assert metric.value == hits / masked
    assert 0 < metric.value < 1
    # cluster (ratio-estimator) standard error over texts
    c = torch.tensor([h for h, _ in per_text], dtype=torch.float64)
    m = torch.tensor([n for _, n in per_text], dtype=torch.float64)
    expected_se = math.sqrt(len(c) / (len(c) - 1) * float((c - metric.value * m).square().sum())) / float(m.sum())
    assert metric.stderr == pytest.approx(expected_se)


# ------------------------------------------------------------------------------------------------ text metrics


@pytest.mark.parametrize(
    ("text", "mode", "regex", "expected"),
    [
        ("  The Answer  is 72. ", "exact", "", "the answer is 72"),
        ("72.0", "exact", "", "72"),
        ("She has $1,234.50 left, not 3.", "first_number", "", "1234.5"),
        ("-3 degrees", "first_number", "", "-3"),
        ("no digits here", "first_number", "", None),
        ("so the answer is 18 apples", "regex", r"answer is (\d+)", "18"),
        ("so the answer is 18 apples", "regex", r"\d+ apples", "18 apples"),
        ("nothing", "regex", r"answer is (\d+)", None),
    ],
)
def test_extract_answer(text: str, mode: str, regex: str, expected: str | None) -> None:
    assert extract_answer(text, mode, regex) == expected


def test_reference_answers_and_correctness() -> None:
    gsm8k = "Natalia sold 48/2 = 24 clips in May.\n#### 72"
    assert reference_answer(gsm8k, "first_number") == "72"
    assert reference_answer(gsm8k, "exact") == "72"
    assert is_correct("She sold 72 clips in total.", gsm8k, "first_number")
    assert not is_correct("She sold 48 + 24 = 72 clips.", gsm8k, "first_number")  # the first number is 48
    assert is_correct("The answer is 72.", "72", "regex", r"answer is (\S+)")
    assert is_correct("Paris", "paris.", "exact") and not is_correct("Paris, France", "Paris", "exact")
    with pytest.raises(EvaluationError, match="answer_extraction=regex needs answer_regex"):
        extract_answer("x", "regex", "")
    with pytest.raises(EvaluationError, match="answer_regex '\\(' is not a valid regular expression"):
        extract_answer("x", "regex", "(")
    with pytest.raises(EvaluationError, match="answer_extraction='last' is unknown; choose one of: exact, first_n"):
        extract_answer("x", "last")


def test_self_bleu_hand_computed() -> None:
    # "a b c d" against {"a b c e", "a b"}: closest reference length 4 (no brevity penalty); precisions 3/4, 2/3,
    # 1/2 and 0/1, the last smoothed (exp) to 1/(2*1): BLEU = (3/4 * 2/3 * 1/2 * 1/2) ** (1/4) = (1/8) ** (1/4).
    # "a b c e" likewise. "a b" against the two 4-word texts: precisions 1 and 1 (effective order 2), brevity
    # penalty exp(1 - 4/2).
    expected = (2 * (1 / 8) ** 0.25 + math.exp(-1)) / 3
    assert self_bleu(["a b c d", "a b c e", "a b"]) == pytest.approx(expected, rel=1e-12)
    assert self_bleu(["x y z w", "x y z w"]) == pytest.approx(1.0)
    assert self_bleu(["the cat", "a dog"]) == 0.0
    with pytest.raises(EvaluationError, match="at least 2"):
        self_bleu(["alone"])


def test_self_bleu_equals_sacrebleu_leave_one_out() -> None:
    texts = [
        "The cat sat on the mat.",
        "The cat sat on a mat, and the dog sat too.",
        "A dog ran in the park near the cat.",
        "the cat sat",
        "Lily reads a book in the park every morning.",
        "The the the cat cat.",
        "",
        "Lily reads the book.",
    ]
    expected = sum(
        sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :]).score / 100 for i, t in enumerate(texts)
    ) / len(texts)
    assert self_bleu(texts) == pytest.approx(expected, rel=1e-12)


def test_distinct_n_and_unigram_entropy_hand_computed() -> None:
    # unigrams a b a b a c: 3 distinct of 6; bigrams ab ba ab ac: 3 distinct of 4
    assert distinct_n(["a b a b", "a c"], 1) == 0.5
    assert distinct_n(["a b a b", "a c"], 2) == 0.75
    assert distinct_n(["Hi!", ""], 1) == 1.0  # 13a splits the punctuation: "Hi" "!"
    assert distinct_n(["one"], 2) == 0.0
    # frequencies 1/2, 1/4, 1/4: H = 1.5 ln 2
    assert unigram_entropy([7, 7, 8, 9]) == pytest.approx(1.5 * math.log(2))
    assert unigram_entropy([5, 5, 5]) == 0.0 and unigram_entropy([]) == 0.0


# ------------------------------------------------------------------------------------------ generation and speed


def _examples(references: list[str] | None = None) -> list[EvalExample]:
    refs = references or ["7", "Lily lives near the sea.", "Sunlight scatters."]
    return [EvalExample(text=TEXTS[i], prompt=PROMPTS[i], reference=refs[i]) for i in range(3)]


def test_speed_counts_non_eos_tokens_and_nfe_equals_steps(presets) -> None:
    loaded = presets["tiny-llada"]
    sampler = SamplerSettings(steps=8, max_new_tokens=8, block_length=4)
    settings = EvalSettings(metrics=("speed",), batch_size=2, sampler=sampler)
    out = evaluate(loaded, _examples(), settings)
    metrics = {m.name: m for m in out.metrics}
    assert set(metrics) == {"tokens_per_sec", "nfe_per_sample", "latency_per_prompt_s", "peak_memory_gb"} | {
        "empty_answers"
    }
    assert metrics["nfe_per_sample"].value == 8
    # independent count: the same batches generated again, tokens other than EOS/EOT counted by hand
    special = loaded.special_ids
    expected = []
    for first in (0, 2):
        ids, attention = encode_prompts(loaded.tokenizer, PROMPTS[first : first + 2], special.pad)
        sequences = generate(loaded.model, loaded.family, special, ids, attention, sampler).sequences
        for row in sequences[:, ids.shape[1] :].tolist():
            expected.append(sum(token not in (special.eos, special.eot) for token in row))
    assert [s["tokens"] for s in out.samples] == expected
    speed = metrics["tokens_per_sec"]
    assert speed.details["generated_tokens"] == sum(expected)
    assert speed.value == pytest.approx(sum(expected) / speed.details["wall_time_s"])
    assert [s["nfe"] for s in out.samples] == [8, 8, 8]
    assert metrics["latency_per_prompt_s"].value > 0 and metrics["peak_memory_gb"].value > 0
    assert speed.details["sampler"]["steps"] == 8 and speed.details["sampler"]["block_length"] == 4


@pytest.mark.parametrize(("grow_canvas", "decoded"), [(0, "elastic"), (4, "dual")])
def test_cache_auto_is_reported_as_decoded_and_decodes_as_that_cache_with_threshold_0_99(
    presets, grow_canvas: int, decoded: str
) -> None:
    """LLaDA decodes `cache` auto with the elastic cache over the whole window, the dual cache with a growing
    canvas (which the elastic cache cannot serve); the report names what was decoded."""
    loaded = presets["tiny-llada"]
    lengths = {"steps": 8, "max_new_tokens": 8, "block_length": 4, "grow_canvas": grow_canvas}
    auto = SamplerSettings(**lengths, cache="auto")
    out = evaluate(loaded, _examples(), EvalSettings(metrics=("speed",), batch_size=3, sampler=auto))
    speed = next(m for m in out.metrics if m.name == "tokens_per_sec")
    assert (speed.details["sampler"]["cache"], speed.details["sampler"]["parallel_threshold"]) == (decoded, 0.99)
    direct = SamplerSettings(**lengths, cache=decoded, parallel_threshold=0.99)
    special = loaded.special_ids
    ids, attention = encode_prompts(loaded.tokenizer, PROMPTS, special.pad)
    expected = generate(loaded.model, loaded.family, special, ids, attention, direct)
    assert [s["nfe"] for s in out.samples] == expected.row_nfe.tolist()
    assert [s["output"] for s in out.samples] == decode_answers(
        loaded.tokenizer, special, expected.sequences, ids.shape[1]
    )


def test_empty_answers_are_counted_not_silent(presets, monkeypatch) -> None:
    loaded = presets["tiny-llada"]
    special = loaded.special_ids
    real_generate = answers.generate

    def second_prompt_ends_at_once(model, family, special_ids, ids, *args):
        out = real_generate(model, family, special_ids, ids, *args)
        out.sequences[1, ids.shape[1]] = special.eos  # its first answer token ends it
        return out

    monkeypatch.setattr(answers, "generate", second_prompt_ends_at_once)
    sampler = SamplerSettings(steps=4, max_new_tokens=4, block_length=4)
    settings = EvalSettings(metrics=("task_accuracy",), batch_size=3, sampler=sampler)
    out = evaluate(loaded, _examples(), settings)
    empty = next(m for m in out.metrics if m.name == "empty_answers")
    assert [s["empty"] for s in out.samples] == [False, True, False]
    assert out.samples[1]["output"] == ""
    assert empty.value == pytest.approx(1 / 3) and empty.details["empty"] == 1
    assert empty.details["empty_prompts"] == [1]


def test_all_generation_metrics_share_one_pass_and_task_accuracy(presets, monkeypatch) -> None:
    loaded = presets["tiny-ar"]
    sampler = SamplerSettings(max_new_tokens=6)
    settings = EvalSettings(
        metrics=("generation", "task_accuracy", "diversity", "speed"), batch_size=2, mc_num=4, sampler=sampler
    )
    first = evaluate(loaded, _examples(), settings)
    # references: the model's own (greedy, deterministic) answers for two prompts, a wrong one for the third
    outputs = [s["output"] for s in first.samples]
    calls = []
    real_generate = answers.generate
    monkeypatch.setattr(answers, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    fractions = []
    out = evaluate(loaded, _examples([outputs[0], "certainly not this", outputs[2]]), settings, fractions.append)
    assert len(calls) == 2  # 3 prompts in batches of 2, once for all four metric groups
    assert [s["output"] for s in out.samples] == outputs
    assert [s["correct"] for s in out.samples] == [True, False, True]
    metrics = {m.name: m for m in out.metrics}
    assert metrics["task_accuracy"].value == pytest.approx(2 / 3)
    assert metrics["task_accuracy"].details["answer_extraction"] == "exact"
    assert metrics["self_bleu"].value == pytest.approx(self_bleu(outputs))
    assert metrics["distinct_2"].value == pytest.approx(distinct_n(outputs, 2))
    # generation perplexity always comes with unigram entropy, both with the sampler settings
    assert metrics["generation_perplexity"].kind == "exact" and "unigram_entropy" in metrics
    assert metrics["generation_perplexity"].value == pytest.approx(perplexity(loaded, outputs).value)
    assert metrics["unigram_entropy"].details["sampler"]["max_new_tokens"] == 6
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_evaluate_text_metrics_of_a_diffusion_model(presets) -> None:
    loaded = presets["tiny-dream"]
    settings = EvalSettings(metrics=("perplexity", "accuracy"), mc_num=4, mask_ratios=(0.25, 1.0), seed=3)
    out = evaluate(loaded, _examples(), settings)
    assert [m.name for m in out.metrics] == ["perplexity", "masked_accuracy@0.25", "masked_accuracy@1"]
    assert out.samples == []
    alone = perplexity(loaded, TEXTS[:3], mc_num=4, seed=3)
    assert out.metrics[0].value == alone.value and out.metrics[0].kind == "upper_bound"


# ---------------------------------------------------------------------------------------- conditional likelihood

SHORT_ANSWERS = ["7", "By the sea.", "Light."]  # at most 8 scored tokens: the exact ELBO stays cheap


def _conversation_ids(loaded, example: EvalExample) -> tuple[list[int], int]:
    """Independently of `conversation_inputs`: the chat-template ids of prompt and answer, and the prompt length."""
    tokenizer = loaded.tokenizer
    messages = [*example.prompt, {"role": "assistant", "content": example.reference}]
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    prompt = tokenizer.apply_chat_template(example.prompt, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert full[: len(prompt)] == prompt
    return list(full), len(prompt)


def test_conditional_perplexity_of_a_causal_lm_is_the_exact_answer_likelihood(presets) -> None:
    loaded = presets["tiny-ar"]
    examples = _examples(SHORT_ANSWERS)
    nll, tokens = 0.0, 0
    for example in examples:
        ids, prompt = _conversation_ids(loaded, example)
        with torch.no_grad():
            logits = loaded.model(torch.tensor([ids])).logits[0].double()
        for i in range(prompt, len(ids)):  # answer tokens only, each given everything before it
            nll -= float(torch.log_softmax(logits[i - 1], -1)[ids[i]])
            tokens += 1
    out = evaluate(loaded, examples, EvalSettings(metrics=("conditional_perplexity",), batch_size=2))
    (metric,) = out.metrics
    assert metric.name == "conditional_perplexity" and metric.kind == "exact"
    assert metric.details["scored_tokens"] == tokens
    assert metric.value == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    # not the plain-text perplexity of "prompt\nanswer"
    plain = perplexity(loaded, ["\n".join([e.prompt[-1]["content"], e.reference]) for e in examples])
    assert plain.value != pytest.approx(metric.value, rel=1e-2)


def test_conditional_perplexity_of_a_diffusion_lm_bounds_the_answer_given_an_unmasked_prompt(presets) -> None:
    loaded = presets["tiny-llada"]
    examples = _examples(SHORT_ANSWERS)
    exact, tokens = [], 0
    for example in examples:
        ids, prompt = _conversation_ids(loaded, example)
        row = torch.tensor([ids])
        answer = torch.zeros_like(row, dtype=torch.bool)
        answer[0, prompt:] = True  # the prompt is never masked, every answer token is scored
        assert 1 <= int(answer.sum()) <= 8
        tokens += int(answer.sum())
        with torch.no_grad():
            exact.append(float(exact_elbo(loaded.model, row, answer, mask_id=loaded.special_ids.mask, shift=False)))
    settings = EvalSettings(metrics=("conditional_perplexity", "perplexity"), mc_num=64, batch_size=4, seed=5)
    metrics = {m.name: m for m in evaluate(loaded, examples, settings).metrics}
    metric = metrics["conditional_perplexity"]
    assert metric.kind == "upper_bound" and metric.details["scored_tokens"] == tokens
    assert metric.details["mc_num"] == 64 and metric.stderr > 0
    assert abs(metric.value - math.exp(-sum(exact) / tokens)) <= 3 * metric.stderr
    # plain-text perplexity of the text column stays beside it
    assert metrics["perplexity"].value == perplexity(loaded, TEXTS[:3], mc_num=64, seed=5, batch_size=4).value


def test_conditional_perplexity_needs_prompts_and_references(presets) -> None:
    loaded = presets["tiny-ar"]
    settings = EvalSettings(metrics=("conditional_perplexity",))
    no_reference = [*_examples()[:2], EvalExample(prompt=PROMPTS[2])]
    with pytest.raises(EvaluationError, match="conditional_perplexity needs a reference answer .* examples 2 have"):
        evaluate(loaded, no_reference, settings)
    with pytest.raises(EvaluationError, match="conditional_perplexity need a prompt in every example; example 0"):
        evaluate(loaded, [EvalExample(text="x", reference="y")], settings)
    assert evaluation_settings.example_fields(["conditional_perplexity"]) == {
        "conditional_perplexity": ("prompt", "reference")
    }


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"sampler": SamplerSettings(steps=8, max_new_tokens=8, block_length=3)},
            r"block_length=3 must divide .*: 1, 2, 4, 8",
        ),
        (
            {"sampler": SamplerSettings(steps=6, max_new_tokens=8, block_length=2)},
            r"steps=6 must be a positive multiple of the number of blocks.* use steps=4 or steps=8",
        ),
        ({"mc_num": 0}, r"mc_num .* must be at least 1, got 0"),
        (
            {"metrics": ("perplexity", "bleu")},
            r"unknown metrics: bleu; choose from: perplexity, conditional_perplexity, accuracy",
        ),
        ({"mask_ratios": (0.5, 0.0)}, r"mask ratios must lie in \(0, 1\], got 0.0"),
        ({"answer_extraction": "regex"}, r"answer_extraction=regex needs answer_regex"),
    ],
)
def test_bad_settings_are_named(presets, changes: dict, message: str) -> None:
    settings = EvalSettings(**{"metrics": ("accuracy", "task_accuracy"), **changes})
    with pytest.raises(EvaluationError, match=message):
        evaluate(presets["tiny-llada"], _examples(), settings)


def test_example_fields_per_metric_group() -> None:
    assert evaluation_settings.example_fields(["perplexity", "task_accuracy", "speed"]) == {
        "perplexity": ("text",),
        "task_accuracy": ("prompt", "reference"),
        "speed": ("prompt",),
    }
    assert set(evaluation_settings.EXAMPLE_FIELDS) == set(evaluation_settings.METRIC_GROUPS)
    with pytest.raises(EvaluationError, match="unknown metrics: bleu; choose from: perplexity"):
        evaluation_settings.example_fields(["bleu"])


def test_bad_data_is_named(presets) -> None:
    loaded = presets["tiny-llada"]
    with pytest.raises(EvaluationError, match="no examples to evaluate: the dataset split is empty"):
        evaluate(loaded, [], EvalSettings())
    no_reference = [*_examples()[:2], EvalExample(text="x", prompt=PROMPTS[0])]
    with pytest.raises(EvaluationError, match="task_accuracy needs a reference answer .* examples 2 have none"):
        evaluate(loaded, no_reference, EvalSettings(metrics=("task_accuracy",)))
    with pytest.raises(EvaluationError, match="perplexity need a text in every example; examples 0 have none"):
        evaluate(loaded, [EvalExample(prompt=PROMPTS[0])], EvalSettings())
    with pytest.raises(EvaluationError, match="example 0: a prompt must be chat messages ending with a user turn"):
        evaluate(
            loaded, [EvalExample(prompt=[{"role": "assistant", "content": "hi"}])], EvalSettings(metrics=("speed",))
        )
    with pytest.raises(EvaluationError, match="at least 2 prompts"):
        evaluate(loaded, _examples()[:1], EvalSettings(metrics=("diversity",)))


def test_sampler_settings_are_checked_once_per_evaluation(presets, monkeypatch) -> None:
    """`check_models`, `validate` and every generation batch share one sampler, checked when it was built."""
    import dlm.samplers.llada as llada
    from dlm.eval_models import check_models, model_specs
    from dlm.generation import build_sampler

    loaded = presets["tiny-llada"]
    checks = []
    real_check = llada.check_decoding
    monkeypatch.setattr(llada, "check_decoding", lambda *a: checks.append(a) or real_check(*a))
    build_sampler.cache_clear()
    sampler = SamplerSettings(steps=4, max_new_tokens=4, block_length=4, parallel_threshold=0.9)
    settings = EvalSettings(metrics=("generation",), batch_size=1, mc_num=2, sampler=sampler)
    check_models(model_specs(loaded.path), settings)
    evaluate(loaded, _examples(), settings)  # 3 batches
    assert checks == [("none", 0.9, None)]
    with pytest.raises(EvaluationError, match=r"parallel_threshold must be in \(0, 1\]"):
        check_models(
            model_specs(loaded.path), dataclasses.replace(settings, sampler=SamplerSettings(parallel_threshold=2.0))
        )


def test_a_block_diffusion_model_decodes_in_its_own_blocks(preset_workspace) -> None:
    """tiny-bd3lm was trained in blocks of 4: asked for block_length 6, the evaluator decodes (and reports) blocks
    of 4, and its answers are those of the BD3LM sampler built with blocks of 4 directly, in the training layout."""
    from dlm.samplers.bd3lm import BD3LMSampler

    loaded = load_model_and_tokenizer("tiny-bd3lm", workspace=preset_workspace)
    loaded.model.eval()
    assert loaded.model.config.block_size == 4
    asked = SamplerSettings(steps=6, max_new_tokens=6, block_length=6, cache="auto")
    out = evaluate(loaded, _examples(), EvalSettings(metrics=("speed",), batch_size=3, sampler=asked))
    speed = next(m for m in out.metrics if m.name == "tokens_per_sec")
    assert speed.details["sampler"]["block_length"] == 4
    assert speed.details["sampler"]["cache"] == "none"  # "auto" reported as decoded: BD3LM has no canvas cache
    special = loaded.special_ids
    ids, attention = encode_prompts(loaded.tokenizer, PROMPTS, special.pad)
    direct = BD3LMSampler(steps=6, gen_length=6, block_length=4).answer(loaded.model, special, ids, attention)
    expected = [
        sum(t not in (special.eos, special.eot) for t in row) for row in direct.sequences[:, ids.shape[1] :].tolist()
    ]
    assert [s["tokens"] for s in out.samples] == expected
    assert [s["output"] for s in out.samples] == decode_answers(
        loaded.tokenizer, special, direct.sequences, ids.shape[1]
    )
    assert [s["nfe"] for s in out.samples] == [direct.nfe] * 3
