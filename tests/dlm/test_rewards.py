"""dlm.rewards: the built-in rewards against d1's (and dllm's) values on the table of
tests/fixtures/rewards/reference_values.json, answer matching on GSM8K and MATH style answers, and the checks of
WeightedRewards and build_rewards (names, weights, columns, failing rewards, a user's reward file)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dlm.errors import DlmError
from dlm.rewards import REWARD_NAMES, RewardError, RewardSettingError, WeightedRewards, build_rewards
from dlm.rewards.answers import completion_answer, last_boxed, reference_answer
from dlm.rewards.registry import BUILTIN_REWARDS

REFERENCE = json.loads((Path(__file__).parents[1] / "fixtures/rewards/reference_values.json").read_text("utf-8"))
# Our Countdown equations may use + - * / only, as the game's rules (and d1's prompt) say; d1's character check
# lets `**` and `//` through to Python's eval.
COUNTDOWN_DEVIATIONS = {"power": 0.1, "floor_division": 0.1}


def one(name: str, completion: str, **row) -> float:
    """A built-in reward's value for one completion."""
    return BUILTIN_REWARDS[name].function(["prompt"], [completion], **{k: [v] for k, v in row.items()})[0]


def ids(cases: list[dict]) -> list[str]:
    return [case["id"] for case in cases]


@pytest.mark.parametrize("case", REFERENCE["format"], ids=ids(REFERENCE["format"]))
def test_format_rewards_give_the_references_values(case):
    # strict and soft: dllm's values (d1's patterns, read across lines); the same as d1's where no tag spans lines
    assert one("strict_format", case["completion"]) == case["dllm_strict_format"]
    assert one("soft_format", case["completion"]) == case["dllm_soft_format"]
    assert one("tag_count", case["completion"]) == pytest.approx(case["d1_tag_count"], abs=1e-12)
    assert one("integer_answer", case["completion"]) == case["d1_integer_answer"]


def test_format_table_covers_both_readings_of_d1s_patterns():
    """The fixture holds cases where d1's one-line patterns and dllm's agree and where they differ."""
    rows = REFERENCE["format"]
    agree = [r for r in rows if r["d1_strict_format"] == r["dllm_strict_format"] == 0.5]
    differ = [r for r in rows if r["d1_soft_format"] != r["dllm_soft_format"]]
    assert agree and differ
    assert {r["id"] for r in agree} >= {"layout_one_line", "layout_two_final_newlines"}


@pytest.mark.parametrize("case", REFERENCE["sudoku"], ids=ids(REFERENCE["sudoku"]))
def test_sudoku_gives_d1s_values(case):
    assert one("sudoku", case["completion"], puzzle=case["puzzle"], solution=case["solution"]) == case["d1_sudoku"]


@pytest.mark.parametrize("case", REFERENCE["countdown"], ids=ids(REFERENCE["countdown"]))
def test_countdown_gives_d1s_values(case):
    expected = COUNTDOWN_DEVIATIONS.get(case["id"], case["d1_countdown"])
    assert one("countdown", case["completion"], numbers=case["numbers"], target=case["target"]) == expected


def test_countdown_reads_nums_and_is_exact():
    assert one("countdown", "<answer>8 / (3 - 8/3)</answer>", nums=[3, 8, 3, 8], target=24) == 1.0
    assert one("countdown", "<answer>(1+2)*3</answer>", nums="[1, 2, 3]", target="9") == 1.0
    huge = "<answer>" + "(" * 300 + "1+2" + ")" * 300 + "*3</answer>"
    assert one("countdown", huge, numbers=[1, 2, 3], target=9) == 0.1  # too deep for the parser: invalid
    assert one("countdown", "<answer>__import__('os')</answer>", numbers=[1], target=1) == 0.1


@pytest.mark.parametrize("case", REFERENCE["math"], ids=ids(REFERENCE["math"]))
def test_answer_rewards_accept_what_d1_accepts(case):
    row = {"answer": case["answer"]}
    if case["d1_gsm8k_correct"] == 2.0:
        assert one("answer_match", case["completion"], **row) == 1.0
    if case["d1_math_correct"] == 2.0:
        assert one("boxed_match", case["completion"], **row) == 1.0
        assert one("answer_match", case["completion"], **row) == 1.0
    if case["id"] == "math_boxed_wrong":
        assert one("boxed_match", case["completion"], **row) == one("answer_match", case["completion"], **row) == 0


