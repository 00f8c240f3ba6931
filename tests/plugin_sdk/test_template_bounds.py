"""A template's render is bounded in time and size; going past the budget fails naming the template's field."""

from __future__ import annotations

import time

import pytest

from plugin_sdk import templates
from plugin_sdk.chat import build_messages
from plugin_sdk.errors import TemplateError
from plugin_sdk.templates import render_template

ROW = {"instruction": "say hi", "input": "", "output": "hi"}


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
        "{% for a in instruction * 1000 %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "{{ [1] | slice(100000) | list | map('list') | list | length }}"
        "{% for i in range(100000) %}{{ range(100000) | slice(1000) | list | length }}{% endfor %}",
    ],
)
def test_loops_stop_at_the_time_budget(monkeypatch, source) -> None:
    monkeypatch.setattr(templates, "RENDER_SECONDS", 0.3)
    start = time.process_time()  # the work done, not the wall time a busy machine stretches
    with pytest.raises(TemplateError, match=r"template 'instruction_template' ran longer than 0.3 s"):
        render_template(source, ROW, name="instruction_template")
    assert time.process_time() - start < 3


@pytest.mark.parametrize(
    "source",
    [
        "{{ instruction * 300000000 }}",
        "{{ 300000000 * instruction }}",
        "{{ [instruction] * 300000000 }}",
        "{{ instruction.center(10**9) }}",
        "{{ instruction.ljust(10**9) }}",
        "{{ instruction | center(10**9) }}",
        "{{ instruction | indent(10**9) }}",
        "{{ instruction | replace('', instruction * 100000) }}",
        "{{ instruction.replace('', instruction * 100000) }}",
        "{{ (instruction * 100000) | replace('', instruction * 100000) }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '%.999999999f' | format(1.5) }}",
        "{{ '{:>999999999}'.format(instruction) }}",
        "{{ (instruction * 200000).join(range(1000) | map('string') | list) }}",
        "{{ range(1000) | map('string') | list | join(instruction * 100000) }}",
        "{{ [1] | batch(10**9, 'x') | list }}",
        "{{ 10 ** (10 ** 9) }}",
        "{% set ns = namespace(s=instruction) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s=instruction) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% for i in range(100000) %}{{ instruction * 1000 }}{% endfor %}",
    ],
)
def test_large_strings_are_refused_before_they_are_built(source) -> None:
    start = time.process_time()
    with pytest.raises(TemplateError, match=r"template 'instruction_template' .* over its budget of \d+"):
        render_template(source, ROW, name="instruction_template")
    assert time.process_time() - start < 3


def test_the_budget_grows_with_the_row_and_ordinary_templates_are_unchanged() -> None:
    big = "word " * 400_000  # 2 MB, past the fixed budget alone
    row = {"instruction": big, "input": "x", "output": "y"}
    assert render_template("{{ instruction }}{{ instruction }}", row, name="t") == big + big
    assert render_template("{{ instruction | upper }}: {{ input * 3 }}", ROW, name="t") == "SAY HI: "
    assert render_template("{{ '%5s|%-3d' % (output, 7) }} {{ '{:>4}'.format(output) }}", ROW, name="t") == (
        "   hi|7     hi"
    )
    assert render_template("{{ ', '.join(['a', 'b']) }} {{ ['c', 'd'] | join('-') }}", ROW, name="t") == "a, b c-d"
    messages = build_messages(
        ROW, instruction_template="{{ instruction }}", input_template="{{ input }}", output_template="{{ output }}"
    )
    assert messages[-1] == {"role": "assistant", "content": "hi"}


def test_the_budget_error_names_the_field_through_the_chat_path(monkeypatch) -> None:
    monkeypatch.setattr(templates, "RENDER_SECONDS", 0.2)
    with pytest.raises(TemplateError, match="template 'output_template' ran longer"):
        build_messages(
            ROW,
            instruction_template="{{ instruction }}",
            output_template="{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
