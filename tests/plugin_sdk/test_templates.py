import json

import pytest

from plugin_sdk.chat import build_messages, check_answers, infer_format, row_text
from plugin_sdk.errors import DatasetError, TemplateError
from plugin_sdk.templates import render_template, template_environment

ROW = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}


def test_render_plain_and_trailing_newline():
    assert render_template("Q: {{ instruction }}\n{{ input }}\n", ROW, name="t") == "Q: Add the numbers.\n2 and 3\n"


def test_no_html_escaping():
    assert render_template("{{ x }}", {"x": "<b>&</b>"}, name="t") == "<b>&</b>"


def test_environment_settings():
    env = template_environment()
    assert env.autoescape is False
    with pytest.raises(Exception, match="'missing' is undefined"):
        env.from_string("{{ missing }}").render()


def test_undefined_variable_names_it_and_the_columns():
    with pytest.raises(TemplateError) as info:
        render_template("{{ instruction }} {{ question }}", ROW, name="input_template")
    assert str(info.value) == (
        "template 'input_template' uses the undefined variable 'question'; "
        "available columns: instruction, input, output"
    )


def test_undefined_attribute_is_reported():
    with pytest.raises(TemplateError, match=r"uses an undefined value .*has no attribute 'b'.*available columns: a"):
        render_template("{{ a.b }}", {"a": {}}, name="t")


def test_syntax_error_names_template_and_line():
    with pytest.raises(TemplateError) as info:
        render_template("line one\n{% if x %}\n{{ x + }}\n{% endif %}", {"x": 1}, name="output_template")
    assert str(info.value).startswith("template 'output_template' has a syntax error at line 3:")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ instruction.__class__.__base__.__subclasses__() }}",
        "{{ [].append(1) }}",
        "{{ {}.update(a=1) }}",
    ],
)
def test_sandbox_escape_is_refused(source):
    with pytest.raises(TemplateError) as info:
        render_template(source, ROW, name="instruction_template")
    message = str(info.value)
    assert message.startswith("template 'instruction_template' was refused: access to attribute")
    assert "unsafe" in message and "Templates may only read the row's columns." in message


def test_other_runtime_errors_become_template_errors():
    with pytest.raises(TemplateError, match=r"template 't' failed: TypeError"):
        render_template("{{ a + 1 }}", {"a": "x"}, name="t")
    with pytest.raises(TemplateError, match=r"template 't' failed: OverflowError"):
        render_template("{{ range(10**9) | list | length }}", {}, name="t")


# ------------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["messages"], "chat"),
        (["conversations", "id"], "chat"),
        (["instruction", "input", "output"], "alpaca"),
        (["instruction", "output"], "alpaca"),
        (["prompt", "completion"], "prompt_completion"),
        (["prompt", "response"], "prompt_response"),
        (["text", "meta"], "text"),
        (["messages", "text"], "chat"),
    ],
)
def test_infer_format(columns, expected):
    assert infer_format(columns) == expected


def test_infer_format_unknown_lists_columns():
    with pytest.raises(DatasetError, match=r"from its columns \(question, answer\)\. Expected one of: messages"):
        infer_format(["question", "answer"])


def test_infer_format_chat_column():
    assert infer_format(["dialog"], chat_column="dialog") == "chat"
    with pytest.raises(DatasetError, match="chat column 'dialog' is not in the dataset; available columns: a"):
        infer_format(["a"], chat_column="dialog")