GSM8K_SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72.\n#### 72"
ANSWER_MATCH_CASES = [
    ("She sold 72 clips.\n#### 72", GSM8K_SOLUTION, 1.0),
    ("48 + 24 = 72 clips", GSM8K_SOLUTION, 1.0),
    ("48 + 24 = 71 clips", GSM8K_SOLUTION, 0.0),
    ("The answer is $1,000.", "1000", 1.0),
    ("Total: 1,234,567 dollars", "1234567", 1.0),
    ("<reasoning>\n3 of 4\n</reasoning>\n<answer>\n0.750\n</answer>\n", "3/4", 1.0),
    ("so \\boxed{3/4}", "0.75", 1.0),
    ("\\boxed{-\\frac{1}{2}}", "-0.5", 1.0),
    ("\\boxed{\\frac12}", "0.5", 1.0),
    ("\\boxed{2/4}", "1/2", 1.0),
    ("<answer>42 apples</answer>", "42", 1.0),
    ("<answer>\\$42.</answer>", "42", 1.0),
    ("\\boxed{x = 5}", "5", 1.0),
    ("I first got 41, then \\boxed{42}", "41", 0.0),
    ("#### 18\nthen 19 more lines", "18", 1.0),
    ("no numbers here", "5", 0.0),
    ("\\boxed{\\frac{1}{2} and then 3", "3", 1.0),
    ("\\boxed{\\sqrt{2}}", "\\sqrt{2}", 1.0),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", 0.0),
    ("\\boxed{\\frac{\\sqrt3}{2}}", "\\frac{\\sqrt{3}}{2}", 1.0),
    ("<answer>4.2</answer>", "42", 0.0),
    ("\\boxed{(1, 2)}", "The point is $\\boxed{(1,2)}$.", 1.0),
    ("The answer: -7", "-7", 1.0),
    ("from 3-7 there are 5", "5", 1.0),
    ("The answer is 42", 42, 1.0),
    ("\\boxed{\\text{(B)}}", "(B)", 1.0),
    ("\\boxed{B}", "(C)", 0.0),
    # an answer that is not a number: the whole completion is it (the demo's sorted digits)
    ("0 8 9 9", "0 8 9 9", 1.0),
    (" 0 8  9 9\n", "0 8 9 9", 1.0),
    ("0 8 9 9 9", "0 8 9 9", 0.0),
    ("0 9 8 9", "0 8 9 9", 0.0),
]


@pytest.mark.parametrize(("completion", "answer", "expected"), ANSWER_MATCH_CASES)
def test_answer_match_on_gsm8k_and_math_answers(completion, answer, expected):
    assert one("answer_match", completion, answer=answer) == expected


def test_boxed_match_reads_the_box_only():
    assert one("boxed_match", "so \\boxed{\\dfrac{3}{4}}", answer="0.75") == 1.0
    assert one("boxed_match", "<answer>0.75</answer>", answer="0.75") == 0.0
    assert one("boxed_match", "#### 72", answer=GSM8K_SOLUTION) == 0.0


def test_extraction():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{a}{b}} c") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{1} and \\boxed{2") == "1"  # the last complete one
    assert last_boxed("no box") is None
    assert last_boxed("so $\\boxed 5$.") == "5"
    assert last_boxed("\\boxed{") is None
    assert completion_answer("<answer> 7 </answer> then 9") == " 7 "
    assert completion_answer("#### 5\n<answer>6</answer>") == "5"
    assert completion_answer("nothing") is None
    assert reference_answer("#### 1,000") == "1,000"
    assert reference_answer(12) == "12"


def test_an_empty_answer_fails_the_job_naming_the_row():
    rewards = build_rewards(["answer_match"], None, trust_remote_code=False)
    with pytest.raises(RewardError, match=r"'answer_match' failed on row 1 .*answer '' is empty") as raised:
        rewards(["p", "p"], ["1", "2"], {"answer": ["1", ""]})
    assert raised.value.row == 1 and raised.value.reward == "answer_match"
    with pytest.raises(RewardError, match=r"on row 0 .*no answer \(None\)"):
        rewards(["p"], ["1"], {"answer": [None]})


