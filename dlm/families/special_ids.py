"""The token ids the algorithms need (mask, EOS, end of turn, pad, BOS), found in a checkpoint by its family's
conventions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dlm.errors import ModelError
from dlm.families import config_field, get_family
from dlm.families.base import Family


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the algorithms need. `eot` is the end-of-turn token (EOS when the tokenizer has none)."""

    mask: int | None
    eos: int
    eot: int
    pad: int
    bos: int | None


def _first_id(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return None if value is None else int(value)


def _mask_id(family: Family, config: Any, tokenizer: Any) -> int | None:
    from_config = _first_id(config_field(config, "mask_token_id"))
    from_tokenizer = tokenizer.mask_token_id if tokenizer.mask_token is not None else None
    if family.mask_token_source == "tokenizer":
        found = from_tokenizer if from_tokenizer is not None else from_config
    else:
        found = from_config if from_config is not None else from_tokenizer
    if found is None:
        vocab = tokenizer.get_vocab()
        found = next((vocab[t] for t in family.mask_tokens if t in vocab), None)
    return found


def resolve_special_ids(family: Family | str, config: Any, tokenizer: Any) -> SpecialIds:
    """Mask, EOS, end-of-turn, pad and BOS ids of a checkpoint, following its family's conventions."""
    family = get_family(family)
    where = config_field(config, "_name_or_path") or getattr(tokenizer, "name_or_path", "") or "the checkpoint"
    tok_pad = tokenizer.pad_token_id if tokenizer.pad_token is not None else None
    tok_eos = tokenizer.eos_token_id if tokenizer.eos_token is not None else None
    if family.pad_with_eos:
        eos = tok_eos if tok_eos is not None else _first_id(config_field(config, "eos_token_id"))
        pad = eos if family.is_diffusion or tok_pad is None else tok_pad
    else:
        # BERT: [PAD] ends the answer and fills the rest of the sequence
        eos = pad = tok_pad if tok_pad is not None else _first_id(config_field(config, "pad_token_id"))
    if eos is None:
        raise ModelError(
            f"checkpoint {where} has no {'EOS' if family.pad_with_eos else 'pad'} token: set "
            f"{'eos_token' if family.pad_with_eos else 'pad_token'} in its tokenizer_config.json"
        )

    mask = _mask_id(family, config, tokenizer)
    if family.is_diffusion:
        if mask is None:
            raise ModelError(
                f"checkpoint {where} has no mask token; the {family.name} family needs one: {family.mask_hint}"
            )
        rows = config_field(config, "embedding_size") or config_field(config, "vocab_size")
        if rows is not None and not 0 <= mask < rows:
            raise ModelError(
                f"checkpoint {where}: mask token id {mask} is outside the model's vocabulary of {rows} embeddings"
            )

    vocab = tokenizer.get_vocab()
    eot = next((vocab[t] for t in family.eot_tokens if t in vocab), eos)
    bos = tokenizer.bos_token_id if tokenizer.bos_token is not None else _first_id(config_field(config, "bos_token_id"))
    return SpecialIds(mask=mask, eos=eos, eot=eot, pad=pad, bos=bos)
