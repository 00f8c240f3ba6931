"""SDAR: block diffusion on Qwen3 (JetLM/SDAR-1.7B/4B/8B-Chat, SDAR-30B-A3B), with its own architecture and
model type; trained on the noisy and the clean sequence together (x_t ⊕ x_0) and decoded block by block with an
exact key/value cache (`dlm.samplers.sdar`).

Its SFT recipe pads every example with `<|endoftext|>` to a multiple of the block size and trains those pads, as
LLaDA's recipe does; the published tokenizers name `<|MASK|>` (151669), which the configs also give as
`mask_token_id`.
"""

from dlm.families.base import LLAMA_STYLE_LORA_TARGETS, Family

SDAR = Family(
    name="sdar",
    architectures=("SDARForCausalLM", "SDARMoeForCausalLM"),
    model_types=("sdar", "sdar_moe"),
    auto_class="AutoModelForCausalLM",
    shift_logits=False,
    mask_token_source="config",
    mask_tokens=("<|MASK|>",),
    eot_tokens=("<|im_end|>",),
    pad_with_eos=True,
    uses_attention_mask=False,
    train_on_padding=True,
    chat_template_file="sdar.jinja",
    default_lora_targets=LLAMA_STYLE_LORA_TARGETS,
    output_head="lm_head",
    default_loss_weight="scheduler",
    sampler="sdar",
    architectures_note="(model_type sdar, sdar_moe: block diffusion)",
    block_size=4,
)
