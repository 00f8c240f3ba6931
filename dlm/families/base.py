"""`Family`: everything that differs between model families, as data that training, evaluation and sampling read
instead of testing a family's name. Each family's instance lives in its own module (`dlm.families.<name>`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

LLAMA_STYLE_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CAUSAL_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
CAUSAL_MODEL_TYPES = ("llama", "qwen2", "qwen3")
NO_CACHE = ("none",)
CANVAS_CACHES = ("none", "prefix", "dual")  # the sampler's `cache` modes a `dlm.models` CanvasCache serves
# and Elastic-Cache's adaptive refresh, for models that hand their attention queries to the cache (LLaDA)
WATCHED_CACHES = (*CANVAS_CACHES, "elastic")
MASK_ID_HINT = "set mask_token_id in its config.json or mask_token in its tokenizer_config.json"


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
    `expert_lora_targets`: for a mixture-of-experts family, the MLP module names LoRA adds to the defaults with
    `target_modules="default+experts"` (empty: the family has no experts).
    `output_head` names the output projection (a full module name, or a suffix for several architectures): it is
    never quantized and never gets LoRA.
    Behaviour: `sampler` names the algorithm that answers prompts (a module of `dlm.samplers`: `llada`, `dream`,
    `causal`, `bd3lm`, `sdar`, `llada2`); `cache_modes` are the sampler `cache` settings its models serve; `default_loss_weight` its diffusion
    loss weighting. The family's name is also its training method.
    `block_size`: block diffusion — trained with the x_t ⊕ x_0 objective and sampled block by block with this default
    block size; None for full-sequence diffusion.
    Detection: families that share architectures are told apart by `detected_by` ((config key, value) pairs that mark
    the family; the family without them is the default); `converted_from` names the family whose checkpoints this one
    is made from (`dlm.convert`), `architectures_note` how `supported_families_text` describes its checkpoints, and
    `mask_hint` what to do when a checkpoint has no mask token.
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
    sampler: str
    cache_modes: tuple[str, ...] = NO_CACHE
    block_size: int | None = None
    detected_by: tuple[tuple[str, Any], ...] = ()
    converted_from: str | None = None
    architectures_note: str | None = None
    mask_hint: str = MASK_ID_HINT
    block_size: int | None = None
    expert_lora_targets: tuple[str, ...] = ()

    @property
    def is_diffusion(self) -> bool:
        """True for masked-diffusion families, False for the autoregressive baseline."""
        return self.mask_token_source is not None

    @property
    def chat_template(self) -> str | None:
        """The family's default chat template (used when a checkpoint's tokenizer has none)."""
        return read_template(self.chat_template_file) if self.chat_template_file else None

    def describe(self) -> str:
        """One line naming the family and the checkpoints it covers."""
        what = self.architectures_note or f"(model_type {', '.join(self.model_types)})"
        return f"  {self.name}: {', '.join(self.architectures)} {what}"


@cache
def read_template(file_name: str) -> str:
    """A chat template shipped in `dlm/templates`."""
    return resources.files("dlm.templates").joinpath(file_name).read_text(encoding="utf-8")
