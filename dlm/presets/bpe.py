"""The presets' tokenizers: a byte-level BPE trained here on generated English and arithmetic text (the same on
every run), wrapped as a transformers tokenizer with a family's special tokens and chat template."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from functools import cache
from typing import Any

SEED = 1234
BPE_VOCAB = 1024
MAX_POSITIONS = 1024


def training_text() -> list[str]:
    """A few thousand lines of simple English and arithmetic, the same on every run."""
    rng = random.Random(SEED)
    names = "Lily|Tom|Anna|Sam|Mia|Ben|Zoe|Max|the teacher|the farmer|my friend".split("|")
    verbs = "walks|runs|reads|writes|cooks|paints|sings|counts|jumps|drives|sleeps".split("|")
    things = (
        "a book|the river|two apples|a small house|the red car|three cats|a long letter|the old bridge|some bread|"
        "a green garden|the blue sky|five stones|a cup of tea"
    ).split("|")
    places = "in the park|at home|near the sea|on the hill|at school|in the city|by the lake".split("|")
    times = "every morning|at night|on Sunday|after lunch|in winter|before dinner|today".split("|")
    questions = (
        "What is the capital of France?|How far is the lake?|Can you help me?|Why is the sky blue?|"
        "Please write a short story.|What time is it?|Where does Lily live?|Explain how plants grow."
    ).split("|")
    answers = (
        "The capital of France is Paris.|It is about ten km away.|Sure, I can help you with that.|"
        "Sunlight is scattered by the air, and blue light scatters the most.|Once upon a time, a cat found a key.|"
        "It is three o'clock.|Lily lives in a small house near the sea.|Plants use light, water and air."
    ).split("|")
    lines = []
    for _ in range(4000):
        kind = rng.randrange(4)
        if kind == 0:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            op, val = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
            lines.append(f"Question: what is {a} {op} {b}? Answer: {a} {op} {b} = {val}.")
        elif kind == 1:
            lines.append(
                f"{rng.choice(names).capitalize()} {rng.choice(verbs)} {rng.choice(things)} "
                f"{rng.choice(places)} {rng.choice(times)}."
            )
        elif kind == 2:
            i = rng.randrange(len(questions))
            lines.append(f"{questions[i]} {answers[i]}")
        else:
            n = rng.randint(2, 60)
            lines.append(
                f"{rng.choice(names).capitalize()} has {n} coins and gives away {n // 2}, so {n - n // 2} are left."
            )
    return lines


@cache
def preset_bpe(specials: tuple[str, ...]):
    """A byte-level BPE (`tokenizers.Tokenizer`) with `specials` as its first ids, trained on the generated text."""
    return train_bpe(specials, training_text(), BPE_VOCAB)


def train_bpe(specials: Iterable[str], texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (`tokenizers.Tokenizer`) of up to `vocab_size` ids trained on `texts`, `specials` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def fast_tokenizer(specials: tuple[str, ...], template: str, *, bpe: Any = None, **named_tokens):
    """A transformers tokenizer over a copy of `bpe` (default: the generated-text BPE of `specials`)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    named = set(named_tokens.values())
    extra = [t for t in specials if t not in named]
    bpe = Tokenizer.from_str((bpe or preset_bpe(specials)).to_str())  # a copy: tokens added later must not leak
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, model_max_length=MAX_POSITIONS, additional_special_tokens=extra, **named_tokens
    )
    tokenizer.chat_template = template
    return tokenizer


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of everything that decides the token ids: the tokenizer's full serialisation."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
