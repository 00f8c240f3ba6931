"""ar: the autoregressive baseline (Llama, Qwen causal LMs), answered with transformers' `generate`."""

from dlm.families.base import CAUSAL_ARCHITECTURES, CAUSAL_MODEL_TYPES, LLAMA_STYLE_LORA_TARGETS, Family

AR = Family(
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
    sampler="causal",
    architectures_note="(causal)",
)
