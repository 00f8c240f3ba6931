"""LLaDA (GSAI-ML/LLaDA-8B-*, LLaDA-1.5) for transformers 5, loading the official checkpoints by their own names.

The hub's remote code was written for transformers 4.x and does not run under 5.x, so this module re-implements the
``llama`` block type of the official modeling file: RMSNorm, rotary embeddings (in float32 when
``rope_full_precision``), grouped-query attention, SwiGLU ``ff_out(act(ff_proj(x)) * up_proj(x))`` and full
bidirectional attention. State-dict names are the official ones (``model.transformer.wte.weight``,
``model.transformer.blocks.N.{attn_norm,ff_norm,q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out}``,
``model.transformer.ln_f.weight``, ``model.transformer.ff_out.weight``); with ``weight_tying`` the head shares
``wte`` and is not saved, as in the official checkpoints.

Attention follows ``config._attn_implementation`` (``"sdpa"`` by default, ``"eager"``; any backend registered in
transformers' attention interface works the same way). A 2-D ``attention_mask`` [B, L] (1 = real token) hides padded
keys from every query; padded query rows still get (meaningless) logits. Without a mask every position attends to
every position, as the official sampler and SFT recipe use it.

Logits at masked positions only (what the diffusion loss needs) come from the base model and the head::

    hidden = model.model(input_ids, attention_mask).last_hidden_state  # after the final norm ``ln_f``
    logits = model.logits_from_hidden(hidden[positions])                # head, plus ``scale_logits`` if set

``forward(..., output_hidden_states=True).hidden_states[-1]`` is that same post-``ln_f`` tensor, and
``get_output_embeddings()`` returns the head module (``model.transformer.ff_out``), which 4-bit loading leaves
unquantized by default. A user-given ``BitsAndBytesConfig(llm_int8_skip_modules=[...])`` replaces that default and
must name ``"model.transformer.ff_out"`` in full: a bare ``"ff_out"`` also matches every block's ``ff_out``.

Only the options that published LLaDA checkpoints use are implemented (``block_type="llama"``, RMS norms, RoPE, no
ALiBi, no q/k norms, ``block_group_size=1``); a config asking for another raises ``NotImplementedError`` naming it.
Forward takes no ``**kwargs`` on purpose: transformers' Trainer then divides a custom loss by the accumulation steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from dlm.models.cache import CanvasCache
from dlm.models.layers import eager_attention_forward, rotate_half

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


@strict
class LLaDAConfig(PretrainedConfig):
    """Configuration of LLaDA checkpoints; field names and meanings are those of the official ``config.json``.

    Defaults are LLaDA-8B's. Fields this implementation does not use (``init_device``, ``flash_attention``,
    ``precision``, ...) are kept so that a saved config matches the official one; unknown fields are kept too.
    The ``auto_map`` of the official configs (pointing at remote code that fails on transformers 5) is dropped, so a
    saved checkpoint loads through the local registration even when a caller passes ``trust_remote_code=True``.
    """

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "intermediate_size": "mlp_hidden_size",
        "max_position_embeddings": "max_sequence_length",
        "tie_word_embeddings": "weight_tying",
    }

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = None
    n_layers: int = 32
    mlp_ratio: int = 4
    mlp_hidden_size: int | None = 12288
    activation_type: str = "silu"
    block_type: str = "llama"
    block_group_size: int = 1
    alibi: bool = False
    alibi_bias_max: float | int = 8.0
    rope: bool = True
    rope_full_precision: bool = True
    rope_theta: float | int = 500000.0
    flash_attention: bool = False
    attention_dropout: float | int = 0.0
    multi_query_attention: bool | None = None
    attention_layer_norm: bool = False
    attention_layer_norm_with_affine: bool = True
    residual_dropout: float | int = 0.0
    embedding_dropout: float | int = 0.0
    input_emb_norm: bool = False
    layer_norm_type: str = "rms"
    layer_norm_with_affine: bool = True
    bias_for_layer_norm: bool | None = None
    rms_norm_eps: float = 1e-5
    max_sequence_length: int = 4096
    include_bias: bool = False
    include_qkv_bias: bool = False
    scale_logits: bool = False
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    weight_tying: bool = False
    init_device: str | None = None
    init_fn: str = "mitchell"
    init_std: float | int = 0.02
    init_cutoff_factor: float | int | None = None
    precision: str | None = None
    use_cache: bool = False
    bos_token_id: int | None = 126080
    eos_token_id: int | list[int] | None = 126081
    pad_token_id: int | None = 126081
    mask_token_id: int | None = 126336

    def __post_init__(self, **kwargs) -> None:
        kwargs.pop("auto_map", None)
        if self.d_model % self.n_heads:
            raise ValueError(f"LLaDAConfig: d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.effective_n_kv_heads:
            raise ValueError(
                f"LLaDAConfig: n_heads ({self.n_heads}) must be divisible by the number of key/value heads "
                f"({self.effective_n_kv_heads}, from n_kv_heads={self.n_kv_heads}, "
                f"multi_query_attention={self.multi_query_attention})"
            )
        super().__post_init__(**kwargs)

    @property
    def effective_n_kv_heads(self) -> int:
        """Number of key/value heads, resolved as the official config does (n_kv_heads, else 1 for MQA, else n_heads)."""
        if self.n_kv_heads is not None:
            return self.n_kv_heads
        return 1 if self.multi_query_attention else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_hidden_size(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model


def _check_supported(config: LLaDAConfig) -> None:
    unsupported = {
        "block_type": (config.block_type, "llama"),
        "layer_norm_type": (config.layer_norm_type, "rms"),
        "alibi": (config.alibi, False),
        "rope": (config.rope, True),
        "attention_layer_norm": (config.attention_layer_norm, False),
        "block_group_size": (config.block_group_size, 1),
    }
    for field, (value, supported) in unsupported.items():
        if value != supported:
            raise NotImplementedError(
                f"LLaDA config field {field}={value!r} is not implemented (supported: {supported!r}, the value "
                "every published LLaDA checkpoint uses)"
            )
    if config.activation_type not in _ACTIVATIONS:
        raise NotImplementedError(
            f"LLaDA config field activation_type={config.activation_type!r} is not implemented for llama blocks "
            f"(supported: {sorted(_ACTIVATIONS)})"
        )


class LLaDARMSNorm(nn.Module):
    """RMS norm computed in float32 and cast back before the affine weight, as the official ``RMSLayerNorm``."""

    def __init__(self, size: int, eps: float, affine: bool, bias: bool) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size)) if affine else None
        self.bias = nn.Parameter(torch.zeros(size)) if affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)).to(dtype)
        if self.weight is not None:
            x = self.weight * x
        if self.bias is not None:
            x = x + self.bias
        return x


def rotary_cos_sin(config: LLaDAConfig, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 cos/sin tables [seq_len, head_dim], made per call so that no buffer needs materialising at load."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool) -> torch.Tensor:
    dtype = x.dtype
    if full_precision:
        x = x.float()
    else:
        cos, sin = cos.to(dtype), sin.to(dtype)
    return ((x * cos) + (rotate_half(x) * sin)).to(dtype)


class LLaDABlock(GradientCheckpointingLayer):
    """The official ``LLaDALlamaBlock``: pre-norm attention and SwiGLU feed-forward, each with a residual."""

    is_causal = False

    def __init__(self, config: LLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.n_heads // config.effective_n_kv_heads
        self.scaling = self.head_dim**-0.5
        d, kv_dim, hidden = config.d_model, config.effective_n_kv_heads * self.head_dim, config.ffn_hidden_size
        norm_bias = config.include_bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm
        qkv_bias = config.include_bias or config.include_qkv_bias
        self.attn_norm = LLaDARMSNorm(d, config.rms_norm_eps, config.layer_norm_with_affine, norm_bias)
        self.ff_norm = LLaDARMSNorm(d, config.rms_norm_eps, config.layer_norm_with_affine, norm_bias)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_proj = nn.Linear(d, hidden, bias=config.include_bias)
        self.up_proj = nn.Linear(d, hidden, bias=config.include_bias)
        self.ff_out = nn.Linear(hidden, d, bias=config.include_bias)
        self.act = _ACTIVATIONS[config.activation_type]
        self.dropout = nn.Dropout(config.residual_dropout)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: CanvasCache | None = None,
    ) -> torch.Tensor:
        batch, length = x.shape[:2]
        h = self.attn_norm(x)
        q = self.q_proj(h).view(batch, length, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, length, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, length, -1, self.head_dim).transpose(1, 2)
        cos, sin = rotary
        q = _apply_rotary(q, cos, sin, self.config.rope_full_precision)
        k = _apply_rotary(k, cos, sin, self.config.rope_full_precision)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, {"query": q})
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        att, _ = attention(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        x = x + self.dropout(self.attn_out(att.reshape(batch, length, -1)))
        h = self.ff_norm(x)
        return x + self.dropout(self.ff_out(self.act(self.ff_proj(h)) * self.up_proj(h)))


class LLaDAPreTrainedModel(PreTrainedModel):
    config_class = LLaDAConfig
    config: LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True


class LLaDAModel(LLaDAPreTrainedModel):
    """Embedding, blocks and final norm; also holds the output head ``transformer.ff_out`` (official layout)."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        _check_supported(config)
        d = config.d_model
        rows = config.embedding_size or config.vocab_size
        norm_bias = config.include_bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(rows, d),
                "emb_drop": nn.Dropout(config.embedding_dropout),
                "blocks": nn.ModuleList(LLaDABlock(config, i) for i in range(config.n_layers)),
                "ln_f": LLaDARMSNorm(d, config.rms_norm_eps, config.layer_norm_with_affine, norm_bias),
                # The official model has no bias on a tied head; an untied one follows include_bias.
                "ff_out": nn.Linear(d, rows, bias=config.include_bias and not config.weight_tying),
            }
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: CanvasCache | None = None,
        first_layer: int = 0,
    ) -> BaseModelOutput | tuple:
        """Hidden states after ``ln_f``; ``hidden_states`` = (embeddings, outputs of blocks 0..n-2, post-``ln_f``),
        i.e. each block's input, then the final output.

        ``past_key_values``: a `CanvasCache`, recorded when empty; when filled, the input is a span of the cached
        canvas and ``attention_mask`` covers the whole canvas (see `dlm.models.cache`). ``first_layer`` > 0 resumes
        a pass at that block: ``inputs_embeds`` are the hidden states entering it (``hidden_states[first_layer]`` of
        an earlier pass), and ``hidden_states`` starts there."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LLaDA forward: pass exactly one of input_ids or inputs_embeds")
        if not 0 <= first_layer < self.config.n_layers or (first_layer and inputs_embeds is None):
            raise ValueError(
                f"LLaDA forward: first_layer must be in [0, {self.config.n_layers}) and, when > 0, come with the "
                f"hidden states entering that block as inputs_embeds; got {first_layer}"
            )
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        x = self.transformer.wte(input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.input_emb_norm and not first_layer:
            x = x * self.config.d_model**0.5
        x = self.transformer.emb_drop(x) if not first_layer else x
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(
                f"LLaDA forward: attention_mask must be 2-D [batch, length] with 1 for real tokens, "
                f"got shape {tuple(attention_mask.shape)}"
            )
        mask, rotary = self._mask_and_rotary(x, attention_mask, past_key_values)
        hidden_states: tuple[torch.Tensor, ...] = ()
        for block in self.transformer.blocks[first_layer:]:
            if output_hidden_states:
                hidden_states += (x,)
            x = block(x, rotary=rotary, attention_mask=mask, cache=past_key_values)
        x = self.transformer.ln_f(x)
        if output_hidden_states:
            hidden_states += (x,)
        output = BaseModelOutput(last_hidden_state=x, hidden_states=hidden_states or None)
        return output if return_dict else output.to_tuple()

    def _mask_and_rotary(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, cache: CanvasCache | None
    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        if cache is None or not cache.filled:
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=x, attention_mask=attention_mask)
            return mask, rotary_cos_sin(self.config, x.shape[1], x.device)
        batch, length = x.shape[:2]
        positions = cache.positions(length, x.device)
        cos, sin = rotary_cos_sin(self.config, int(positions.max()) + 1, x.device)
        if positions.dim() == 2:  # per-row spans: tables [B, 1, n, D], broadcast over heads
            rotary = cos[positions][:, None], sin[positions][:, None]
        else:
            rotary = cos[positions], sin[positions]
        return cache.attention_bias(attention_mask, batch, length, x.dtype), rotary


class LLaDAModelLM(LLaDAPreTrainedModel):
    """LLaDA with its output head; ``logits[:, i]`` predicts token ``i`` (no shift)."""

    _tied_weights_keys = {"model.transformer.ff_out.weight": "model.transformer.wte.weight"}

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.transformer.ff_out

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.transformer.ff_out = value

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        # LLaDA sizes wte and the head from embedding_size, so keep it in step with vocab_size.
        self.config.embedding_size = embeddings.num_embeddings
        return embeddings

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the output head (and ``scale_logits``) to post-``ln_f`` hidden states of any leading shape."""
        logits = self.model.transformer.ff_out(hidden)
        if self.config.scale_logits:
            logits = logits * self.config.d_model**-0.5
        return logits

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
        past_key_values: CanvasCache | None = None,
    ) -> MaskedLMOutput | tuple:
        """Logits [B, L, embedding_size]. ``use_cache`` is accepted for callers that pass it and must not be true:
        the only cache is a diffusion sampler's `CanvasCache`, passed as ``past_key_values``."""
        if use_cache:
            raise ValueError("LLaDA has no key/value cache: call it with use_cache=False or without use_cache")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        base = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            past_key_values=past_key_values,
        )
        output = MaskedLMOutput(
            logits=self.logits_from_hidden(base.last_hidden_state), hidden_states=base.hidden_states
        )
        return output if return_dict else output.to_tuple()
