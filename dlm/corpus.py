"""Pre-training corpora at scale: text read once, tokenized once, trained on from a token file on disk.

Sources: plain text (`.txt`, `.text`, `.md`; documents are separated by blank lines or `<|endoftext|>` lines),
JSONL (`.jsonl`, `.json` with one object per line; the `text` field), any of these gzipped (`.gz`), folders of
them (recursively, in name order), and `hf:<dataset id>[:<config>]` streamed from the hub when online.

`prepare_corpus` tokenizes the documents, each followed by the end token, into `tokens.bin`: the ids one after
another as uint16 (vocabularies up to 65,536) or uint32, which `numpy.memmap` opens as is; `documents.idx` holds
the token offset of each document (uint64), and `meta.json` says what made them. The folder is keyed by the
corpus content (a hash of every file's bytes), so later jobs and resumed jobs reuse it; one made with another
tokenizer is rebuilt, and the log says so. `TokenWindows` serves `max_length` windows of it to the Trainer,
reading each window from the file when asked (no memory map is kept resident), so memory does not grow with the
corpus; the last `validation_fraction` of the tokens is held out for validation.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlm.errors import DlmError
from dlm.staging import staging_folder

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".jsonl", ".json")
HUB_PREFIX = "hf:"
DOCUMENT_SEPARATOR = "<|endoftext|>"
FORMAT_VERSION = 1
TOKENIZE_BATCH = 512  # documents per tokenizer call: large enough to be fast, small enough to bound memory
MAX_DOCUMENT_CHARS = 1 << 20  # a longer run of text without a blank line is cut into pieces of this size


class CorpusError(DlmError):
    """A corpus cannot be found, read as text, or tokenized as asked."""


# ---- reading documents --------------------------------------------------------------------------------------------
def corpus_files(source: str | Path) -> list[Path]:
    """The corpus files of `source`: the file itself, or every text/JSONL file (gzipped or not) under a folder."""
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CorpusError(f"corpus {source} does not exist (a text, .gz or JSONL file, a folder, or hf:<dataset id>)")
    files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
    if not files:
        raise CorpusError(
            f"corpus folder {source} holds no text files ({', '.join(TEXT_SUFFIXES + JSON_SUFFIXES)}, or .gz of them)"
        )
    return files


def _kind(path: Path) -> str | None:
    """jsonl, text, or None for a file a corpus folder skips (a file named on its own is read as text)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(JSON_SUFFIXES):
        return "jsonl"
    return "text" if name.endswith(TEXT_SUFFIXES) else None


