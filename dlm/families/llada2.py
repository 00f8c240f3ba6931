"""LLaDA 2.x (`llada2_moe`): a block-diffusion mixture-of-experts LM converted from Ling 2.0, sampled block by block
with an exact key/value cache and confidence-threshold parallel decoding (`dlm.samplers.llada2`)."""

from dlm.families.base import Family

LLADA2_ATTENTION_LORA_TARGETS = ("query_key_value", "dense")
# with target_modules="default+experts": every expert's, the shared experts' and the dense layers' projections
LLADA2_EXPERT_LORA_TARGETS = ("gate_proj", "up_proj", "down_proj")

LLADA2 = Family(
    name="llada2",
    architectures=("LLaDA2MoeModelLM",),
    model_types=("llada2_moe",),
    auto_class="AutoModel",
    shift_logits=False,
    mask_token_source="config",
    mask_tokens=("<|mask|>",),
    eot_tokens=("<|role_end|>",),
    pad_with_eos=True,
    uses_attention_mask=False,
    train_on_padding=True,
    chat_template_file="llada2.jinja",
    default_lora_targets=LLADA2_ATTENTION_LORA_TARGETS,
    output_head="lm_head",
    default_loss_weight="scheduler",
    sampler="llada2",
    block_size=32,
    expert_lora_targets=LLADA2_EXPERT_LORA_TARGETS,
)
