"""bd3lm: a causal LM (Llama, Qwen) converted to block diffusion (BD3LM) by `dlm.convert`: `is_causal: false`, an
added mask token, and `block_diffusion: true` with its `block_size` in the config.

Trained with the x_t ⊕ x_0 objective (`dlm.block_diffusion`: a noisy block attends to itself and to the clean blocks
before it) and sampled block by block; the checkpoint's `block_size` is the default, `DEFAULT_BLOCK_SIZE` (dllm's
a2d BD3LM recipe) when the config has none."""

from dlm.families.base import CAUSAL_ARCHITECTURES, CAUSAL_MODEL_TYPES, LLAMA_STYLE_LORA_TARGETS, Family

DEFAULT_BLOCK_SIZE = 32

BD3LM = Family(
    name="bd3lm",
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
    sampler="bd3lm",
    detected_by=(("is_causal", False), ("block_diffusion", True)),
    converted_from="ar",
    architectures_note="with is_causal=false, block_diffusion=true and a mask token",
    mask_hint="convert it first with dlm.convert.convert_causal_to_diffusion(kind='bd3lm'), which adds one",
    block_size=DEFAULT_BLOCK_SIZE,
)