def _lines(path: Path) -> Iterator[tuple[int, int, str]]:
    """(line number, byte offset, text) of each line, checked to be text: UTF-8 without NUL bytes."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    where = " of the uncompressed data" if opener is gzip.open else ""
    offset = 0
    try:
        with opener(path, "rb") as raw:
            for number, line in enumerate(raw, start=1):
                if b"\x00" in line:
                    raise CorpusError(f"{path} is not text: a NUL byte at byte offset {offset + line.index(0)}{where}")
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CorpusError(
                        f"{path} is not UTF-8 text: an invalid byte at byte offset {offset + exc.start}{where}"
                    ) from None
                yield number, offset, text
                offset += len(line)
    except (gzip.BadGzipFile, EOFError) as exc:
        raise CorpusError(f"{path} is not a readable gzip file: {exc}") from None


def _text_documents(path: Path) -> Iterator[str]:
    """Documents of a text file: runs of lines between blank lines or `<|endoftext|>` lines."""
    lines: list[str] = []
    size = 0
    for _, _, line in _lines(path):
        if line.strip() in ("", DOCUMENT_SEPARATOR):
            if lines:
                yield "".join(lines).rstrip("\n")
            lines, size = [], 0
            continue
        lines.append(line)
        size += len(line)
        if size >= MAX_DOCUMENT_CHARS:
            yield "".join(lines)
            lines, size = [], 0
    if lines:
        yield "".join(lines).rstrip("\n")


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    for number, _, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:  # invalid JSON, or an integer of more digits than Python reads
            raise CorpusError(f"{path} line {number} is not JSON: {getattr(exc, 'msg', exc)}") from None
        text = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise CorpusError(f"{path} line {number} has no {text_field!r} text field")
        if not text.isascii() and not _is_utf8(text):
            raise CorpusError(f"{path} line {number}: its {text_field!r} text holds a lone surrogate escape (\\udXXX)")
        if text:
            yield text


def _hub_documents(source: str, text_field: str) -> Iterator[str]:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise CorpusError(
            f"cannot stream {source} from the hub: offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); "
            "download the dataset as text or JSONL files and give their folder instead"
        )
    import datasets

    name, _, config = source.removeprefix(HUB_PREFIX).partition(":")
    try:
        stream = datasets.load_dataset(name, config or None, split="train", streaming=True)
        for row in stream:
            if row.get(text_field):
                yield row[text_field]
    except (ConnectionError, OSError) as exc:
        raise CorpusError(f"cannot stream {source} from the hub: {exc}") from None


def iter_documents(source: str | Path, text_field: str = "text") -> Iterator[str]:
    """Every document of the corpus, in a fixed order, read as a stream."""
    if str(source).startswith(HUB_PREFIX):
        yield from _hub_documents(str(source), text_field)
        return
    for path in corpus_files(source):
        if _kind(path) == "jsonl":
            yield from _jsonl_documents(path, text_field)
        else:
            yield from _text_documents(path)


def sample_texts(source: str | Path, max_chars: int, text_field: str = "text") -> Iterator[str]:
    """The first documents of the corpus, up to about `max_chars` characters (to train a tokenizer on)."""
    seen = 0
    for text in iter_documents(source, text_field):
        yield text
        seen += len(text)
        if seen >= max_chars:
            return


def content_key(source: str | Path) -> str:
    """A hash of the corpus content: every file's relative name and bytes (the dataset id for a hub source)."""
    digest = hashlib.sha256(f"dlm-corpus-{FORMAT_VERSION}".encode())
    if str(source).startswith(HUB_PREFIX):
        digest.update(str(source).encode())
        return digest.hexdigest()
    root = Path(source)
    for path in corpus_files(source):
        digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


