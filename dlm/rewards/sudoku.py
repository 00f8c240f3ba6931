"""The Sudoku reward (d1's): the fraction of the puzzle's empty cells that the answer fills as the row's
`solution` does. The answer is the digits of the last answer tag, read left to right, top to bottom, padded with
empty cells or cut to the grid's size. Any square grid: d1's are 4x4 (16 characters)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dlm.rewards.answers import last_answer_tag

EMPTY_CELLS = "0."  # how puzzles write an empty cell


def sudoku(completion: str, row: Mapping[str, Any]) -> float:
    """The fraction of the row's `puzzle`'s empty cells filled as in its `solution`; 0 without an answer tag,
    with no digit in it, or for a puzzle with no empty cell (as d1 scores them)."""
    puzzle, solution = row["puzzle"], row["solution"]
    if not isinstance(puzzle, str) or not isinstance(solution, str) or len(puzzle) != len(solution):
        raise ValueError(f"puzzle {puzzle!r} and solution {solution!r} are not strings of one length")
    tag = last_answer_tag(completion)
    digits = "" if tag is None else "".join(char for char in tag.strip() if char.isdigit())
    empty = [index for index, cell in enumerate(puzzle) if cell in EMPTY_CELLS]
    if not digits or not empty:
        return 0.0
    filled = digits[: len(puzzle)].ljust(len(puzzle), "0")
    return sum(filled[index] == solution[index] for index in empty) / len(empty)
