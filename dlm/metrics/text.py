"""Metrics of generated text: answer extraction for task accuracy, Self-BLEU, distinct-n and unigram entropy.

Words for Self-BLEU and distinct-n are sacreBLEU's `13a` tokens (its default for BLEU), so punctuation is split
off the same way in both.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Hashable, Sequence
from decimal import Decimal, InvalidOperation

from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.helpers import extract_all_word_ngrams
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from dlm.metrics.result import EvaluationError

ANSWER_EXTRACTIONS = ("exact", "first_number", "regex")
BLEU_MAX_ORDER = 4
FINAL_ANSWER_MARK = "####"  # GSM8K-style references: reasoning, then "#### answer"

_NUMBER = re.compile(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?")
_WORDS = Tokenizer13a()


def compile_answer_regex(mode: str, regex: str) -> re.Pattern[str] | None:
    """The compiled `answer_regex` for `mode` `regex` (None for the other modes); raises on a bad mode or pattern."""
    if mode not in ANSWER_EXTRACTIONS:
        raise EvaluationError(f"answer_extraction={mode!r} is unknown; choose one of: {', '.join(ANSWER_EXTRACTIONS)}")
    if mode != "regex":
        return None
    if not regex:
        raise EvaluationError(
            "answer_extraction=regex needs answer_regex, e.g. 'answer is (\\S+)' (group 1, else the whole match, "
            "is the answer)"
        )
    try:
        return re.compile(regex)
    except re.error as e:
        raise EvaluationError(f"answer_regex {regex!r} is not a valid regular expression: {e}") from e


def _canonical_number(text: str) -> str | None:
    """`text` as a canonical number string ('1,234.50' -> '1234.5', '-0' -> '0'), or None if it is not one."""
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def normalize_answer(text: str) -> str:
    """Answers compare after this: whitespace collapsed, case folded, a trailing period and a leading '$' dropped,
    and numbers written canonically ('72.0' and '72' match)."""
    text = " ".join(text.split()).casefold().rstrip(".").strip()
    number = _canonical_number(text.removeprefix("$")) if _NUMBER.fullmatch(text.removeprefix("$")) else None
    return number if number is not None else text


def extract_answer(text: str, mode: str = "exact", regex: str = "") -> str | None:
    """The answer in a model output, normalised (`normalize_answer`), or None when `mode` finds none.

    `exact`: the whole output. `first_number`: the first number in it (thousands separators allowed).
    `regex`: the first match of `regex`, its group 1 when it has groups.
    """
    pattern = compile_answer_regex(mode, regex)
    if mode == "exact":
        return normalize_answer(text)
    if mode == "first_number":
        match = _NUMBER.search(text)
        return None if match is None else _canonical_number(match.group())
    match = pattern.search(text)
    if match is None:
        return None
    found = match.group(1) if pattern.groups else match.group()
    return None if found is None else normalize_answer(found)


def reference_answer(reference: str, mode: str = "exact") -> str:
    """The answer a reference holds, normalised: the text after its last '####' if it has one (GSM8K), else all
    of it; with `first_number`, the first number there (the text itself when it has none)."""
    if FINAL_ANSWER_MARK in reference:
        reference = reference.rsplit(FINAL_ANSWER_MARK, 1)[1]
    if mode == "first_number":
        match = _NUMBER.search(reference)
        if match is not None:
            return _canonical_number(match.group())
    return normalize_answer(reference)


def is_correct(output: str, reference: str, mode: str = "exact", regex: str = "") -> bool:
    """Whether the answer extracted from `output` equals the reference's answer."""
    found = extract_answer(output, mode, regex)
    return found is not None and found == reference_answer(reference, mode)


def _words(text: str) -> list[str]:
    return _WORDS(text.rstrip()).split()


def _closest_other_length(sorted_lengths: list[int], own: int) -> int:
    """The length closest to `own` among all lengths but one copy of `own` (ties: the shorter, as sacreBLEU)."""
    lo, hi = bisect_left(sorted_lengths, own), bisect_right(sorted_lengths, own)
    if hi - lo >= 2:
        return own
    below = sorted_lengths[lo - 1] if lo > 0 else None
    above = sorted_lengths[hi] if hi < len(sorted_lengths) else None
    if above is None or (below is not None and own - below <= above - own):
        return below
    return above


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU in [0, 1]: the mean over texts of the sentence BLEU-4 of each text against all the others as
    references. Same statistics and score as `sacrebleu.sentence_bleu(text, others)` (13a tokens, `exp`
    smoothing, effective order, closest reference length), divided by 100; higher means less diverse.

    Each n-gram's largest and second-largest count over the texts give the best count among the other texts in
    one lookup, so the cost grows with the number of n-grams rather than with the square of the number of texts.
    """
    if len(texts) < 2:
        raise EvaluationError(f"Self-BLEU compares each output with the others: it needs at least 2, got {len(texts)}")
    counted = [extract_all_word_ngrams(" ".join(_words(t)), 1, BLEU_MAX_ORDER) for t in texts]
    best: dict[tuple[str, ...], list[int]] = {}  # n-gram -> [largest count, its text, second-largest count]
    for index, (ngrams, _) in enumerate(counted):
        for ngram, count in ngrams.items():
            top = best.get(ngram)
            if top is None:
                best[ngram] = [count, index, 0]
            elif count > top[0]:
                best[ngram] = [count, index, top[0]]
            elif count > top[2]:
                top[2] = count
    sorted_lengths = sorted(length for _, length in counted)
    scores = []
    for index, (ngrams, length) in enumerate(counted):
        correct = [0] * BLEU_MAX_ORDER
        total = [0] * BLEU_MAX_ORDER
        for ngram, count in ngrams.items():
            largest, holder, second = best[ngram]
            total[len(ngram) - 1] += count
            correct[len(ngram) - 1] += min(count, second if holder == index else largest)
        score = BLEU.compute_bleu(
            correct,
            total,
            length,
            _closest_other_length(sorted_lengths, length),
            smooth_method="exp",
            effective_order=True,
            max_ngram_order=BLEU_MAX_ORDER,
        )
        scores.append(score.score / 100)
    return math.fsum(scores) / len(scores)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: distinct word n-grams over all texts divided by all word n-grams (0 when there are none)."""
    if n < 1:
        raise EvaluationError(f"distinct-n needs n >= 1, got {n}")
    ngrams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        words = _words(text)
        ngrams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(ngrams.values())
    return len(ngrams) / total if total else 0.0


def unigram_entropy(tokens: Sequence[Hashable]) -> float:
    """Entropy in nats of the token frequencies within one sample (0 for an empty one). Reported next to
    generation perplexity: repetitive, low-entropy samples get deceptively good perplexities."""
    if not tokens:
        return 0.0
    total = len(tokens)
    return -math.fsum(c / total * math.log(c / total) for c in Counter(tokens).values())
