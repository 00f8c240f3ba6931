"""LLaDA-MoE: a masked-diffusion LM with a mixture-of-experts MLP (inclusionAI/LLaDA-MoE-7B-A1B-*), trained with the
MDLM loss and sampled like LLaDA."""

from dlm.families.base import Family

# LoRA adapts the attention by default; `MOE_EXPERT_LORA_TARGETS` adds the experts' and the dense layers' MLPs and
# the shared expert (the router `gate` is a plain module name to add by hand: adapting it changes the routing).
ATTENTION_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MOE_EXPERT_LORA_TARGETS = (*ATTENTION_LORA_TARGETS, "gate_proj", "up_proj", "down_proj")

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
)
