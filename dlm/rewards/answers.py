"""Final answers of math completions: where the answer is (`\\boxed{}`, `#### x`, an `<answer>` tag, the last
number), how two answers are written the same way, and when they are equal (as text, or as numbers)."""

from __future__ import annotations

import re
from fractions import Fraction

BOXED = "\\boxed"
BOXED_WORD = re.compile(r" +([^\s${}]+)")
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NUMBER = re.compile(r"(?:(?<![\w)])[-+])?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:/\d+)?")
PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)")
FRACTION = re.compile(r"([-+]?)\\frac\{([-+]?\d+(?:\.\d+)?)\}\{(\d+(?:\.\d+)?)\}")
SLASH_FRACTION = re.compile(r"([-+]?\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)")
THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
TEXT_MACRO = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
SHORT_FRACTION = re.compile(r"\\frac(\d)(\d)")
SHORT_ROOT = re.compile(r"\\sqrt(\w)")
# Spacing, sizing and the degree sign: they do not change what an answer says.
NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "^{\\circ}", "^\\circ", "\\%", "%", "\\$", "$")


def braced(text: str, start: int) -> str | None:
    """The content of the balanced `{...}` that opens at `text[start]` (spaces before it skipped); None when
    there is no brace there or it never closes."""
    while start < len(text) and text[start] == " ":
        start += 1
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start + 1 : index]
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}` (nested braces kept), or of `\\boxed x` (up to a space or
    `$`); None when there is none."""
    start = text.rfind(BOXED)
    while start >= 0:
        content = braced(text, start + len(BOXED))
        if content is None:
            unbraced = BOXED_WORD.match(text, start + len(BOXED))
            content = unbraced.group(1) if unbraced else None
        if content is not None:
            return content
        start = text.rfind(BOXED, 0, start)
    return None


def after_hashes(text: str) -> str | None:
    """What follows the last `####` on its line (GSM8K's way of writing the final answer)."""
    if "####" not in text:
        return None
    return text.rpartition("####")[2].strip().split("\n", 1)[0]


def last_answer_tag(text: str) -> str | None:
    """The content of the last complete `<answer>...</answer>`."""
    found = ANSWER_TAG.findall(text)
    return found[-1] if found else None


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return found[-1] if found else None


def completion_answer(text: str) -> str | None:
    """A completion's final answer: the last `\\boxed{}`, else after `####`, else the `<answer>` tag, else the
    last number; None when the completion has none of them."""
    for extract in (last_boxed, after_hashes, last_answer_tag, last_number):
        found = extract(text)
        if found is not None and found.strip():
            return found
    return None


def reference_answer(answer: object) -> str:
    """The answer a dataset row gives: its last `\\boxed{}` (a MATH solution), else what follows `####` (GSM8K's
    raw answers), else the whole value."""
    if answer is None:
        raise ValueError("the row has no answer (None)")
    text = str(answer)
    found = last_boxed(text)
    if found is None:
        found = after_hashes(text)
    if found is None:
        found = text
    if not normalise(found):
        raise ValueError(f"the row's answer {text!r} is empty")
    return found


def normalise(answer: str) -> str:
    """One spelling per answer: no spaces, dollar signs, LaTeX spacing or sizing, `\\text{}` unwrapped,
    `\\dfrac`/`\\tfrac` as `\\frac`, `\\frac12` and `\\sqrt2` braced, no thousands commas, no trailing full
    stop, `x = 5` as `5`."""
    text = TEXT_MACRO.sub(r"\1", answer)
    for noise in NOISE:
        text = text.replace(noise, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = SHORT_FRACTION.sub(r"\\frac{\1}{\2}", "".join(text.split()))
    text = SHORT_ROOT.sub(r"\\sqrt{\1}", text)
    text = THOUSANDS_COMMA.sub("", text).rstrip(".")
    left, equals, right = text.partition("=")
    if equals and len(left) <= 2 and "=" not in right:
        text = right
    return text


def as_number(answer: str) -> Fraction | None:
    """The exact value of a normalised answer written as an integer, a decimal, `a/b` or `\\frac{a}{b}`."""
    if PLAIN_NUMBER.fullmatch(answer):
        return Fraction(answer)
    for pattern, sign, numerator, denominator in ((FRACTION, 1, 2, 3), (SLASH_FRACTION, None, 1, 2)):
        match = pattern.fullmatch(answer)
        if match and Fraction(match.group(denominator)) != 0:
            value = Fraction(match.group(numerator)) / Fraction(match.group(denominator))
            return -value if sign and match.group(sign) == "-" else value
    return None


def answers_equal(candidate: str, reference: str) -> bool:
    """The same text once normalised, or the same number. A numeric reference is also met by the last number of
    a candidate that is not a number itself ("42 apples", "The answer is 42")."""
    ours, theirs = normalise(candidate), normalise(reference)
    if ours == theirs:
        return True
    expected = as_number(theirs)
    if expected is None:
        return False
    value = as_number(ours)
    if value is None:
        number = last_number(candidate)
        value = None if number is None else as_number(normalise(number))
    return value == expected
