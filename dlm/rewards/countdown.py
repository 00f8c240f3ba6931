"""The Countdown reward (d1's scores): the equation in the last answer tag must use the row's numbers, each
exactly once, with + - * / and parentheses, and come to its `target`. Evaluated exactly, from its syntax tree,
never with `eval`: anything else in it (names, calls, powers, floor division, decimals) makes it invalid."""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from dlm.rewards.answers import last_answer_tag
from dlm.rewards.rows import first_present

CORRECT = 1.0
FORMAT_SCORE = 0.1  # an equation was given, but it is invalid or misses the target
MAX_EQUATION_CHARS = 1000  # longer is no equation of a few numbers; the parser is not asked
EQUATION_CHARS = re.compile(r"[\d+\-*/().\s]*")  # d1's alphabet: digits, operators, parentheses, spaces
OPERATORS = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__}


class InvalidEquation(ValueError):
    """Not an equation of integers with + - * / and parentheses."""


def evaluate(node: ast.AST, used: list[int]) -> Fraction:
    """The exact value of an equation's syntax tree; appends each number it uses to `used`."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = evaluate(node.operand, used)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = evaluate(node.left, used), evaluate(node.right, used)
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise InvalidEquation("division by zero")
            return left / right
        operator = OPERATORS.get(type(node.op))
        if operator is not None:
            return operator(left, right)
    raise InvalidEquation(f"{type(node).__name__} is not allowed")


def equation_value(equation: str) -> tuple[Fraction, list[int]]:
    """The value of an equation and the numbers it uses; InvalidEquation when it is not one."""
    if len(equation) > MAX_EQUATION_CHARS or not EQUATION_CHARS.fullmatch(equation):
        raise InvalidEquation("characters other than digits, + - * / ( ) and spaces")
    try:
        tree = ast.parse(equation.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise InvalidEquation(str(error)) from error
    used: list[int] = []
    return evaluate(tree.body, used), used


def given_numbers(value: Any) -> list[int]:
    """The row's numbers: a list of integers, or its JSON text."""
    numbers = json.loads(value) if isinstance(value, str) else list(value)
    if not all(isinstance(number, int) or float(number).is_integer() for number in numbers):
        raise ValueError(f"the row's numbers {value!r} are not integers")
    return [int(number) for number in numbers]


def countdown(completion: str, row: Mapping[str, Any]) -> float:
    """1 for an equation in the answer tag that uses each of the row's `numbers` (or `nums`) once and equals its
    `target`; 0.1 for any other text in the tag; 0 when there is no answer tag."""
    numbers = given_numbers(first_present(row, "numbers", "nums"))
    target = Fraction(int(row["target"]))
    equation = last_answer_tag(completion)
    if equation is None:
        return 0.0
    try:
        value, used = equation_value(equation.strip())
    except InvalidEquation:
        return FORMAT_SCORE
    return CORRECT if Counter(used) == Counter(numbers) and value == target else FORMAT_SCORE
