"""Pre-training from scratch: the recipe's defaults, the model (a size preset with its tokenizer, or any
checkpoint) and the corpus (tokenized once into a cached token file), ready for `dlm.trainers.sft_trainer.run_sft`.

`prepare_pretraining` is called by the trainer before training, on the main process first (the others then find
everything cached): it picks or trains the tokenizer, builds the size preset, and tokenizes the corpus.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlm.corpus import PreparedCorpus, TokenWindows, content_key, prepare_corpus, sample_texts
from dlm.errors import ModelError
from dlm.presets.bpe import tokenizer_fingerprint
from dlm.presets.builders import adapt_tokenizer, family_tokenizer
from dlm.presets.sizes import ensure_sized_preset, parse_sized_name, train_family_tokenizer
from dlm.staging import staging_folder

# The usual small-model pre-training recipe (GPT-2/nanoGPT, LLaDA): full training of every weight, a peak learning
# rate of a few 1e-4, a short warm-up then cosine decay, weight decay 0.1, and a few checkpoints kept.
PRETRAIN_DEFAULTS: dict[str, Any] = {
    "lora": False,
    "learning_rate": 3e-4,
    "learning_rate_schedule": "cosine",
    "warmup_ratio": 0.01,
    "weight_decay": 0.1,
    "save_total_limit": 3,
}
PRESET_TOKENIZER = "preset"


def apply_pretrain_defaults(
    params: dict[str, Any], sft_defaults: Mapping[str, Any], log: Callable[[str], None] = print
) -> dict[str, Any]:
    """In `params`, every recipe setting still at its fine-tuning default (`sft_defaults`) takes the pre-training
    default; returns what changed (also logged)."""
    changed = {
        name: value
        for name, value in PRETRAIN_DEFAULTS.items()
        if name in params and params[name] == sft_defaults.get(name) and params[name] != value
    }
    params.update(changed)
    if changed:
        shown = ", ".join(f"{k}={v}" for k, v in changed.items())
        log(f"pre-training defaults: {shown} (give other values, or pretrain_defaults=false, to keep your own)")
    return changed


@dataclass
class Pretraining:
    model_path: str
    train: TokenWindows
    validation: TokenWindows | None
    corpus: PreparedCorpus


def choose_tokenizer(
    family: str,
    choice: str,
    corpus: str,
    workspace: Path,
    *,
    vocab_size: int,
    train_chars: int,
    log: Callable[[str], None],
) -> Any:
    """The tokenizer of a size preset: `preset` (the presets' small BPE), empty (one trained on the corpus, cached
    per corpus content, family and size) or the name or folder of an existing tokenizer."""
    if choice == PRESET_TOKENIZER:
        return family_tokenizer(family)
    if choice:
        from transformers import AutoTokenizer

        try:
            return adapt_tokenizer(family, AutoTokenizer.from_pretrained(choice))
        except OSError as exc:
            raise ModelError(f"cannot load the tokenizer {choice!r}: {exc}") from None
    folder = workspace / "tokenizers" / f"{family}-{vocab_size}-{content_key(corpus)[:16]}"
    if (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        log(f"tokenizer: reusing {folder}")
        return AutoTokenizer.from_pretrained(folder)
    log(f"tokenizer: training a {vocab_size}-token BPE for {family} on up to {train_chars:,} characters of {corpus}")
    tokenizer = train_family_tokenizer(family, sample_texts(corpus, train_chars), vocab_size)
    staging = staging_folder(folder)
    tokenizer.save_pretrained(staging)  # renamed into place whole: a crash never leaves half a tokenizer
    staging.chmod(0o755)
    try:
        os.rename(staging, folder)
    except OSError:  # another process saved the same tokenizer first
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


def prepare_pretraining(
    *,
    model_name: str,
    corpus: str,
    workspace: str | Path,
    max_length: int,
    validation_fraction: float,
    tokenizer: str = "",
    tokenizer_vocab_size: int = 32000,
    tokenizer_train_chars: int = 50_000_000,
    token_dtype: str = "auto",
    log: Callable[[str], None] = print,
) -> Pretraining:
    """The model folder and the corpus windows of a pre-training run (see the module docstring)."""
    from transformers import AutoTokenizer

    from dlm.presets.resolve import resolve_model_path

    workspace = Path(workspace)
    sized = parse_sized_name(model_name)
    if sized is not None:
        chosen = choose_tokenizer(
            sized[1],
            tokenizer,
            corpus,
            workspace,
            vocab_size=tokenizer_vocab_size,
            train_chars=tokenizer_train_chars,
            log=log,
        )
        model_path = str(ensure_sized_preset(model_name, workspace, tokenizer=chosen, log=log))
    else:
        model_path = resolve_model_path(model_name, workspace)
    model_tokenizer = AutoTokenizer.from_pretrained(model_path)
    prepared = prepare_corpus(
        corpus,
        model_tokenizer,
        workspace / "corpora",
        tokenizer_id=tokenizer_fingerprint(model_tokenizer),
        eos_id=model_tokenizer.eos_token_id,
        requested_dtype=token_dtype,
        log=log,
    )
    train, validation = prepared.windows(max_length, validation_fraction)
    log(
        f"pre-training windows of {max_length} tokens: {len(train):,} for training"
        + (f", {len(validation):,} held out for validation" if validation else "")
    )
    return Pretraining(model_path, train, validation, prepared)
