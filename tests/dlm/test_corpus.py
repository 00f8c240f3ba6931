"""Corpora for pre-training: read as text from files, .gz, JSONL and folders, tokenized once into a token file
that later jobs reuse, served as windows with a held-out slice; bad input named precisely."""

import gzip
import json
import pickle

import numpy as np
import pytest

from dlm.corpus import (
    CorpusError,
    corpus_files,
    iter_documents,
    prepare_corpus,
    sample_texts,
    token_dtype,
)
from dlm.presets.bpe import tokenizer_fingerprint
from dlm.presets.builders import family_tokenizer

STORY = "Once upon a time, Lily found a key.\nShe opened the old door.\n"
OTHER = "Tom counted 12 stones by the river."


@pytest.fixture(scope="module")
def tokenizer():
    return family_tokenizer("llada")


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(f"{STORY}\n\n{OTHER}\n<|endoftext|>\nThe end.\n")
    with gzip.open(folder / "sub" / "b.txt.gz", "wt") as handle:
        handle.write("Gzipped words here.\n")
    (folder / "c.jsonl").write_text(json.dumps({"text": "A JSON line."}) + "\n\n" + json.dumps({"text": "Two."}) + "\n")
    (folder / "notes.csv").write_text("skipped,because,not text corpus")
    return folder


DOCS = [STORY.rstrip("\n"), OTHER, "The end.", "A JSON line.", "Two.", "Gzipped words here."]


def test_documents_of_text_gz_jsonl_and_folders(corpus):
    assert [p.name for p in corpus_files(corpus)] == ["a.txt", "c.jsonl", "b.txt.gz"]
    assert list(iter_documents(corpus)) == DOCS
    assert list(iter_documents(corpus / "c.jsonl")) == ["A JSON line.", "Two."]
    assert list(sample_texts(corpus, max_chars=len(DOCS[0]) + 1)) == DOCS[:2]


def expected_ids(tokenizer, docs):
    eos = tokenizer.eos_token_id
    return [i for doc in docs for i in (*tokenizer(doc, add_special_tokens=False)["input_ids"], eos)]


def test_prepare_writes_every_token_once_with_document_offsets(corpus, tmp_path, tokenizer):
    fp = tokenizer_fingerprint(tokenizer)
    prepared = prepare_corpus(corpus, tokenizer, tmp_path / "cache", tokenizer_id=fp, eos_id=tokenizer.eos_token_id)
    ids = expected_ids(tokenizer, DOCS)
    assert prepared.dtype == np.uint16 and prepared.num_tokens == len(ids) and prepared.num_documents == len(DOCS)
    assert prepared.memmap().tolist() == ids
    assert (prepared.folder / "tokens.bin").stat().st_size == 2 * len(ids)
    lengths = [len(expected_ids(tokenizer, [d])) for d in DOCS]
    assert prepared.document_starts().tolist() == [sum(lengths[:k]) for k in range(len(DOCS))]
    assert json.loads((prepared.folder / "meta.json").read_text())["tokenizer"] == fp


def test_cache_is_reused_rebuilt_for_another_tokenizer_and_keyed_by_content(corpus, tmp_path, tokenizer):
    cache, logs = tmp_path / "cache", []
    first = prepare_corpus(corpus, tokenizer, cache, tokenizer_id="A", eos_id=1, log=logs.append)
    stamp = first.tokens_path.stat().st_mtime_ns
    again = prepare_corpus(corpus, tokenizer, cache, tokenizer_id="A", eos_id=1, log=logs.append)
    assert again == first and again.tokens_path.stat().st_mtime_ns == stamp and "reusing" in logs[-1]
    rebuilt = prepare_corpus(corpus, tokenizer, cache, tokenizer_id="B", eos_id=1, log=logs.append)
    assert rebuilt.folder == first.folder
    assert "made by another tokenizer (A, uint16); rebuilding it for B (uint16)" in logs[-2]
    (corpus / "a.txt").write_text("Changed.\n")
    changed = prepare_corpus(corpus, tokenizer, cache, tokenizer_id="B", eos_id=1, log=logs.append)
    assert changed.folder != first.folder and changed.num_documents == len(DOCS) - 2
    assert sorted(p.name for p in cache.iterdir()) == sorted({first.folder.name, changed.folder.name})


def test_windows_cover_the_tokens_and_hold_out_the_tail(corpus, tmp_path, tokenizer):
    prepared = prepare_corpus(corpus, tokenizer, tmp_path, tokenizer_id="A", eos_id=tokenizer.eos_token_id)
    ids, length = prepared.memmap().tolist(), 4
    total = len(ids) // length
    train, validation = prepared.windows(length, validation_fraction=0.25)
    assert len(train) + len(validation) == total and len(validation) == round(total * 0.25)
    rows = [train[i] for i in range(len(train))] + [validation[i] for i in range(len(validation))]
    assert [r["input_ids"].tolist() for r in rows] == [ids[i * length : (i + 1) * length] for i in range(total)]
    assert all(r["labels"] is r["input_ids"] and r["prompt_length"] == 0 for r in rows)
    assert prepared.windows(length)[1] is None and len(prepared.windows(length)[0]) == total
    assert pickle.loads(pickle.dumps(train))[1]["input_ids"].tolist() == ids[length : 2 * length]
    with pytest.raises(CorpusError, match="too few for a training and a validation window of max_length=1000"):
        prepared.windows(1000, validation_fraction=0.1)


def test_a_binary_file_is_named_with_its_byte_offset(tmp_path):
    bad = tmp_path / "weights.txt"
    bad.write_bytes(b"fine line\nok \xff\xfe broken\n")
    with pytest.raises(CorpusError, match=r"weights.txt is not UTF-8 text: an invalid byte at byte offset 13$"):
        list(iter_documents(bad))
    nul = tmp_path / "z.txt.gz"
    with gzip.open(nul, "wb") as handle:
        handle.write(b"abc\nde\x00f\n")
    with pytest.raises(CorpusError, match=r"z.txt.gz is not text: a NUL byte at byte offset 6 of the uncompressed"):
        list(iter_documents(nul))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(CorpusError, match=r"rows.jsonl line 2 has no 'text' text field"):
        list(iter_documents(jsonl))
    jsonl.write_text('{"text": "ok"}\n{"text": "lone \\udc80"}\n')
    with pytest.raises(CorpusError, match=r"rows.jsonl line 2: its 'text' text holds a lone surrogate escape"):
        list(iter_documents(jsonl))
    jsonl.write_text('{"text": "ok", "n": ' + "9" * 5000 + "}\n")
    with pytest.raises(CorpusError, match=r"rows.jsonl line 1 is not JSON: .*5000 digits"):
        list(iter_documents(jsonl))


def test_token_dtype_follows_the_vocabulary():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    assert token_dtype(126464, "uint32") == np.uint32
    with pytest.raises(CorpusError, match=r"126,464 ids, more than token_dtype=uint16 can hold \(65,536\)"):
        token_dtype(126464, "uint16")


def test_missing_sources_and_offline_hub_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(CorpusError, match="does not exist"):
        corpus_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no text files"):
        corpus_files(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match="cannot stream hf:roneneldan/TinyStories from the hub: offline mode"):
        list(iter_documents("hf:roneneldan/TinyStories"))