def test_weighted_rewards_give_one_column_per_reward():
    rewards = build_rewards(["answer_match", "strict_format"], [2.0, 0.5], trust_remote_code=False)
    completions = ["<reasoning>\nx\n</reasoning>\n<answer>\n4\n</answer>\n", "\\boxed{5}", "4"]
    values = rewards(["p"] * 3, completions, {"answer": ["4", "4", "4"], "other": [1, 2, 3]})
    assert values.dtype == torch.float32 and values.shape == (3, 2)
    assert values.tolist() == [[1.0, 0.5], [0.0, 0.0], [1.0, 0.0]]
    assert (values * rewards.weight_tensor()).sum(-1).tolist() == [2.25, 0.0, 2.0]
    assert rewards.names == ("answer_match", "strict_format") and rewards.weights == (2.0, 0.5)
    assert build_rewards(["sudoku"], None, trust_remote_code=False).weights == (1.0,)
    from_form = build_rewards("answer_match, tag_count", None, trust_remote_code=False)
    assert from_form.names == ("answer_match", "tag_count")
    assert WeightedRewards(("answer_match",), (1,))(["p"], ["3"], {"answer": ["3"]}).tolist() == [[1.0]]
    assert rewards([], [], {"answer": []}).shape == (0, 2)


def test_reward_names():
    assert REWARD_NAMES[0] == "answer_match" and set(REWARD_NAMES) == set(BUILTIN_REWARDS)
    with pytest.raises(RewardSettingError, match=r"unknown reward 'answer_mach' \(did you mean 'answer_match'\?\)"):
        build_rewards(["answer_mach"], None, trust_remote_code=False)
    with pytest.raises(RewardSettingError, match="known: answer_match, boxed_match") as raised:
        build_rewards(["zzz"], None, trust_remote_code=False)
    assert "did you mean" not in str(raised.value) and isinstance(raised.value, DlmError)
    with pytest.raises(RewardSettingError, match="no reward given"):
        build_rewards([" "], None, trust_remote_code=False)
    with pytest.raises(RewardSettingError, match="named twice"):
        build_rewards(["sudoku", "sudoku"], None, trust_remote_code=False)


@pytest.mark.parametrize("weights", [[1.0], [1.0, 2.0, 3.0], [1.0, math.nan], [math.inf, 1.0], [1.0, "2"]])
def test_bad_weights_are_refused(weights):
    with pytest.raises(RewardSettingError, match="reward_weights"):
        build_rewards(["answer_match", "tag_count"], weights, trust_remote_code=False)


def test_missing_columns_are_named():
    rewards = build_rewards(["tag_count", "countdown"], None, trust_remote_code=False)
    with pytest.raises(
        RewardError, match=r"'countdown' failed: needs the dataset column 'target'; the rows have: nums"
    ):
        rewards(["p"], ["x"], {"nums": [[1, 2]]})
    with pytest.raises(RewardError, match=r"'numbers' or 'nums'"):
        rewards(["p"], ["x"], {"target": [3]})
    with pytest.raises(RewardError, match=r"column 'target' has 2 values for 1 rows"):
        rewards(["p"], ["x"], {"target": [3, 4], "nums": [[1, 2]]})
    with pytest.raises(RewardError, match=r"2 prompts for 1 completions"):
        rewards(["p", "q"], ["x"], {"target": [3], "nums": [[1, 2]]})
    with pytest.raises(RewardError, match="'answer_match' failed: needs the dataset column 'answer'"):
        build_rewards(["answer_match"], None, trust_remote_code=False)(["p"], ["x"], {})


def write(tmp_path: Path, source: str) -> str:
    path = tmp_path / "my_rewards.py"
    path.write_text(source, encoding="utf-8")
    return str(path)


def test_a_reward_file_needs_trust_remote_code(tmp_path):
    path = write(tmp_path, "def reward(prompts, completions, **columns):\n    return [1.0] * len(completions)\n")
    with pytest.raises(RewardSettingError, match=r"my_rewards.py.*needs trust_remote_code set to true"):
        build_rewards(["answer_match"], None, trust_remote_code=False, reward_file=path)


def test_a_reward_files_function_joins_the_named_rewards(tmp_path):
    path = write(tmp_path, "def reward(prompts, completions, **columns):\n    return [len(c) for c in completions]\n")
    rewards = build_rewards(["answer_match"], None, trust_remote_code=True, reward_file=path)
    assert rewards.names == ("answer_match", "reward")
    assert rewards(["p", "p"], ["4", "hello"], {"answer": ["4", "4"]}).tolist() == [[1.0, 1.0], [0.0, 5.0]]
    alone = build_rewards(["reward"], [3.0], trust_remote_code=True, reward_file=path)
    assert alone.names == ("reward",) and alone.weights == (3.0,)


