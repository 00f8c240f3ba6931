"""Offline tiny models of the real architectures, built locally in seconds, for tests, demos and smoke runs.

A preset is a small randomly initialised model of its family's real class, with a byte-level BPE tokenizer
trained here on generated English and arithmetic text, the family's special tokens and chat template. It is
saved like any checkpoint under `<workspace>/models/<preset>/` and built once: later calls reuse it.
`tiny-llada`, `tiny-ar` and `tiny-a2d` share one tokenizer (the LLaDA tokens; the mask token is the last id), so
their likelihoods are comparable; `tiny-a2d` is `tiny-ar` converted to diffusion.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from dlm.convert import convert_causal_to_diffusion
from dlm.errors import ModelError
from dlm.families import get_family

PRESET_VERSION = 1
MARKER_FILE = "dlm_preset.json"
SEED = 1234
HIDDEN = 128
LAYERS = 2
HEADS = 4
INTERMEDIATE = 256
MAX_POSITIONS = 1024
BPE_VOCAB = 1024

LLADA_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLADA_MASK = "<|mdm_mask|>"
DREAM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>")
BERT_SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
BERT_CHAT_MARKERS = ("[SYS]", "[/SYS]", "[Question]", "[/Question]", "[Answer]", "[/Answer]")


def default_workspace() -> Path:
    """`$DLM_WORKSPACE`, else `./workspace`."""
    return Path(os.environ.get("DLM_WORKSPACE") or "workspace")


def _training_text() -> list[str]:
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


@dataclass(frozen=True)
class Dims:
    """The shape of a model: width, attention heads (and key/value heads), depth, MLP width."""

    hidden: int
    heads: int
    layers: int
    intermediate: int
    kv_heads: int | None = None  # None: as many as the heads


TINY = Dims(HIDDEN, HEADS, LAYERS, INTERMEDIATE)
TINY_DREAM = Dims(HIDDEN, HEADS, LAYERS, INTERMEDIATE, kv_heads=HEADS // 2)


@cache
def _bpe(specials: tuple[str, ...]):
    """A byte-level BPE (`tokenizers.Tokenizer`) with `specials` as its first ids, trained on the generated text."""
    return train_bpe(specials, _training_text(), BPE_VOCAB)


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


def _fast_tokenizer(specials: tuple[str, ...], template: str, *, bpe: Any = None, **named_tokens):
    """A transformers tokenizer over a copy of `bpe` (default: the generated-text BPE of `specials`)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    named = set(named_tokens.values())
    extra = [t for t in specials if t not in named]
    bpe = Tokenizer.from_str((bpe or _bpe(specials)).to_str())  # a copy: tokens added later must not leak
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, model_max_length=MAX_POSITIONS, additional_special_tokens=extra, **named_tokens
    )
    tokenizer.chat_template = template
    return tokenizer


def _llada_tokenizer(with_mask: bool, bpe: Any = None):
    tokenizer = _fast_tokenizer(
        LLADA_SPECIALS,
        get_family("llada").chat_template,
        bpe=bpe,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if with_mask:
        tokenizer.add_special_tokens({"mask_token": LLADA_MASK})
    return tokenizer


def _padded(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def _save_random_model(auto_class_name: str, config, tokenizer, dst: Path) -> None:
    import torch
    import transformers

    auto_class = getattr(transformers, auto_class_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = auto_class.from_config(config, dtype=torch.float32)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)


def _special_ids(tokenizer: Any) -> dict[str, int | None]:
    return {
        "mask_token_id": tokenizer.mask_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }


def _build_llada(dst: Path, dims: Dims = TINY, tokenizer: Any = None) -> None:
    tokenizer = tokenizer or _llada_tokenizer(with_mask=True)
    config = _llada_config(dims, _padded(len(tokenizer)), **_special_ids(tokenizer))
    _save_random_model("AutoModel", config, tokenizer, dst)


def _llada_config(dims: Dims, vocab: int, **special_ids: int | None) -> Any:
    from transformers import AutoConfig

    import dlm.models  # noqa: F401  (registers the llada model type)

    return AutoConfig.for_model(
        "llada",
        d_model=dims.hidden,
        n_heads=dims.heads,
        n_kv_heads=dims.kv_heads or dims.heads,
        n_layers=dims.layers,
        mlp_hidden_size=dims.intermediate,
        mlp_ratio=dims.intermediate // dims.hidden,
        vocab_size=vocab,
        embedding_size=vocab,
        max_sequence_length=MAX_POSITIONS,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        block_type="llama",
        activation_type="silu",
        layer_norm_type="rms",
        rope=True,
        include_bias=False,
        weight_tying=False,
        use_cache=False,
        architectures=["LLaDAModelLM"],
        **special_ids,
    )


def _dream_tokenizer(bpe: Any = None):
    return _fast_tokenizer(
        DREAM_SPECIALS,
        get_family("dream").chat_template,
        bpe=bpe,
        bos_token="<|beginoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        mask_token="<|mask|>",
    )


def _build_dream(dst: Path, dims: Dims = TINY, tokenizer: Any = None) -> None:
    tokenizer = tokenizer or _dream_tokenizer()
    config = _dream_config(dims, _padded(len(tokenizer)), **_special_ids(tokenizer))
    _save_random_model("AutoModel", config, tokenizer, dst)


def _dream_config(dims: Dims, vocab: int, **special_ids: int | None) -> Any:
    from transformers import AutoConfig

    import dlm.models  # noqa: F401  (registers the Dream model type)

    return AutoConfig.for_model(
        "Dream",
        hidden_size=dims.hidden,
        intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads or dims.heads,
        vocab_size=vocab,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_cache=False,
        architectures=["DreamModel"],
        **special_ids,
    )


def _build_bert(dst: Path) -> None:
    from transformers import ModernBertConfig

    # As the BERT chat checkpoints do: [PAD] is the end token; the chat markers are single special tokens.
    tokenizer = _fast_tokenizer(
        BERT_SPECIALS + BERT_CHAT_MARKERS,
        get_family("bert").chat_template,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        bos_token="[PAD]",
        eos_token="[PAD]",
    )
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        architectures=["ModernBertForMaskedLM"],
    )
    _save_random_model("AutoModelForMaskedLM", config, tokenizer, dst)


def _build_ar(dst: Path, dims: Dims = TINY, tokenizer: Any = None) -> None:
    tokenizer = tokenizer or _llada_tokenizer(with_mask=False)
    special_ids = _special_ids(tokenizer)
    del special_ids["mask_token_id"]  # a causal model has none
    config = _ar_config(dims, len(tokenizer), **special_ids)
    _save_random_model("AutoModelForCausalLM", config, tokenizer, dst)


def _ar_config(dims: Dims, vocab: int, **special_ids: int | None) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=dims.hidden,
        intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads or dims.heads,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
        **special_ids,
    )


def _build_a2d(dst: Path, dims: Dims = TINY, tokenizer: Any = None) -> None:
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        _build_ar(Path(tmp), dims, tokenizer)
        convert_causal_to_diffusion(tmp, dst, mask_token=LLADA_MASK)


PRESETS: dict[str, Callable[[Path], None]] = {
    "tiny-llada": _build_llada,
    "tiny-dream": lambda dst: _build_dream(dst, TINY_DREAM),
    "tiny-bert": _build_bert,
    "tiny-a2d": _build_a2d,
    "tiny-ar": _build_ar,
}


