"""The code reward and its sandbox: each test's result, a test that hangs, eats memory or crashes the child fails
alone (the tests after it still run, the parent lives on, nothing hangs), and no code runs without
`trust_remote_code`. Tests run with a short time a test to stay fast."""

from __future__ import annotations

import os
import time

import pytest

from dlm.rewards import RewardError, RewardSettingError, WeightedRewards, build_rewards
from dlm.rewards.code_tests import code_tests, split_tests
from dlm.rewards.sandbox import Limits, Program, passed_tests

FAST = Limits(seconds=0.5, memory_mib=512, start_seconds=5.0)
ADD_ONE = "def f(x):\n    return x + 1\n"


def block(code: str) -> str:
    return f"Here it is:\n```python\n{code}```\nDone."


def score(code: str, tests, **limits) -> float:
    return code_tests(["p"], [block(code)], tests=[tests], seconds_per_test=0.5, **limits)[0]


def test_the_reward_is_the_share_of_tests_passed():
    assert score(ADD_ONE, ["assert f(1) == 2", "assert f(2) == 4", "assert f(3) == 4"]) == pytest.approx(2 / 3)
    assert code_tests(["p"], ["no code block"], tests=[["assert True"]])[0] == 0.0
    assert score("def f(x) return", ["assert True"]) == 0.0  # does not compile
    assert score("raise SystemExit(0)\n", ["assert True"]) == 0.0  # leaves before its tests


def test_test_texts_are_split_into_tests():
    asserts = "import math\nassert f(1) == 2\nassert f(math.floor(2.5)) == 3\nassert f(0) == 7\n"
    assert split_tests(asserts) == (
        "import math",
        ("assert f(1) == 2", "assert f(math.floor(2.5)) == 3", "assert f(0) == 7"),
    )
    assert score(ADD_ONE, asserts) == pytest.approx(2 / 3)
    functions = (
        "from solution import f\n\ndef test_one():\n    assert f(1) == 2\n\ndef test_two():\n    assert f(1) == 3\n"
    )
    setup, tests = split_tests(functions)
    assert tests == ("test_one()", "test_two()") and "solution" not in setup
    assert score(ADD_ONE, functions) == 0.5
    assert split_tests("print(f(1))") == ("", ("print(f(1))",))
    with pytest.raises(ValueError, match="only define things"):
        split_tests("import math\ndef check(candidate):\n    assert candidate(1) == 2\n")
    with pytest.raises(ValueError, match="not Python"):
        split_tests("assert (")


def test_a_hanging_test_fails_alone_in_its_time():
    started = time.monotonic()
    tests = ["assert f(1) == 2", "while True:\n    pass", "assert f(2) == 3"]
    assert passed_tests(Program(ADD_ONE, "", tuple(tests)), FAST) == [True, False, True]
    assert time.monotonic() - started < 4


def test_a_test_deaf_to_its_timer_is_ended_by_the_parent():
    """The code ignores the timer's signal: the parent ends the child at its deadline and goes on after it."""
    deaf = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n" + ADD_ONE
    limits = Limits(seconds=0.3, memory_mib=512, start_seconds=0.7)
    started = time.monotonic()
    tests = ("while True:\n    pass", "assert f(2) == 3")
    assert passed_tests(Program(deaf, "", tests), limits) == [False, True]
    assert time.monotonic() - started < 5


def test_a_memory_bomb_fails_its_test():
    tests = ["assert f(1) == 2", "x = bytearray(4 * 1024 ** 3)", "x = [0] * 10 ** 10", "assert f(5) == 6"]
    assert passed_tests(Program(ADD_ONE, "", tuple(tests)), FAST) == [True, False, False, True]


def test_a_crash_fails_its_test_and_the_parent_lives_on():
    parent = os.getpid()
    tests = (
        "assert f(1) == 2",
        "import os\nos._exit(3)",
        "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
        "assert f(9) == 10",
    )
    assert passed_tests(Program(ADD_ONE, "", tests), FAST) == [True, False, False, True]
    assert os.getpid() == parent


def test_code_that_crashes_before_its_tests_fails_them_all_at_once():
    started = time.monotonic()
    program = Program("import os\nos._exit(1)\n", "", ("assert True",) * 20)
    assert passed_tests(program, FAST) == [False] * 20
    assert time.monotonic() - started < 3


def test_what_the_code_prints_is_not_read_as_results():
    noisy = "import sys\nprint('0 1')\nsys.stderr.write('0 1')\n" + ADD_ONE
    assert passed_tests(Program(noisy, "", ("print('ready')\nassert f(1) == 0",)), FAST) == [False]


def test_the_code_runs_in_an_empty_folder():
    assert passed_tests(Program("import os\n", "", ("assert os.listdir('.') == []",)), FAST) == [True]


def test_code_is_refused_without_trust_remote_code():
    with pytest.raises(RewardSettingError, match="'code_tests' runs the model's code; it needs trust_remote_code"):
        build_rewards(["answer_match", "code_tests"], None, trust_remote_code=False)
    with pytest.raises(RewardSettingError, match="trust_remote_code"):
        WeightedRewards(("code_tests",), (1.0,))


def test_code_tests_through_build_rewards():
    rewards = build_rewards(["code_tests"], None, trust_remote_code=True, code_seconds_per_test=0.5)
    completions = [block(ADD_ONE), block("def f(x):\n    return x\n"), "no code"]
    tests = ["assert f(1) == 2", "assert f(0) == 1"]
    assert rewards(["p"] * 3, completions, {"test_list": [tests] * 3}).flatten().tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(RewardError, match=r"'code_tests' failed on row 1 .*the row has no tests"):
        rewards(["p"] * 2, completions[:2], {"tests": [tests, []]})
    with pytest.raises(RewardError, match=r"needs the dataset column 'tests' or 'test_list' or 'test_cases'"):
        rewards(["p"], completions[:1], {"answer": ["1"]})
    with pytest.raises(RewardSettingError, match="code_seconds_per_test"):
        build_rewards(["code_tests"], None, trust_remote_code=True, code_seconds_per_test=0)
