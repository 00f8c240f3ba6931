"""Turn a causal LM (Llama, Qwen2, Qwen3) into a diffusion LM checkpoint: masked diffusion over the whole sequence
(`kind="mdlm"`, family `a2d`) or block diffusion (`kind="bd3lm"`, family `bd3lm`).

Transformers 5 gives these models fully bidirectional attention (padding still masked) when their config says
`is_causal: false`, and saves that flag in `config.json`; so the conversion is a config change plus a mask token.
Block diffusion needs no other weights either: its block-causal attention is a mask passed at training time
(`dlm.block_diffusion`) and a KV cache at sampling time; the config records `block_diffusion: true` (what tells the
family apart) and the default `block_size`.
The converted weights are the causal model's: the model still has to be trained with the diffusion loss.
"""

from __future__ import annotations

from pathlib import Path

from dlm.checkpoints import find_checkpoint
from dlm.errors import ModelError
from dlm.families.base import CAUSAL_ARCHITECTURES, CAUSAL_MODEL_TYPES
from dlm.families.bd3lm import DEFAULT_BLOCK_SIZE

CONVERSION_KINDS = ("mdlm", "bd3lm")


def convert_causal_to_diffusion(
    src: str | Path,
    dst: str | Path,
    *,
    mask_token: str = "<|mdm_mask|>",
    kind: str = "mdlm",
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Path:
    """Save `src` (a Llama/Qwen2/Qwen3 checkpoint: local folder or cached hub id) to `dst` as an `a2d` (`kind`
    `mdlm`) or `bd3lm` (`kind` `bd3lm`, with default block size `block_size`) checkpoint.

    Sets `is_causal=False`, adds `mask_token` to the tokenizer when absent (growing the embeddings and output head
    only if the new id does not fit, as checkpoints often carry spare rows) and stores its id as
    `config.mask_token_id`. `dst` must not exist or be empty. Returns `dst`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind not in CONVERSION_KINDS:
        raise ModelError(f"unknown conversion kind {kind!r}; choose one of: {', '.join(CONVERSION_KINDS)}")
    if kind == "bd3lm" and (not isinstance(block_size, int) or block_size < 1):
        raise ModelError(f"block_size must be a positive integer, got {block_size!r}")
    source, raw = find_checkpoint(src)
    dst = Path(dst)
    architectures = raw.get("architectures") or []
    if raw.get("model_type") not in CAUSAL_MODEL_TYPES or not set(architectures) & set(CAUSAL_ARCHITECTURES):
        raise ModelError(
            f"cannot convert {source}: it has architectures={architectures} and model_type={raw.get('model_type')!r}; "
            f"conversion to diffusion supports {', '.join(CAUSAL_ARCHITECTURES)}"
        )
    if dst.exists() and any(dst.iterdir()):
        raise ModelError(f"cannot convert into {dst}: the folder is not empty")

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    tokenizer.add_special_tokens({"mask_token": mask_token})
    mask_id = tokenizer.convert_tokens_to_ids(mask_token)
    if mask_id >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(mask_id + 1)
    model.config.is_causal = False
    model.config.mask_token_id = mask_id
    if kind == "bd3lm":
        model.config.block_diffusion = True
        model.config.block_size = block_size
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst
