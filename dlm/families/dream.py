"""Dream: a masked-diffusion LM initialised from Qwen2.5 (shifted logits), sampled over the whole canvas."""

from dlm.families.base import CANVAS_CACHES, LLAMA_STYLE_LORA_TARGETS, Family

DREAM = Family(
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
    sampler="dream",
    cache_modes=CANVAS_CACHES,
)
