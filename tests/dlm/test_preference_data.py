"""Preference data, read from rows (plugin_sdk.preferences) and encoded (dlm.preference_data): every accepted format read
from every file kind, skips and errors naming the row, and token ids checked against the chat template rendered
independently (ids and text) on the tiny presets' tokenizers."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
from transformers import AutoTokenizer

from dlm.preference_data import (
    CUT_PROMPT,
    CUT_RESPONSE,
    DROP_IDENTICAL_IDS,
    DROP_NO_ROOM,
    PreferenceDataError,
    encode_preferences,
)
from dlm.presets.tiny import ensure_preset
from plugin_sdk.data import load_dataset_splits, load_rows
from plugin_sdk.errors import DatasetError
from plugin_sdk.preferences import (
    SKIP_EMPTY_PROMPT,
    SKIP_EMPTY_RESPONSE,
    SKIP_IDENTICAL,
    SKIP_NO_SHARED_PROMPT,
    PreferenceExample,
    read_preferences,
)

Q, A, B = "What is 2 + 3?", "2 + 3 = 5.", "It is 7."
USER = [{"role": "user", "content": Q}]
CHAT_A = [*USER, {"role": "assistant", "content": A}]
CHAT_B = [*USER, {"role": "assistant", "content": B}]
SHAREGPT_USER = [{"from": "human", "value": Q}]

# The same pair in each accepted format.
SAME_PAIR = {
    "prompt text": {"prompt": Q, "chosen": A, "rejected": B},
    "prompt messages": {
        "prompt": USER,
        "chosen": [{"role": "assistant", "content": A}],
        "rejected": [{"role": "assistant", "content": B}],
    },
    "prompt text, whole conversations (UltraFeedback)": {"prompt": Q, "chosen": CHAT_A, "rejected": CHAT_B},
    "host format": {
        "conversations": SHAREGPT_USER,
        "chosen": {"from": "gpt", "value": A},
        "rejected": {"from": "gpt", "value": B},
    },
    "host format, text responses": {"conversations": SHAREGPT_USER, "chosen": A, "rejected": B},
    "messages column": {"messages": USER, "chosen": A, "rejected": B},
    "conversational": {"chosen": CHAT_A, "rejected": CHAT_B},
    "conversational as JSON text (CSV)": {"chosen": json.dumps(CHAT_A), "rejected": json.dumps(CHAT_B)},
    "Anthropic HH": {"chosen": f"\n\nHuman: {Q}\n\nAssistant: {A}", "rejected": f"\n\nHuman: {Q}\n\nAssistant: {B}"},
}


@pytest.mark.parametrize("row", SAME_PAIR.values(), ids=SAME_PAIR.keys())
def test_every_format_gives_the_same_pair(row):
    examples, skipped = read_preferences([row])
    assert examples == [PreferenceExample("1", USER, A, B)]
    assert skipped == Counter()


def test_multi_turn_prompts_keep_their_turns():
    hh = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: " + Q + "\n\nAssistant: "
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": Q},
    ]
    rows = [
        {"chosen": hh + A, "rejected": hh + B},
        {"chosen": [*history, {"role": "assistant", "content": A}], "rejected": [*history, CHAT_B[-1]]},
        {"conversations": [{"from": m["role"], "value": m["content"]} for m in history], "chosen": A, "rejected": B},
    ]
    for row, prompt in zip(rows, [history[1:], history, history], strict=True):
        assert read_preferences([row])[0] == [PreferenceExample("1", prompt, A, B)]
    # Answers that are themselves JSON stay text; only message-shaped JSON (CSV files) is read as messages.
    row = {"prompt": Q, "chosen": '{"answer": 5}', "rejected": '[{"answer": 7}]'}
    assert read_preferences([row])[0] == [PreferenceExample("1", USER, '{"answer": 5}', '[{"answer": 7}]')]
    # Responses that share their first words still split at the last shared "Assistant:" turn.
    examples, _ = read_preferences([{"chosen": hh + "The answer is 5.", "rejected": hh + "The answer is 7."}])
    assert (examples[0].chosen, examples[0].rejected) == ("The answer is 5.", "The answer is 7.")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_files_of_each_kind_read_through_the_dataset_loader(tmp_path, suffix):
    # Messages mix the role/content and from/value conventions; Arrow merges them into one struct per column.
    rows = [
        {
            "conversations": SHAREGPT_USER,
            "chosen": {"from": "gpt", "value": A},
            "rejected": {"from": "gpt", "value": B},
        },
        {"conversations": USER, "chosen": {"role": "assistant", "content": B}, "rejected": {"from": "gpt", "value": A}},
    ]
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        frame = pd.DataFrame([{k: json.dumps(v) for k, v in r.items()} for r in rows])
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            # Parquet keeps real nested lists; normalise both rows to one convention as a typed writer would.
            frame = pd.DataFrame(
                [
                    {
                        "conversations": SHAREGPT_USER,
                        "chosen": {"from": "gpt", "value": A},
                        "rejected": {"from": "gpt", "value": B},
                    },
                    {
                        "conversations": SHAREGPT_USER,
                        "chosen": {"from": "gpt", "value": B},
                        "rejected": {"from": "gpt", "value": A},
                    },
                ]
            )
            frame.to_parquet(path)
    examples, _ = read_preferences(load_rows(str(path), workspace=None), str(path))
    assert examples == [PreferenceExample("1", USER, A, B), PreferenceExample("2", USER, B, A)]


def test_unusable_pairs_are_skipped_and_counted_and_ids_are_source_rows():
    rows = [
        {"prompt": Q, "chosen": A, "rejected": A},
        {"prompt": Q, "chosen": A, "rejected": B},
        {"prompt": Q, "chosen": "  ", "rejected": B},
        {"prompt": "", "chosen": A, "rejected": B},
        {"prompt": Q, "chosen": B + " ", "rejected": B},
        {"prompt": Q, "chosen": B, "rejected": A},
    ]
    examples, skipped = read_preferences(rows)
    assert [e.id for e in examples] == ["2", "6"]
    assert skipped == Counter({SKIP_IDENTICAL: 2, SKIP_EMPTY_RESPONSE: 1, SKIP_EMPTY_PROMPT: 1})
    hh = [
        {"chosen": f"\n\nHuman: {Q}\n\nAssistant: {A}", "rejected": f"\n\nHuman: Other?\n\nAssistant: {B}"},
        {"chosen": CHAT_A, "rejected": [{"role": "user", "content": "Other?"}, CHAT_B[-1]]},
        {"chosen": f"\n\nHuman: {Q}\n\nAssistant: {A}", "rejected": f"\n\nHuman: {Q}\n\nAssistant: {B}"},
    ]
    examples, skipped = read_preferences(hh)
    assert [e.id for e in examples] == ["3"] and skipped == Counter({SKIP_NO_SHARED_PROMPT: 2})


def test_rows_keep_their_numbers_in_the_file_through_sampling_and_carving(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q{i}", "chosen": f"A{i}", "rejected": f"B{i}"} for i in range(1, 21)]
    rows[12]["rejected"] = rows[12]["chosen"]  # row 13 is skipped
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_dataset_splits(
        str(path), workspace=None, validation_split="auto", validation_fraction=0.25, max_samples=16, row_numbers="n"
    )
    numbers = list(splits.train["n"]) + list(splits.validation["n"])
    assert len(numbers) == 16 and not set(splits.train["n"]) & set(splits.validation["n"])
    for part in (splits.train, splits.validation):
        examples, _ = read_preferences(part.remove_columns("n"), str(path), row_numbers=part["n"])
        assert all(e.prompt == [{"role": "user", "content": f"Q{e.id}"}] and e.chosen == f"A{e.id}" for e in examples)
        assert {e.id for e in examples} == {str(n) for n in part["n"]} - {"13"}
    bad = [rows[0], {"prompt": "Q", "chosen": "A"}]
    with pytest.raises(DatasetError, match="pairs.jsonl, row 9: missing 'rejected'"):
        read_preferences(bad, "pairs.jsonl", row_numbers=[4, 9])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"prompt": Q, "chosen": A, "rejected": B}, {"prompt": Q, "chosen": A, "rejected": None}],
            "pairs.jsonl, row 2: missing 'rejected'; the row has prompt, chosen",
        ),
        ([{"prompt": Q, "chosen": A, "rejected": B}, {"prompt": Q}], "row 2: missing 'chosen'; the row has prompt"),
        ([{"conversations": None, "chosen": A, "rejected": B}], "row 1: missing 'conversations'; the row has chosen"),
        (
            [{"question": Q, "answer": A}],
            "pairs.jsonl: cannot tell prompt, chosen and rejected apart from the columns question, answer. "
            "Accepted formats: prompt/chosen/rejected",
        ),
        (
            [{"chosen": A, "rejected": B}],
            "row 1: rows with only 'chosen' and 'rejected' text are read as Anthropic HH transcripts, but this "
            "'chosen' has no",
        ),
        ([{"prompt": CHAT_A, "chosen": A, "rejected": B}], "row 1: 'prompt' must end with a user turn"),
        ([{"prompt": Q, "chosen": USER, "rejected": B}], "row 1: 'chosen' must be the assistant's answer"),
        (
            [{"prompt": [{"speaker": "me", "text": Q}], "chosen": A, "rejected": B}],
            "row 1: 'prompt' message 0 needs 'role' and 'content' (or ShareGPT 'from' and 'value'); "
            "it has speaker, text",
        ),
        ([{"prompt": [{"role": "robot", "content": Q}], "chosen": A, "rejected": B}], "unknown role 'robot'"),
        ([{"prompt": 42, "chosen": A, "rejected": B}], "row 1: 'prompt' must be text or a non-empty list"),
        ([{"chosen": CHAT_A, "rejected": A}], "must both be transcripts (text) or both message lists"),
        ([{"chosen": CHAT_A[1:], "rejected": CHAT_B[1:]}], "row 1: 'chosen' and 'rejected' have no user turn"),
        ([{"prompt": Q, "chosen": A, "rejected": A}], "none of its 1 rows is a usable preference pair (skipped: 1"),
        (
            [{"prompt": Q, "chosen": json.dumps([{"role": "assistant", "content": "x\ud800"}]), "rejected": B}],
            "row 1: 'chosen' holds item 0.content: \\ud800, a lone surrogate escape",
        ),
    ],
)
def test_bad_rows_raise_naming_the_row(rows, message):
    with pytest.raises(DatasetError) as raised:
        read_preferences(rows, "pairs.jsonl")
    assert message in str(raised.value)


# ---------------------------------------------------------------------------------------------------------------
# Encoding


@pytest.fixture(scope="module", params=["tiny-llada", "tiny-dream", "tiny-bert"])
def tokenizer(request, preset_workspace):
    return AutoTokenizer.from_pretrained(ensure_preset(request.param, preset_workspace))


def template(tokenizer, messages, *, generation_prompt: bool = False, tokenize: bool = True):
    return tokenizer.apply_chat_template(
        messages, tokenize=tokenize, add_generation_prompt=generation_prompt, return_dict=False
    )


LONG_HISTORY = [
    {"role": "system", "content": "You are a patient teacher."},
    {"role": "user", "content": "Lily walks to the park every morning. How far is the lake?"},
    {"role": "assistant", "content": "It is about ten km away, near the old bridge."},
    {"role": "user", "content": Q},
]
PAIRS = [
    PreferenceExample("1", USER, A, B),
    PreferenceExample("7", LONG_HISTORY, "The answer is five, because two plus three is five.", "Seven."),
]


def test_ids_are_the_chat_template_split_at_the_generation_prompt(tokenizer):
    encoded = encode_preferences(PAIRS, tokenizer, max_length=4096, max_prompt_length=4096)
    assert encoded.summary() == "2 pairs" and not encoded.dropped and not encoded.truncated
    for example, row in zip(PAIRS, encoded.rows, strict=True):
        assert row["id"] == example.id
        assert row["prompt_ids"] == template(tokenizer, example.prompt, generation_prompt=True)
        prompt_text = template(tokenizer, example.prompt, generation_prompt=True, tokenize=False)
        for name in ("chosen", "rejected"):
            whole = [*example.prompt, {"role": "assistant", "content": getattr(example, name)}]
            assert row["prompt_ids"] + row[f"{name}_ids"] == template(tokenizer, whole)
            # The same split in text: the response is the rendered conversation after the rendered prompt, so it
            # holds the answer and the family's end-of-turn marker.
            whole_text = template(tokenizer, whole, tokenize=False)
            assert whole_text.startswith(prompt_text)
            response_text = tokenizer.decode(row[f"{name}_ids"])
            assert response_text == whole_text[len(prompt_text) :]
            assert getattr(example, name) in response_text
            assert response_text.rstrip().endswith(("<|eot_id|>", "<|im_end|>", "[/Answer]"))


def test_long_prompts_are_cut_from_the_left_and_responses_clipped(tokenizer):
    full = encode_preferences(PAIRS, tokenizer, max_length=4096, max_prompt_length=4096).rows
    short_prompt = len(full[0]["prompt_ids"])
    keep = short_prompt + 2  # only the long prompt of pair 7 is cut
    encoded = encode_preferences(PAIRS, tokenizer, max_length=keep + 3, max_prompt_length=keep)
    assert [r["id"] for r in encoded.rows] == ["1", "7"]
    assert encoded.rows[0]["prompt_ids"] == full[0]["prompt_ids"]
    assert encoded.rows[1]["prompt_ids"] == full[1]["prompt_ids"][-keep:]
    clipped = 0
    for row, whole in zip(encoded.rows, full, strict=True):
        room = keep + 3 - len(row["prompt_ids"])
        for name in ("chosen_ids", "rejected_ids"):
            assert row[name] == whole[name][:room] and len(row["prompt_ids"]) + len(row[name]) <= keep + 3
            clipped += len(whole[name]) > room
    assert clipped > 0
    assert encoded.truncated == Counter({CUT_PROMPT: 1, CUT_RESPONSE: clipped})
    assert encoded.summary() == f"2 pairs; 1 ({CUT_PROMPT}), {clipped} ({CUT_RESPONSE})"


def test_pairs_that_cannot_fit_are_dropped_and_counted(tokenizer):
    prompt_length = len(template(tokenizer, USER, generation_prompt=True))
    same_start = PreferenceExample("3", USER, "The answer is five.", "The answer is seven.")
    encoded = encode_preferences(
        [*PAIRS, same_start], tokenizer, max_length=prompt_length + 1, max_prompt_length=prompt_length + 1
    )
    # Pair 1 keeps one token of each answer ("2" vs "It"); pair 7's prompt fills max_length; pair 3's answers agree
    # on their first token.
    assert [r["id"] for r in encoded.rows] == ["1"]
    assert encoded.dropped == Counter({DROP_NO_ROOM: 1, DROP_IDENTICAL_IDS: 1})
    assert (
        encoded.summary().startswith("1 pairs; 2 (responses clipped")
        and "skipped 1 (prompt leaves" in encoded.summary()
    )
    with pytest.raises(PreferenceDataError, match="all 2 preference pairs were skipped .* raise max_length"):
        encode_preferences(PAIRS[1:] + [same_start], tokenizer, max_length=prompt_length + 1, max_prompt_length=4096)


class LengthSpy:
    """The tokenizer, recording the longest text it is handed (a message's content, or a text to count)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def apply_chat_template(self, messages, **kwargs):
        self.longest = max([self.longest, *(len(m["content"]) for m in messages)])
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(self, text, **kwargs):
        self.longest = max(self.longest, len(text))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_huge_pairs_are_tokenized_within_the_limits_with_the_ids_of_the_whole_text(tokenizer):
    words = " ".join(f"{i} plus {i} is {2 * i}." for i in range(12000))  # about 260k characters
    prompt = [{"role": "user", "content": words}, {"role": "assistant", "content": "Go on."},
              {"role": "user", "content": "Again: " + words}]  # fmt: skip
    pair = PreferenceExample("1", prompt, words, "No. " + words)
    whole = encode_preferences([pair], tokenizer, max_length=10**6, max_prompt_length=10**6).rows[0]
    spy = LengthSpy(tokenizer)
    (row,) = encode_preferences([pair], spy, max_length=96, max_prompt_length=48).rows
    assert row["prompt_ids"] == whole["prompt_ids"][-48:]
    room = 96 - 48
    assert row["chosen_ids"] == whole["chosen_ids"][:room] and row["rejected_ids"] == whole["rejected_ids"][:room]
    assert spy.longest <= 4 * 96 * 32  # the character budget, doubled at most twice; never the 260k of the texts
