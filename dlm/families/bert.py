"""BERT-style masked LMs (ModernBERT, BERT) used as diffusion LMs: [PAD] ends the answer, LLaDA's sampler."""

from dlm.families.base import Family

BERT = Family(
    name="bert",
    architectures=("ModernBertForMaskedLM", "BertForMaskedLM"),
    model_types=("modernbert", "bert"),
    auto_class="AutoModelForMaskedLM",
    shift_logits=False,
    mask_token_source="tokenizer",
    mask_tokens=("[MASK]",),
    eot_tokens=("[/Answer]",),
    pad_with_eos=False,
    uses_attention_mask=False,
    train_on_padding=True,
    chat_template_file="bert.jinja",
    # ModernBERT: attn.Wqkv, attn.Wo, mlp.Wi, mlp.Wo; BERT: query/key/value and the dense layers of a block
    default_lora_targets=("Wqkv", "Wo", "Wi", "query", "key", "value", "output.dense", "intermediate.dense"),
    output_head="decoder",
    default_loss_weight="scheduler",
    sampler="llada",
)