def test_a_reward_file_with_several_functions(tmp_path):
    source = (
        "__all__ = ['length', 'right']\n"
        "def length(prompts, completions, **kw):\n    return [float(len(c)) for c in completions]\n"
        "def right(prompts, completions, answer):\n    return [float(c == a) for c, a in zip(completions, answer)]\n"
        "def helper():\n    pass\n"
    )
    path = write(tmp_path, source)
    rewards = build_rewards([], None, trust_remote_code=True, reward_file=path)
    assert rewards.names == ("length", "right")
    # `right` takes no **columns: it gets its own columns only
    assert rewards(["p"], ["ab"], {"answer": ["ab"], "other": [0]}).tolist() == [[2.0, 1.0]]
    with pytest.raises(RewardError, match="'right' failed: needs the dataset column 'answer'"):
        rewards(["p"], ["ab"], {"other": [0]})
    with pytest.raises(RewardSettingError, match=r"unknown reward 'lenght' \(did you mean 'length'\?\).*right"):
        build_rewards(["lenght"], None, trust_remote_code=True, reward_file=path)


def test_reward_file_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "nowhere.py")
    with pytest.raises(RewardSettingError, match=r"reward_file: '.*nowhere.py' is not a file"):
        build_rewards([], None, trust_remote_code=True, reward_file=missing)
    no_function = write(tmp_path, "def score(prompts, completions):\n    return []\n")
    with pytest.raises(RewardSettingError, match=r"my_rewards.py' defines no function 'reward' \(or list"):
        build_rewards([], None, trust_remote_code=True, reward_file=no_function)
    broken = write(tmp_path, "import not_a_module_anywhere\n")
    with pytest.raises(RewardSettingError, match=r"my_rewards.py' failed to load: ModuleNotFoundError"):
        build_rewards([], None, trust_remote_code=True, reward_file=broken)
    clash = write(tmp_path, "__all__ = ['sudoku']\ndef sudoku(prompts, completions, **kw):\n    return []\n")
    with pytest.raises(RewardSettingError, match="sudoku is a built-in reward's name"):
        build_rewards([], None, trust_remote_code=True, reward_file=clash)
    one_argument = write(tmp_path, "def reward(completions):\n    return []\n")
    with pytest.raises(RewardSettingError, match=r"reward must take \(prompts, completions, \*\*columns\)"):
        build_rewards([], None, trust_remote_code=True, reward_file=one_argument)


FAILING_REWARDS = """
import math
def reward(prompts, completions, **kw):
    return [1.0 / (len(c) - 3) for c in completions]  # a 3-character completion divides by zero
def short(prompts, completions, **kw):
    return [1.0]
def nan(prompts, completions, **kw):
    return [1.0, math.nan]
def none(prompts, completions, **kw):
    return [None, 1.0]
def text(prompts, completions, **kw):
    return ["1", 1.0]
def huge(prompts, completions, **kw):
    return [1e39, 1.0]
__all__ = ["reward", "short", "nan", "none", "text", "huge"]
"""


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("reward", r"'reward' failed on row 1 \(completion 'abc'\): ZeroDivisionError: float division by zero"),
        ("short", r"'short' failed: returned 1 values for 2 completions"),
        ("nan", r"'nan' failed on row 1 \(completion 'abc'\): returned nan, not a finite number"),
        ("none", r"'none' failed on row 0 \(completion 'a long one'\): returned None, not a finite number"),
        ("text", r"'text' failed on row 0 .*returned '1', not a finite number"),
        ("huge", r"'huge' failed on row 0 .*returned 1e\+39, not a finite number"),
    ],
)
def test_a_failing_reward_stops_the_job_naming_the_row(tmp_path, name, message):
    rewards = build_rewards([name], None, trust_remote_code=True, reward_file=write(tmp_path, FAILING_REWARDS))
    with pytest.raises(RewardError, match=message):
        rewards(["p", "p"], ["a long one", "abc"], {})


def test_a_long_completion_is_cut_in_the_message():
    error = RewardError("r", 3, "bad", "x" * 500)
    assert "x" * 77 + "..." in str(error) and "x" * 78 not in str(error)
