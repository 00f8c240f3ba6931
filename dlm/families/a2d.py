"""a2d: a causal LM (Llama, Qwen) converted to masked diffusion by `dlm.convert` (`is_causal: false` and an added
mask token), sampled like LLaDA."""

from dlm.families.base import CAUSAL_ARCHITECTURES, CAUSAL_MODEL_TYPES, LLAMA_STYLE_LORA_TARGETS, Family

A2D = Family(
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
    sampler="llada",
    detected_by=(("is_causal", False),),
    converted_from="ar",
    architectures_note="with is_causal=false and a mask token",
    mask_hint="convert it first with dlm.convert.convert_causal_to_diffusion, which adds one",
)