def _marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _build_in_place(final: Path, marker: dict[str, Any], build: Callable[[Path], None]) -> bool:
    """Build into `final` unless it already holds a model with this `marker`; True when it built.

    The model is written to a temporary folder and renamed into place, so a half-written preset (a crash, or
    another process building the same one) is never taken for a finished one."""
    if _marker(final) == marker:
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        (tmp / MARKER_FILE).write_text(json.dumps(marker))
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished preset is an ordinary folder
        if final.exists() and _marker(final) != marker:
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale.", dir=final.parent))
            os.replace(final, stale / final.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if _marker(final) != marker:  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def ensure_preset(name: str, workspace: str | Path | None = None) -> Path:
    """The folder of preset `name` in `workspace`, built first if missing or from an older preset version."""
    if name not in PRESETS:
        raise ModelError(f"unknown tiny preset {name!r}; choose one of: {', '.join(PRESETS)}")
    final = Path(workspace if workspace is not None else default_workspace()) / "models" / name
    _build_in_place(final, {"preset": name, "version": PRESET_VERSION}, PRESETS[name])
    return final


def resolve_model_path(name: str, workspace: str | Path | None = None) -> str:
    """The local folder of a tiny preset (built on first use) or of a model registered in the workspace by a
    trainer (`registered_model`); any other name or path is returned unchanged."""
    if name in PRESETS:
        return str(ensure_preset(name, workspace))
    if parse_sized_name(name) is not None:
        return str(ensure_sized_preset(name, workspace))
    registered = registered_model(name, workspace)
    if registered is not None:
        return str(registered)
    if name.startswith("tiny-") and not os.path.exists(name):
        raise ModelError(
            f"unknown tiny preset {name!r}; choose one of: {', '.join(PRESETS)}, or a model registered in "
            f"{_models_dir(workspace)}"
        )
    return name


# ---- size presets for pre-training from scratch -----------------------------------------------------------------
# The usual ladder of small GPT-style models; the parameter count also depends on the tokenizer's vocabulary.
SIZES: dict[str, Dims] = {
    "small": Dims(384, 6, 6, 1536),
    "medium": Dims(512, 8, 8, 2048),
    "large": Dims(768, 12, 12, 3072),
    "xl": Dims(1024, 16, 24, 4096),
}
SIZED_FAMILIES: dict[str, Callable[..., None]] = {
    "llada": _build_llada,
    "dream": _build_dream,
    "a2d": _build_a2d,
    "ar": _build_ar,
}


def parse_sized_name(name: str) -> tuple[str, str] | None:
    """`("small", "llada")` for `small-llada`; None when `name` is not shaped `<size>-<family>` with a known size;
    an unknown family of a known size is an error listing the families."""
    size, _, family = name.partition("-")
    if size not in SIZES or not family or os.path.exists(name):
        return None
    if family not in SIZED_FAMILIES:
        raise ModelError(
            f"no size preset {name!r}: {family!r} has no size presets; sizes {', '.join(SIZES)} exist for "
            f"{', '.join(SIZED_FAMILIES)} (for example {size}-llada)"
        )
    return size, family


def family_tokenizer(family: str, bpe: Any = None) -> Any:
    """The family's tokenizer (special tokens, chat template, mask token) over `bpe`, default the presets' BPE.
    a2d gets the causal one: the conversion adds the mask token."""
    if family == "dream":
        return _dream_tokenizer(bpe)
    return _llada_tokenizer(with_mask=family == "llada", bpe=bpe)


def family_specials(family: str) -> tuple[str, ...]:
    return DREAM_SPECIALS if family == "dream" else LLADA_SPECIALS + ((LLADA_MASK,) if family == "llada" else ())


def train_family_tokenizer(family: str, texts: Iterable[str], vocab_size: int) -> Any:
    """A tokenizer trained on `texts` (the user's corpus) with the family's special tokens and chat template."""
    specials = family_specials(family)
    return family_tokenizer(family, train_bpe(specials, texts, vocab_size))


def adapt_tokenizer(family: str, tokenizer: Any) -> Any:
    """An existing tokenizer made usable for `family`: an end token and a pad token (the end token) are required,
    LLaDA gets its mask token when absent, and the family's chat template when the tokenizer has none."""
    if tokenizer.eos_token is None:
        raise ModelError(f"the tokenizer {tokenizer.name_or_path!r} has no end-of-text token; {family} needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if family == "llada" and tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": LLADA_MASK})
    if family == "dream" and tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": "<|mask|>"})
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = get_family("llada" if family in ("ar", "a2d") else family).chat_template
    return tokenizer


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of everything that decides the token ids: the tokenizer's full serialisation."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def count_parameters(family: str, size: str, vocab_size: int) -> int:
    """Parameters of the `size` model of `family` with `vocab_size` tokens, counted on the meta device (nothing
    allocated, so xl counts in a moment)."""
    model = _meta_model(family, SIZES[size], vocab_size)
    return sum(p.numel() for p in model.parameters())


