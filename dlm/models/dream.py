"""Dream (Dream-org/Dream-v0-*-7B) for transformers 5: Qwen2 weights and blocks with bidirectional attention.

Dream is Qwen2.5 trained as a masked diffusion LM, so this module reuses transformers' ``Qwen2Model`` (embedding with
``padding_idx = pad_token_id``, q/k/v biases, RMSNorm, RoPE, every attention backend transformers offers) with
``is_causal=False``, which transformers 5 turns into a full bidirectional mask. Weight names are Qwen2's, as in the
official checkpoints: ``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``model.layers.N.mlp.{gate,up,down}_proj``, ``model.layers.N.{input,post_attention}_layernorm``, ``model.norm``,
``lm_head``.

A 2-D ``attention_mask`` [B, L] (1 = real token) hides padded keys and, as in the official code, gives padded
queries nothing to attend to (with SDPA their attention output is zero; Dream trains on those EOS pads). As in
Qwen2 (and the official Dream code), RoPE tables are cast to the activation dtype.

Logits are returned unshifted: ``logits[:, i]`` is the model's output at position ``i``, which Dream trains to predict
token ``i + 1``; the shift belongs to the loss and the sampler. For logits at selected positions only::

    hidden = model.model(input_ids, attention_mask=mask).last_hidden_state  # after the final norm
    logits = model.logits_from_hidden(hidden[positions])

``forward(..., output_hidden_states=True).hidden_states[-1]`` is that same post-norm tensor. Forward takes
``**kwargs`` (passed on to the Qwen2 layers), as the official Dream model does; ``past_key_values`` may be a
diffusion sampler's `CanvasCache` (recorded when empty; when filled, the input is a span of the cached canvas and a
2-D ``attention_mask`` covers the whole canvas; see `dlm.models.cache`).

The official ``config.json`` stores ``rope_theta``/``rope_scaling``; transformers 5 folds them into
``rope_parameters`` and saves that. Its ``auto_map`` (remote code that fails on transformers 5) is dropped.
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import Qwen2Config, Qwen2Model
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.qwen2.modeling_qwen2 import Qwen2PreTrainedModel

from dlm.models.cache import CanvasCache


@strict
class DreamConfig(Qwen2Config):
    """Qwen2 configuration with ``model_type="Dream"``, ``is_causal=False``, ``mask_token_id``; defaults of Dream-7B."""

    model_type = "Dream"
    default_theta = 1_000_000.0

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    max_position_embeddings: int = 131072
    use_cache: bool = False
    sliding_window: int | None = None
    is_causal: bool = False
    mask_token_id: int | None = 151666
    pad_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151643

    def __post_init__(self, **kwargs) -> None:
        kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)


def _pairwise_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The official Dream mask [B, 1, L, L]: query i attends to key j only when both are real tokens, so a padded
    position's query attends to nothing (SDPA then outputs zeros there). Dream SFT trains on EOS padding under an
    attention mask, so those rows enter the loss and must match the reference. Not used with eager attention, whose
    softmax over a fully masked row is uniform rather than empty (its padded rows differ; real rows are equal)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    real = attention_mask.bool()
    return real[:, None, :, None] & real[:, None, None, :]


class DreamModel(Qwen2PreTrainedModel):
    """Dream with its ``lm_head``; returns ``MaskedLMOutput`` with unshifted logits."""

    config_class = DreamConfig
    config: DreamConfig
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply ``lm_head`` to post-norm hidden states of any leading shape."""
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(
                f"Dream forward: attention_mask must be 2-D [batch, length] with 1 for real tokens, "
                f"got shape {tuple(attention_mask.shape)}"
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        kwargs.pop("use_cache", None)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask
            if self.config._attn_implementation == "eager"
            else _pairwise_mask(attention_mask),
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
        }
        if isinstance(kwargs.get("past_key_values"), CanvasCache):
            inputs = self._canvas_cache_inputs(kwargs["past_key_values"], inputs, attention_mask)
        base = self.model(**inputs, output_hidden_states=output_hidden_states, use_cache=False, **kwargs)
        output = MaskedLMOutput(
            logits=self.logits_from_hidden(base.last_hidden_state),
            hidden_states=base.hidden_states,
            attentions=base.attentions,
        )
        return output if return_dict else output.to_tuple()

    def _canvas_cache_inputs(
        self, cache: CanvasCache, inputs: dict, attention_mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor | dict | None]:
        """Qwen2Model inputs with explicit positions and a prepared mask, so that it never treats the cache as a
        growing autoregressive one; a recording pass gets the mask an uncached pass gets."""
        embeds = inputs["inputs_embeds"]
        if embeds is None:
            embeds = self.model.embed_tokens(inputs["input_ids"])
        batch, length = embeds.shape[:2]
        if cache.filled:
            positions = cache.positions(length, embeds.device)
            positions = positions if positions.dim() == 2 else positions[None]
            mask = cache.attention_bias(attention_mask, batch, length, embeds.dtype)
        else:
            positions = torch.arange(length, device=embeds.device)[None]
            mask = create_causal_mask(
                config=self.config,
                inputs_embeds=embeds,
                attention_mask=inputs["attention_mask"],
                past_key_values=None,
                position_ids=positions,
            )
        return {
            "input_ids": None,
            "inputs_embeds": embeds,
            "position_ids": positions,
            "attention_mask": {"full_attention": mask},
        }
