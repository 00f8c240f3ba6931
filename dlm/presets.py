"""Offline tiny models of the real architectures, built locally in seconds, for tests, demos and smoke runs.

A preset is a small randomly initialised model of its family's real class, with a byte-level BPE tokenizer
trained here on generated English and arithmetic text, the family's special tokens and chat template. It is
saved like any checkpoint under `<workspace>/models/<preset>/` and built once: later calls reuse it.
`tiny-llada`, `tiny-ar` and `tiny-a2d` share one tokenizer (the LLaDA tokens; the mask token is the last id), so
their likelihoods are comparable; `tiny-a2d` is `tiny-ar` converted to diffusion.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

from dlm.errors import ModelError

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


@cache
def _bpe(specials: tuple[str, ...]):
    """A byte-level BPE (`tokenizers.Tokenizer`) with `specials` as its first ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer)
    return tok


def _fast_tokenizer(specials: tuple[str, ...], template: str, **named_tokens):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    named = set(named_tokens.values())
    extra = [t for t in specials if t not in named]
    bpe = Tokenizer.from_str(_bpe(specials).to_str())  # a copy: tokens added later must not leak into the cache
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, model_max_length=MAX_POSITIONS, additional_special_tokens=extra, **named_tokens
    )
    tokenizer.chat_template = template
    return tokenizer


def _llada_tokenizer(with_mask: bool):
    from dlm.families import get_family

    tokenizer = _fast_tokenizer(
        LLADA_SPECIALS,
        get_family("llada").chat_template,
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


def _build_llada(dst: Path) -> None:
    from transformers import AutoConfig

    import dlm.models  # noqa: F401  (registers the llada model type)

    tokenizer = _llada_tokenizer(with_mask=True)
    vocab = _padded(len(tokenizer))
    config = AutoConfig.for_model(
        "llada",
        d_model=HIDDEN,
        n_heads=HEADS,
        n_kv_heads=HEADS,
        n_layers=LAYERS,
        mlp_hidden_size=INTERMEDIATE,
        mlp_ratio=INTERMEDIATE // HIDDEN,
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
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=False,
        architectures=["LLaDAModelLM"],
    )
    _save_random_model("AutoModel", config, tokenizer, dst)


def _build_dream(dst: Path) -> None:
    from transformers import AutoConfig

    import dlm.models  # noqa: F401  (registers the Dream model type)
    from dlm.families import get_family

    tokenizer = _fast_tokenizer(
        DREAM_SPECIALS,
        get_family("dream").chat_template,
        bos_token="<|beginoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        mask_token="<|mask|>",
    )
    config = AutoConfig.for_model(
        "Dream",
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS // 2,
        vocab_size=_padded(len(tokenizer)),
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=False,
        architectures=["DreamModel"],
    )
    _save_random_model("AutoModel", config, tokenizer, dst)


def _build_bert(dst: Path) -> None:
    from transformers import ModernBertConfig

    from dlm.families import get_family

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


def _build_ar(dst: Path) -> None:
    from transformers import LlamaConfig

    tokenizer = _llada_tokenizer(with_mask=False)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        architectures=["LlamaForCausalLM"],
    )
    _save_random_model("AutoModelForCausalLM", config, tokenizer, dst)


def _build_a2d(dst: Path) -> None:
    from dlm.convert import convert_causal_to_diffusion

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        _build_ar(Path(tmp))
        convert_causal_to_diffusion(tmp, dst, mask_token=LLADA_MASK)


PRESETS: dict[str, Callable[[Path], None]] = {
    "tiny-llada": _build_llada,
    "tiny-dream": _build_dream,
    "tiny-bert": _build_bert,
    "tiny-a2d": _build_a2d,
    "tiny-ar": _build_ar,
}


def _is_current(folder: Path, name: str) -> bool:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"preset": name, "version": PRESET_VERSION}


def ensure_preset(name: str, workspace: str | Path | None = None) -> Path:
    """The folder of preset `name` in `workspace`, built first if missing or from an older preset version.

    The model is written to a temporary folder and renamed into place, so a half-written preset (a crash, or
    another process building the same one) is never taken for a finished one.
    """
    if name not in PRESETS:
        raise ModelError(f"unknown tiny preset {name!r}; choose one of: {', '.join(PRESETS)}")
    models_dir = Path(workspace if workspace is not None else default_workspace()) / "models"
    final = models_dir / name
    if _is_current(final, name):
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir))
    try:
        PRESETS[name](tmp)
        (tmp / MARKER_FILE).write_text(json.dumps({"preset": name, "version": PRESET_VERSION}))
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished preset is an ordinary folder
        if final.exists() and not _is_current(final, name):
            stale = Path(tempfile.mkdtemp(prefix=f".{name}.stale.", dir=models_dir))
            os.replace(final, stale / name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_current(final, name):  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model_path(name: str, workspace: str | Path | None = None) -> str:
    """The local folder of a tiny preset (built on first use) or of a model registered in the workspace by a
    trainer (`registered_model`); any other name or path is returned unchanged."""
    if name in PRESETS:
        return str(ensure_preset(name, workspace))
    registered = registered_model(name, workspace)
    if registered is not None:
        return str(registered)
    if name.startswith("tiny-") and not os.path.exists(name):
        raise ModelError(
            f"unknown tiny preset {name!r}; choose one of: {', '.join(PRESETS)}, or a model registered in "
            f"{_models_dir(workspace)}"
        )
    return name


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
