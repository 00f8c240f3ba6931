"""The model families dlm knows: how to recognise a checkpoint, load it, pad its data, find its special tokens.

One registry (`FAMILIES`) holds every per-family fact, so that training, evaluation and sampling code asks a
`Family` instead of testing model names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from dlm.errors import ModelError

LLAMA_STYLE_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CAUSAL_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
CAUSAL_MODEL_TYPES = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class Family:
    """Everything that differs between model families.

    `auto_class` is the transformers Auto class that loads the checkpoint.
    `mask_token_source` says where the mask id is read first: `config` (`config.mask_token_id`), `tokenizer`
    (`tokenizer.mask_token`) or `added` (a converted causal model: the id that `dlm.convert` stored in the config
    and the token it added to the tokenizer); `None` for a family that needs no mask token. `mask_tokens` are
    token strings taken as the mask when neither config nor tokenizer names one. `eot_tokens`: end-of-turn tokens,
    the first one in the vocabulary wins (else EOS ends a turn).
    Padding: `pad_with_eos` pads with EOS (else with the tokenizer's pad token, which for BERT is also the end
    token); `uses_attention_mask` passes an attention mask to the model (else pads are attended like any token);
    `train_on_padding` makes pad positions maskable and trained (the model learns where the answer ends).
    `shift_logits`: position i predicts token i+1 (Dream, causal LMs) rather than token i.
    `output_head` names the output projection (a full module name, or a suffix for several architectures): it is
    never quantized and never gets LoRA.
    """

    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    auto_class: str
    shift_logits: bool
    mask_token_source: str | None
    mask_tokens: tuple[str, ...]
    eot_tokens: tuple[str, ...]
    pad_with_eos: bool
    uses_attention_mask: bool
    train_on_padding: bool
    chat_template_file: str | None
    default_lora_targets: tuple[str, ...]
    output_head: str
    default_loss_weight: str | None

    @property
    def is_diffusion(self) -> bool:
        """True for masked-diffusion families, False for the autoregressive baseline."""
        return self.mask_token_source is not None

    @property
    def chat_template(self) -> str | None:
        """The family's default chat template (used when a checkpoint's tokenizer has none)."""
        return _read_template(self.chat_template_file) if self.chat_template_file else None


@cache
def _read_template(file_name: str) -> str:
    return resources.files("dlm.templates").joinpath(file_name).read_text(encoding="utf-8")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="llada",
            architectures=("LLaDAModelLM",),
            model_types=("llada",),
            auto_class="AutoModel",
            shift_logits=False,
            mask_token_source="config",
            mask_tokens=("<|mdm_mask|>",),
            eot_tokens=("<|eot_id|>",),
            pad_with_eos=True,
            uses_attention_mask=False,
            train_on_padding=True,
            chat_template_file="llada.jinja",
            default_lora_targets=("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"),
            output_head="model.transformer.ff_out",
            default_loss_weight="scheduler",
        ),
        Family(
            name="dream",
            architectures=("DreamModel",),
            model_types=("Dream",),
            auto_class="AutoModel",
            shift_logits=True,
            mask_token_source="config",
            mask_tokens=("<|mask|>",),
            eot_tokens=("<|im_end|>",),
            pad_with_eos=True,
            uses_attention_mask=True,
            train_on_padding=True,
            chat_template_file="dream.jinja",
            default_lora_targets=LLAMA_STYLE_LORA_TARGETS,
            output_head="lm_head",
            default_loss_weight="cart[geo_p:0.3]",
        ),
        Family(
            name="bert",
            architectures=("ModernBertForMaskedLM", "BertForMaskedLM"),
            model_types=("modernbert", "bert"),
            auto_class="AutoModelForMaskedLM",
            shift_logits=False,
            mask_token_source="tokenizer",
            mask_tokens=("[MASK]",),
            eot_tokens=("[/Answer]",),
            pad_with_eos=False,
            uses_attention_mask=False,
            train_on_padding=True,
            chat_template_file="bert.jinja",
            # ModernBERT: attn.Wqkv, attn.Wo, mlp.Wi, mlp.Wo; BERT: query/key/value and the dense layers of a block
            default_lora_targets=("Wqkv", "Wo", "Wi", "query", "key", "value", "output.dense", "intermediate.dense"),
            output_head="decoder",
            default_loss_weight="scheduler",
        ),
        Family(
            name="a2d",
            architectures=CAUSAL_ARCHITECTURES,
            model_types=CAUSAL_MODEL_TYPES,
            auto_class="AutoModelForCausalLM",
            shift_logits=False,
            mask_token_source="added",
            mask_tokens=("<|mdm_mask|>", "<|mask|>"),
            eot_tokens=("<|eot_id|>", "<|im_end|>"),
            pad_with_eos=True,
            uses_attention_mask=False,
            train_on_padding=True,
            chat_template_file=None,
            default_lora_targets=LLAMA_STYLE_LORA_TARGETS,
            output_head="lm_head",
            default_loss_weight="scheduler",
        ),
        Family(
            name="ar",
            architectures=CAUSAL_ARCHITECTURES,
            model_types=CAUSAL_MODEL_TYPES,
            auto_class="AutoModelForCausalLM",
            shift_logits=True,
            mask_token_source=None,
            mask_tokens=(),
            eot_tokens=("<|eot_id|>", "<|im_end|>"),
            pad_with_eos=True,
            uses_attention_mask=True,
            train_on_padding=False,
            chat_template_file=None,
            default_lora_targets=LLAMA_STYLE_LORA_TARGETS,
            output_head="lm_head",
            default_loss_weight=None,
        ),
    )
}


def supported_families_text() -> str:
    """One line per family naming its architectures, for error messages and help texts."""
    lines = []
    for f in FAMILIES.values():
        if f.name == "a2d":
            what = ", ".join(f.architectures) + " with is_causal=false and a mask token"
        elif f.name == "ar":
            what = ", ".join(f.architectures) + " (causal)"
        else:
            what = ", ".join(f.architectures) + f" (model_type {', '.join(f.model_types)})"
        lines.append(f"  {f.name}: {what}")
    return "\n".join(lines)


def get_family(name: str | Family) -> Family:
    """The family called `name` (case-insensitive); a `Family` is returned as it is."""
    if isinstance(name, Family):
        return name
    family = FAMILIES.get(str(name).strip().lower())
    if family is None:
        raise ModelError(f"unknown model family {name!r}; choose one of: {', '.join(FAMILIES)}")
    return family


def _field(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def detect_family(config: Any) -> Family:
    """The family of a checkpoint from its config (a `PretrainedConfig` or the `config.json` dict).

    Architectures are tried first, then `model_type`. Llama/Qwen2/Qwen3 checkpoints are `ar` unless their config
    says `is_causal: false`, which marks a model converted to diffusion (`a2d`).
    """
    architectures = list(_field(config, "architectures") or [])
    model_type = _field(config, "model_type")
    found = next((f for a in architectures for f in FAMILIES.values() if a in f.architectures), None)
    if found is None:
        found = next((f for f in FAMILIES.values() if model_type in f.model_types), None)
    if found is None:
        where = _field(config, "_name_or_path") or "the checkpoint"
        raise ModelError(
            f"cannot tell which model family {where} belongs to: its config has architectures={architectures} "
            f"and model_type={model_type!r}. Supported families and architectures:\n{supported_families_text()}\n"
            "If it is a variant of one of these, pass the family explicitly (family=...)."
        )
    if found.name in ("a2d", "ar"):
        return FAMILIES["a2d"] if _field(config, "is_causal") is False else FAMILIES["ar"]
    return found


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
    from_config = _first_id(_field(config, "mask_token_id"))
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
    where = _field(config, "_name_or_path") or getattr(tokenizer, "name_or_path", "") or "the checkpoint"
    tok_pad = tokenizer.pad_token_id if tokenizer.pad_token is not None else None
    tok_eos = tokenizer.eos_token_id if tokenizer.eos_token is not None else None
    if family.pad_with_eos:
        eos = tok_eos if tok_eos is not None else _first_id(_field(config, "eos_token_id"))
        pad = eos if family.is_diffusion or tok_pad is None else tok_pad
    else:
        # BERT: [PAD] ends the answer and fills the rest of the sequence
        eos = pad = tok_pad if tok_pad is not None else _first_id(_field(config, "pad_token_id"))
    if eos is None:
        raise ModelError(
            f"checkpoint {where} has no {'EOS' if family.pad_with_eos else 'pad'} token: set "
            f"{'eos_token' if family.pad_with_eos else 'pad_token'} in its tokenizer_config.json"
        )

    mask = _mask_id(family, config, tokenizer)
    if family.is_diffusion:
        if mask is None:
            how = (
                "convert it first with dlm.convert.convert_causal_to_diffusion, which adds one"
                if family.name == "a2d"
                else "set mask_token_id in its config.json or mask_token in its tokenizer_config.json"
            )
            raise ModelError(f"checkpoint {where} has no mask token; the {family.name} family needs one: {how}")
        rows = _field(config, "embedding_size") or _field(config, "vocab_size")
        if rows is not None and not 0 <= mask < rows:
            raise ModelError(
                f"checkpoint {where}: mask token id {mask} is outside the model's vocabulary of {rows} embeddings"
            )

    vocab = tokenizer.get_vocab()
    eot = next((vocab[t] for t in family.eot_tokens if t in vocab), eos)
    bos = tokenizer.bos_token_id if tokenizer.bos_token is not None else _first_id(_field(config, "bos_token_id"))
    return SpecialIds(mask=mask, eos=eos, eot=eot, pad=pad, bos=bos)
