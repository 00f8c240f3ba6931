"""LLaDA-MoE: a masked-diffusion LM with a mixture-of-experts MLP (inclusionAI/LLaDA-MoE-7B-A1B-*), trained with the
MDLM loss and sampled like LLaDA."""

from dlm.families.base import Family

# LoRA adapts the attention by default; target_modules "default+experts" adds the MLP projections of the experts (and
# of dense layers and the shared expert). The router `gate` gets LoRA only when named: adapting it changes the routing.
ATTENTION_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
EXPERT_LORA_TARGETS = (*ATTENTION_LORA_TARGETS, "gate_proj", "up_proj", "down_proj")

LLADA_MOE = Family(
    name="llada_moe",
    architectures=("LLaDAMoEModelLM",),
    model_types=("lladamoe",),
    auto_class="AutoModel",
    shift_logits=False,
    mask_token_source="config",
    mask_tokens=("<|mask|>",),
    eot_tokens=("<|role_end|>",),
    pad_with_eos=True,
    uses_attention_mask=False,
    train_on_padding=True,
    chat_template_file="llada_moe.jinja",
    default_lora_targets=ATTENTION_LORA_TARGETS,
    output_head="lm_head",
    default_loss_weight="scheduler",
    sampler="llada",
    expert_lora_targets=EXPERT_LORA_TARGETS,
)