def _meta_model(family: str, dims: Dims, vocab_size: int) -> Any:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    ids = {"eos_token_id": 0, "pad_token_id": 0, "bos_token_id": 0}  # any id inside the vocabulary counts the same
    if family in ("llada", "dream"):
        make = _llada_config if family == "llada" else _dream_config
        config, auto = make(dims, _padded(vocab_size), mask_token_id=0, **ids), AutoModel
    else:
        config, auto = _ar_config(dims, vocab_size, **ids), AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def size_table(vocab_size: int) -> list[dict[str, Any]]:
    """One row per size and family: the shape and the parameter count at `vocab_size`."""
    return [
        {"preset": f"{size}-{family}", **vars(dims), "vocab": vocab_size,
         "parameters": count_parameters(family, size, vocab_size)}
        for size, dims in SIZES.items()
        for family in SIZED_FAMILIES
    ]  # fmt: skip


def ensure_sized_preset(
    name: str, workspace: str | Path | None = None, *, tokenizer: Any = None, log: Callable[[str], None] = print
) -> Path:
    """The folder of a random `<size>-<family>` model (e.g. `small-llada`) with `tokenizer` (one from
    `train_family_tokenizer`/`adapt_tokenizer`; default the presets' tokenizer), built once per tokenizer in
    `<workspace>/models/<name>[-<tokenizer hash>]/`. Its parameter count goes to `log`."""
    parsed = parse_sized_name(name)
    if parsed is None:
        raise ModelError(
            f"unknown size preset {name!r}; sizes: {', '.join(SIZES)}; families: {', '.join(SIZED_FAMILIES)}"
        )
    size, family = parsed
    folder_name = name if tokenizer is None else None
    tokenizer = tokenizer or family_tokenizer(family)
    fingerprint = tokenizer_fingerprint(tokenizer)
    folder_name = folder_name or f"{name}-{fingerprint[:8]}"
    marker = {"preset": name, "version": PRESET_VERSION, "tokenizer": fingerprint}
    final = Path(workspace if workspace is not None else default_workspace()) / "models" / folder_name
    if _build_in_place(final, marker, lambda tmp: SIZED_FAMILIES[family](tmp, SIZES[size], tokenizer)):
        log(f"built {name} at {final}: {_saved_parameters(final) / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")
    return final


def _saved_parameters(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())


def main(argv: list[str] | None = None) -> None:
    """`python -m dlm.presets [--vocab N]`: the size presets and their parameter counts."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--vocab", type=int, default=32000, help="the tokenizer's vocabulary size")
    args = parser.parse_args(argv)
    print(f"{'preset':<14}{'d_model':>8}{'heads':>6}{'layers':>7}{'ff':>6}{'parameters':>14}")
    for row in size_table(args.vocab):
        print(
            f"{row['preset']:<14}{row['hidden']:>8}{row['heads']:>6}{row['layers']:>7}{row['intermediate']:>6}"
            f"{row['parameters'] / 1e6:>13.1f}M"
        )


if __name__ == "__main__":
    main()


def _models_dir(workspace: str | Path | None) -> Path:
    return Path(workspace if workspace is not None else default_workspace()) / "models"


def _registered_names(folder: Path) -> set[str]:
    """The names a registered model answers to: its folder name, and the name and model id of its index.json."""
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    index = index if isinstance(index, dict) else {}
    data = index.get("json_data") if isinstance(index.get("json_data"), dict) else {}
    names = {folder.name, index.get("name"), index.get("model_id"), data.get("uniqueID")}
    return {n for n in names if isinstance(n, str)}


def registered_model(name: str, workspace: str | Path | None = None) -> Path | None:
    """The folder of the model a trainer registered in `<workspace>/models/` under `name` (its folder name, or the
    name or model id in its index.json, e.g. `TransformerLab/<name>`), or None when none is. An existing path is not
    a name. Raises `ModelError` listing the matches when several registered models answer to `name`."""
    models = _models_dir(workspace)
    if os.path.exists(name) or not models.is_dir():
        return None
    matches = sorted(
        folder
        for folder in models.iterdir()
        if folder.is_dir() and (folder / "config.json").is_file() and name in _registered_names(folder)
    )
    if len(matches) > 1:
        raise ModelError(
            f"model name {name!r} is ambiguous: {len(matches)} models registered in {models} answer to it: "
            f"{', '.join(map(str, matches))}; pass the folder of the one you mean"
        )
    return matches[0] if matches else None