def test_alpaca_without_templates():
    assert build_messages(ROW) == [
        {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert build_messages({"instruction": "Hi", "input": "", "output": "Hello"})[0] == {"role": "user", "content": "Hi"}
    assert build_messages({"instruction": "Hi", "input": None, "output": "Hello"})[0]["content"] == "Hi"


def test_prompt_completion_and_prompt_response():
    expected = [{"role": "user", "content": "P"}, {"role": "assistant", "content": "C"}]
    assert build_messages({"prompt": "P", "completion": "C"}) == expected
    assert build_messages({"prompt": "P", "response": "C"}) == expected


def test_conversational_prompt_completion():
    row = {"prompt": [{"role": "user", "content": "P"}], "completion": [{"role": "assistant", "content": "C"}]}
    assert build_messages(row) == [{"role": "user", "content": "P"}, {"role": "assistant", "content": "C"}]


def test_chat_messages_and_sharegpt():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert build_messages({"messages": messages}) == messages
    sharegpt = [{"from": "human", "value": "U"}, {"from": "gpt", "value": "A"}]
    assert build_messages({"conversations": sharegpt}) == [
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert build_messages({"messages": json.dumps(messages)}) == messages  # CSV stores the list as JSON text


def test_chat_column_wins_over_templates():
    row = {"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}
    out = build_messages(row, instruction_template="{{ instruction }}", input_template="{{ input }}")
    assert out == row["messages"]


def test_explicit_chat_column():
    row = {"dialog": [{"role": "user", "content": "U"}], "text": "t"}
    assert build_messages(row, chat_column="dialog") == [{"role": "user", "content": "U"}]
    with pytest.raises(DatasetError, match="chat column 'chat' is not in the dataset; available columns: dialog, text"):
        build_messages(row, chat_column="chat")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "must hold a non-empty list of messages"),
        ("not json", "holds text that is not a JSON list of messages"),
        ('[{"role": "user", "content": "x\\ud800"}]', r"column 'messages': .*\\ud800 is a lone surrogate escape"),
        ('[{"role": "user", "content": "x", "n": ' + "1" * 4400 + "}]", "holds text that is not a JSON list"),
        (["hi"], "message 0 must be an object"),
        ([{"speaker": "user", "text": "hi"}], "message 0 needs 'role' and 'content'.*it has speaker, text"),
        ([{"role": "narrator", "content": "x"}], "message 0 has unknown role 'narrator'; expected one of system"),
        ([{"role": "user", "content": 5}], "message 0 content must be text, got int"),
    ],
)
def test_bad_chat_rows(value, message):
    with pytest.raises(DatasetError, match=message):
        build_messages({"messages": value})


def test_templates_give_system_user_assistant():
    out = build_messages(
        ROW,
        instruction_template="Instruction: {{ instruction }}",
        input_template="{{ input }}",
        output_template="{{ output }}",
    )
    assert out == [
        {"role": "system", "content": "Instruction: Add the numbers."},
        {"role": "user", "content": "2 and 3"},
        {"role": "assistant", "content": "5"},
    ]


def test_instruction_joins_user_turn_when_input_is_empty():
    row = {"instruction": "Say hi.", "input": "", "output": "hi"}
    templates = {"instruction_template": "{{ instruction }}", "input_template": "{{ input }}"}
    out = build_messages(row, **templates, output_template="{{ output }}")
    assert out == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]


def test_system_message_with_templates():
    out = build_messages(
        ROW,
        instruction_template="{{ instruction }}",
        input_template="{{ input }}",
        output_template="{{ output }}",
        system_message="Be brief.",
    )
    assert out == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]


def test_system_message_added_to_inferred_and_not_doubled():
    assert build_messages({"prompt": "P", "completion": "C"}, system_message="S")[0] == {
        "role": "system",
        "content": "S",
    }
    row = {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "U"}]}
    assert build_messages(row, system_message="S")[0] == {"role": "system", "content": "own"}


def test_template_undefined_column_lists_available():
    with pytest.raises(TemplateError, match=r"undefined variable 'question'; available columns: prompt, completion"):
        build_messages({"prompt": "P", "completion": "C"}, input_template="{{ question }}")


def test_templates_that_render_empty_user_turn():
    with pytest.raises(TemplateError, match="rendered empty text"):
        build_messages({"a": ""}, input_template="{{ a }}", output_template="x")


def test_text_rows_are_not_chat():
    with pytest.raises(DatasetError, match="only a 'text' column, which is pre-training data"):
        build_messages({"text": "hello"})
    assert row_text({"text": "hello"}) == "hello"


def test_row_text_errors():
    with pytest.raises(DatasetError, match="pre-training needs a 'text' column; available columns: body"):
        row_text({"body": "x"})
    with pytest.raises(DatasetError, match="must hold text, got int"):
        row_text({"text": 3})
    assert row_text({"body": "x"}, text_column="body") == "x"


def test_unknown_row_format_lists_columns():
    with pytest.raises(DatasetError, match=r"\(question, answer\)"):
        build_messages({"question": "q", "answer": "a"})


def test_empty_answers_are_counted_and_a_set_of_only_empty_ones_refused():
    def chat(answer):
        return [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]

    logged = []
    check_answers([chat("a"), chat(" \n"), chat("")], "training", logged.append)
    assert logged == ["2 of 3 training examples have an empty answer"]
    with pytest.raises(DatasetError, match="every one of the 2 validation examples has an empty answer"):
        check_answers([chat(""), chat("\t")], "validation", logged.append)
    check_answers([chat("a")], "training", logged.append)
    assert len(logged) == 1