# ---- the token file ---------------------------------------------------------------------------------------------
def token_dtype(vocab_size: int, requested: str = "auto") -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32; a requested dtype too small for the vocabulary is an
    error naming both."""
    limits = {"uint16": 2**16, "uint32": 2**32}
    if requested == "auto":
        requested = "uint16" if vocab_size <= limits["uint16"] else "uint32"
    if requested not in limits:
        raise CorpusError(f"token_dtype {requested!r} is not one of auto, uint16, uint32")
    if vocab_size > limits[requested]:
        raise CorpusError(
            f"the tokenizer has {vocab_size:,} ids, more than token_dtype={requested} can hold "
            f"({limits[requested]:,}); use uint32 or auto"
        )
    return np.dtype(requested)


@dataclass(frozen=True)
class PreparedCorpus:
    """A tokenized corpus on disk: `tokens.bin` (the ids), `documents.idx` (document starts), `meta.json`."""

    folder: Path
    dtype: np.dtype
    num_tokens: int
    num_documents: int

    @property
    def tokens_path(self) -> Path:
        return self.folder / "tokens.bin"

    def memmap(self) -> np.memmap:
        return np.memmap(self.tokens_path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))

    def document_starts(self) -> np.memmap:
        return np.memmap(self.folder / "documents.idx", dtype=np.uint64, mode="r", shape=(self.num_documents,))

    def windows(self, max_length: int, validation_fraction: float = 0.0) -> tuple[TokenWindows, TokenWindows | None]:
        """Training and validation windows of `max_length` tokens; the validation ones are the corpus's last
        `validation_fraction` (at least one window when the fraction is above 0)."""
        total = self.num_tokens // max_length
        if total < (2 if validation_fraction > 0 else 1):
            raise CorpusError(
                f"the corpus has {self.num_tokens} tokens, too few for "
                f"{'a training and a validation window' if validation_fraction > 0 else 'one window'} of "
                f"max_length={max_length}"
            )
        held_out = max(1, round(total * validation_fraction)) if validation_fraction > 0 else 0
        train = TokenWindows(self.tokens_path, self.dtype, 0, total - held_out, max_length)
        validation = TokenWindows(self.tokens_path, self.dtype, total - held_out, held_out, max_length)
        return train, (validation if held_out else None)


class TokenWindows:
    """`count` consecutive windows of `max_length` tokens, starting at window `first` of a token file, as rows
    the diffusion collator pads (`input_ids`, `labels`, `prompt_length` 0). Each row is read from the file when
    asked, so memory holds one batch, whatever the size of the corpus."""

    def __init__(self, path: Path, dtype: np.dtype, first: int, count: int, max_length: int) -> None:
        self.path, self.dtype, self.first, self.count, self.max_length = Path(path), dtype, first, count, max_length
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        if self._fd is None or self._pid != os.getpid():  # a forked worker needs its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        size = self.dtype.itemsize
        start = (self.first + index) * self.max_length * size
        raw = os.pread(self._fd, self.max_length * size, start)
        ids = np.frombuffer(raw, dtype=self.dtype).astype(np.int64)
        return {"input_ids": ids, "labels": ids, "prompt_length": 0}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def _tokenize_into(
    documents: Iterable[str], tokenizer: Any, eos_id: int, dtype: np.dtype, tokens: Any, starts: Any
) -> tuple[int, int]:
    """Tokenize `documents` in batches, appending ids (each document followed by `eos_id`) to the open file
    `tokens` and document offsets to `starts`; returns (tokens, documents) written."""
    count = documents_seen = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal count, documents_seen
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.uint64, count=len(encoded))
        offsets = count + np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.uint64)
        flat = np.fromiter((i for ids in encoded for i in (*ids, eos_id)), dtype=dtype, count=int(lengths.sum()))
        tokens.write(flat.tobytes())
        starts.write(offsets.tobytes())
        count += int(lengths.sum())
        documents_seen += len(batch)
        batch.clear()

    for text in documents:
        batch.append(text)
        if len(batch) >= TOKENIZE_BATCH:
            flush()
    if batch:
        flush()
    return count, documents_seen


def prepare_corpus(
    source: str | Path,
    tokenizer: Any,
    cache_root: str | Path,
    *,
    tokenizer_id: str,
    eos_id: int,
    requested_dtype: str = "auto",
    text_field: str = "text",
    log: Callable[[str], None] = print,
) -> PreparedCorpus:
    """The tokenized corpus under `cache_root/<content hash>/`, built unless one made by the same tokenizer
    (`tokenizer_id`, a fingerprint) is there. Written to a temporary folder and renamed: never half-written."""
    dtype = token_dtype(len(tokenizer), requested_dtype)
    key = content_key(source)
    folder = Path(cache_root) / key[:24]
    meta = _read_meta(folder)
    if meta is not None and meta.get("tokenizer") == tokenizer_id and meta.get("dtype") == dtype.name:
        log(f"corpus {source}: reusing {meta['num_tokens']:,} tokens in {folder}")
        return PreparedCorpus(folder, dtype, meta["num_tokens"], meta["num_documents"])
    if meta is not None:
        log(
            f"corpus {source}: the cached token file in {folder} was made by another tokenizer "
            f"({meta.get('tokenizer')}, {meta.get('dtype')}); rebuilding it for {tokenizer_id} ({dtype.name})"
        )
    staging = staging_folder(folder)
    try:
        with open(staging / "tokens.bin", "wb") as tokens, open(staging / "documents.idx", "wb") as starts:
            num_tokens, num_documents = _tokenize_into(
                iter_documents(source, text_field), tokenizer, eos_id, dtype, tokens, starts
            )
        if num_tokens == 0:
            raise CorpusError(f"corpus {source} holds no text")
        meta = {
            "format": FORMAT_VERSION,
            "source": str(source),
            "content": key,
            "tokenizer": tokenizer_id,
            "dtype": dtype.name,
            "num_tokens": num_tokens,
            "num_documents": num_documents,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        staging.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"corpus {source}: {num_documents:,} documents, {num_tokens:,} tokens ({dtype.name}) written to {folder}")
    return PreparedCorpus(folder, dtype, num_tokens, num_documents)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == FORMAT_VERSION else None


def _is_utf8(text: str) -> bool:
    """False for text holding a lone surrogate (a JSON `\\ud800` escape), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
