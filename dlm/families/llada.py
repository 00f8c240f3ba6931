"""LLaDA: a masked-diffusion LM trained from scratch, sampled block by block with low-confidence remasking."""

from dlm.families.base import WATCHED_CACHES, Family

LLADA = Family(
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
    sampler="llada",
    cache_modes=WATCHED_CACHES,
)
