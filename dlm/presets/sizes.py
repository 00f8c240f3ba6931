"""Size presets for pre-training from scratch: `<size>-<family>` (e.g. `small-llada`), a random model of the usual
ladder of small GPT-style shapes with a given tokenizer. `python -m dlm.presets [--vocab N]` lists them."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dlm.errors import ModelError
from dlm.presets.bpe import tokenizer_fingerprint, train_bpe
from dlm.presets.builders import FAMILY_PRESETS, Dims, family_specials, family_tokenizer, meta_model
from dlm.presets.store import PRESET_VERSION, build_in_place, default_workspace

# The parameter count also depends on the tokenizer's vocabulary. The mixture-of-experts families take 8 routed
# experts, 2 per token, at every size (the dense families ignore it).
SIZES: dict[str, Dims] = {
    "small": Dims(384, 6, 6, 1536, experts=8, experts_per_token=2),
    "medium": Dims(512, 8, 8, 2048, experts=8, experts_per_token=2),
    "large": Dims(768, 12, 12, 3072, experts=8, experts_per_token=2),
    "xl": Dims(1024, 16, 24, 4096, experts=8, experts_per_token=2),
}
SIZED_FAMILIES = tuple(name for name, preset in FAMILY_PRESETS.items() if preset.sized)


def parse_sized_name(name: str) -> tuple[str, str] | None:
    """`("small", "llada")` for `small-llada`; None when `name` is not shaped `<size>-<family>` with a known size;
    an unknown family of a known size is an error listing the families."""
    size, _, family = name.partition("-")
    if size not in SIZES or not family or os.path.exists(name):
        return None
    preset = FAMILY_PRESETS.get(family)
    if preset is None or not preset.sized:
        raise ModelError(
            f"no size preset {name!r}: {family!r} has no size presets; sizes {', '.join(SIZES)} exist for "
            f"{', '.join(SIZED_FAMILIES)} (for example {size}-llada)"
        )
    return size, family


def train_family_tokenizer(family: str, texts: Iterable[str], vocab_size: int) -> Any:
    """A tokenizer trained on `texts` (the user's corpus) with the family's special tokens and chat template."""
    specials = family_specials(family)
    return family_tokenizer(family, train_bpe(specials, texts, vocab_size))


def count_parameters(family: str, size: str, vocab_size: int) -> int:
    """Parameters of the `size` model of `family` with `vocab_size` tokens, counted on the meta device (nothing
    allocated, so xl counts in a moment)."""
    model = meta_model(family, SIZES[size], vocab_size)
    return sum(p.numel() for p in model.parameters())


def size_table(vocab_size: int) -> list[dict[str, Any]]:
    """One row per size and family: the shape and the parameter count at `vocab_size`."""
    return [
        {"preset": f"{size}-{name}", **vars(dims), "vocab": vocab_size,
         "parameters": count_parameters(name, size, vocab_size)}
        for size, dims in SIZES.items()
        for name in SIZED_FAMILIES
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
    if build_in_place(final, marker, lambda tmp: FAMILY_PRESETS[family].build(tmp, SIZES[size], tokenizer)):
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
    print(f"{'preset':<17}{'d_model':>8}{'heads':>6}{'layers':>7}{'ff':>6}{'parameters':>14}")
    for row in size_table(args.vocab):
        print(
            f"{row['preset']:<17}{row['hidden']:>8}{row['heads']:>6}{row['layers']:>7}{row['intermediate']:>6}"
            f"{row['parameters'] / 1e6:>13.1f}M"
        )
