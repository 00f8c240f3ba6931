"""LLaDA-MoE (inclusionAI/LLaDA-MoE-7B-A1B-Base/-Instruct) for transformers 5, loading the published checkpoints by
their own weight names.

LLaDA-MoE is a full-sequence masked-diffusion model (sampled like LLaDA, trained with the MDLM loss) on an OLMoE-style
decoder: pre-norm blocks of bidirectional grouped-query attention with per-head RMS-normalised queries and keys
(``qk_layernorm``), rotary embeddings (``partial_rotary_factor`` of each head), and a mixture-of-experts SwiGLU MLP:
a linear router (``mlp.gate``) picks ``num_experts_per_tok`` of ``num_experts`` experts per token by softmax
probability and sums their outputs weighted by those probabilities (not renormalised). Layers whose
``moe_layer_freq`` entry is 0 have a dense SwiGLU MLP instead; a ``shared_expert`` is added to MoE layers when
``shared_expert_intermediate_size`` is set. State-dict names are the official ones: ``model.embed_tokens``,
``model.layers.N.{input_layernorm,post_attention_layernorm}``, ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``...self_attn.{q,k}_norm``, ``model.layers.N.mlp.gate``, ``model.layers.N.mlp.experts.E.{gate,up,down}_proj``,
``model.norm``, ``lm_head``.

The published ``config.json`` says ``model_type: "llada"`` (the dense LLaDA's) with ``architectures:
["LLaDAMoEModelLM"]``; dllm's copy of the modeling code renames it ``"lladamoe"``. `LLaDAConfigByArchitecture`
(registered for ``"llada"`` in `dlm.models`) reads either: a config naming this architecture becomes an
`LLaDAMoEConfig`, which saves itself as ``"lladamoe"``. Its mask token id (156895, ``<|mask|>``) is not in the
published config: it is this config's default.

As the reference code: routing ignores ``norm_topk_prob``, ``routed_scaling_factor``, ``moe_router_score_function``
and the group settings (it always uses softmax top-k without renormalising); ``moe_router_enable_expert_bias`` adds
the ``expert_bias`` buffer to the routing probabilities. Only the tokens routed to an expert pass through it.

With ``output_router_logits`` (argument or config) the output carries each MoE layer's router logits and ``aux_loss``,
the Switch-Transformer load-balancing loss the reference's ``load_balancing_loss_func`` computes (over the tokens a
2-D ``attention_mask`` marks as real), unscaled: a trainer adds ``router_aux_loss_coef * aux_loss``. (The reference
model collects hidden states where router logits belong, so its own ``aux_loss`` fails; the fixture computes the
reference function on the router logits its gates produced.)
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
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from dlm.models.layers import GatedMLP, RMSNorm, apply_partial_rotary, eager_attention_forward
from dlm.models.llada import LLaDAConfig

ARCHITECTURE = "LLaDAMoEModelLM"
MASK_TOKEN_ID = 156895  # `<|mask|>` of the published tokenizer (the model card's generate(mask_id=156895))


@strict
class LLaDAMoEConfig(PretrainedConfig):
    """Configuration of LLaDA-MoE checkpoints; field names and meanings are those of the official ``config.json``.

    Defaults are LLaDA-MoE-7B-A1B's (as third-party ports quote its config.json). Fields the reference code reads but ignores (``norm_topk_prob``,
    ``routed_scaling_factor``, ``moe_router_score_function``, ``router_num_group``, ``router_topk_group``) are kept
    so a saved config matches the official one. ``moe_layer_freq`` None means every layer is MoE. The official
    ``auto_map`` (remote code for transformers 4) is dropped.
    """

    model_type = "lladamoe"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 157184
    hidden_size: int = 2048
    dense_intermediate_size: int | None = 8192
    expert_intermediate_size: int = 1024
    shared_expert_intermediate_size: int | None = None
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = False
    rope_theta: float | int = 50000.0
    partial_rotary_factor: float | int = 1.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    attention_dropout: float | int = 0.0
    clip_qkv: float | int | None = None
    num_experts_per_tok: int = 8
    num_experts: int = 64
    output_router_logits: bool = False
    router_aux_loss_coef: float = 0.01
    norm_topk_prob: bool | None = None
    qk_layernorm: bool | None = True
    moe_layer_freq: list[int] | None = None
    moe_router_enable_expert_bias: bool | None = None
    moe_router_score_function: str | None = None
    routed_scaling_factor: float | int = 1
    router_num_group: int = -2
    router_topk_group: int = -2
    tie_word_embeddings: bool = False
    pad_token_id: int | None = 156892
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 156892
    mask_token_id: int | None = MASK_TOKEN_ID

    def __post_init__(self, **kwargs) -> None:
        kwargs.pop("auto_map", None)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LLaDAMoEConfig: hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}), and that by num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.moe_layer_freq is not None and len(self.moe_layer_freq) != self.num_hidden_layers:
            raise ValueError(
                f"LLaDAMoEConfig: moe_layer_freq has {len(self.moe_layer_freq)} entries for "
                f"{self.num_hidden_layers} layers"
            )
        if not 0 < self.partial_rotary_factor <= 1:
            raise ValueError(
                f"LLaDAMoEConfig: partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}"
            )
        if self.rope_scaling is not None:
            raise NotImplementedError("LLaDAMoEConfig: rope_scaling is not implemented (published models use none)")
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.moe_layer_freq is None or self.moe_layer_freq[layer_idx] != 0


class LLaDAConfigByArchitecture(LLaDAConfig):
    """The class registered for ``model_type "llada"``: builds an `LLaDAMoEConfig` for a config naming
    ``LLaDAMoEModelLM`` (the published LLaDA-MoE ``config.json``), an `LLaDAConfig` otherwise. Never instantiated
    itself: both construction and ``from_dict`` return one of the two."""

    def __new__(cls, *args, **kwargs):  # AutoConfig.for_model("llada", ...)
        return _config_class(kwargs.get("architectures"))(*args, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> PretrainedConfig:
        return _config_class(config_dict.get("architectures")).from_dict(config_dict, **kwargs)


def _config_class(architectures: list[str] | None) -> type[PretrainedConfig]:
    return LLaDAMoEConfig if ARCHITECTURE in (architectures or ()) else LLaDAConfig


def rotary_cos_sin(
    config: LLaDAMoEConfig, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, L, rotary_dim] for `position_ids` [B, L] (computed in float32, cast to `dtype`)."""
    dim = int(config.head_dim * config.partial_rotary_factor)
    device = position_ids.device
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    with torch.autocast(device_type=device.type if device.type != "mps" else "cpu", enabled=False):
        freqs = position_ids[..., None].float() * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


class LLaDAMoEAttention(nn.Module):
    """Bidirectional grouped-query attention with optional per-head q/k RMS norms and ``clip_qkv``."""

    is_causal = False

    def __init__(self, config: LLaDAMoEConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        kv_dim = config.num_key_value_heads * self.head_dim
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, d, bias=bias)
        self.k_proj = nn.Linear(d, kv_dim, bias=bias)
        self.v_proj = nn.Linear(d, kv_dim, bias=bias)
        self.o_proj = nn.Linear(d, d, bias=bias)
        if config.qk_layernorm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        batch, length = x.shape[:2]
        heads = (batch, length, -1, self.head_dim)
        q, k, v = self.q_proj(x).view(heads), self.k_proj(x).view(heads), self.v_proj(x).view(heads)
        if self.config.qk_layernorm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.config.clip_qkv is not None:
            clip = self.config.clip_qkv
            q, k, v = q.clamp(-clip, clip), k.clamp(-clip, clip), v.clamp(-clip, clip)
        cos, sin = rotary
        q, k, v = (
            apply_partial_rotary(q.transpose(1, 2), cos, sin),
            apply_partial_rotary(k.transpose(1, 2), cos, sin),
            v.transpose(1, 2),
        )
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, _ = attention(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        return self.o_proj(out.reshape(batch, length, -1))


class LLaDAMoESparseMoeBlock(nn.Module):
    """Router ``gate`` and ``experts``; returns the weighted sum of each token's top-k experts and the router logits."""

    def __init__(self, config: LLaDAMoEConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            GatedMLP(config.hidden_size, config.expert_intermediate_size, config.hidden_act)
            for _ in range(config.num_experts)
        )
        if config.moe_router_enable_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(config.num_experts))
        else:
            self.expert_bias = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        router_logits = self.gate(tokens)
        probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
        if self.expert_bias is not None:
            probs = probs + self.expert_bias
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights.to(tokens.dtype)
        out = torch.zeros_like(tokens)
        for expert_idx in chosen.unique().tolist():  # only experts some token was routed to
            token_idx, slot = torch.where(chosen == expert_idx)
            expert_out = self.experts[expert_idx](tokens[token_idx]) * weights[token_idx, slot, None]
            out.index_add_(0, token_idx, expert_out.to(out.dtype))
        return out.reshape(shape), router_logits


class LLaDAMoEDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm attention and MLP (MoE, plus a shared expert if configured, or dense), each with a residual."""

    def __init__(self, config: LLaDAMoEConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = LLaDAMoEAttention(config, layer_idx)
        moe = config.is_moe_layer(layer_idx)
        self.mlp = (
            LLaDAMoESparseMoeBlock(config)
            if moe
            else GatedMLP(config.hidden_size, config.dense_intermediate_size, config.hidden_act)
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if moe and config.shared_expert_intermediate_size is not None:
            self.shared_expert = GatedMLP(config.hidden_size, config.shared_expert_intermediate_size, config.hidden_act)

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.self_attn(self.input_layernorm(x), rotary, attention_mask)
        h = self.post_attention_layernorm(x)
        router_logits = None
        if isinstance(self.mlp, LLaDAMoESparseMoeBlock):
            out, router_logits = self.mlp(h)
        else:
            out = self.mlp(h)
        if hasattr(self, "shared_expert"):
            out = out + self.shared_expert(h)
        return x + out, router_logits


class LLaDAMoEPreTrainedModel(PreTrainedModel):
    config_class = LLaDAMoEConfig
    config: LLaDAMoEConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDAMoEDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True


class LLaDAMoEModel(LLaDAMoEPreTrainedModel):
    """Embedding, decoder layers and final norm."""

    def __init__(self, config: LLaDAMoEConfig) -> None:
        super().__init__(config)
        # As the reference: the pad token's embedding row gets no gradient.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(LLaDAMoEDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
    ) -> MoeModelOutputWithPast:
        """Hidden states after ``norm``. ``attention_mask``: 2-D [B, L] (1 = real token; padded keys are hidden from
        every query) or a prepared 4-D mask [B, 1, L, L] (bool, True = attend; or additive), used as it is.
        ``position_ids`` [B, L] default to 0..L-1."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LLaDA-MoE forward: pass exactly one of input_ids or inputs_embeds")
        if attention_mask is not None and attention_mask.dim() not in (2, 4):
            raise ValueError(
                f"LLaDA-MoE forward: attention_mask must be 2-D [batch, length] or 4-D [batch, 1, length, length], "
                f"got shape {tuple(attention_mask.shape)}"
            )
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device).unsqueeze(0).expand(x.shape[0], -1)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=x, attention_mask=attention_mask)
        rotary = rotary_cos_sin(self.config, position_ids, x.dtype)
        want_hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        hidden_states: tuple[torch.Tensor, ...] = ()
        router_logits: tuple[torch.Tensor, ...] = ()
        for layer in self.layers:
            if want_hidden:
                hidden_states += (x,)
            x, logits = layer(x, rotary, mask)
            if logits is not None:
                router_logits += (logits,)
        x = self.norm(x)
        if want_hidden:
            hidden_states += (x,)
        want_router = output_router_logits if output_router_logits is not None else self.config.output_router_logits
        return MoeModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=hidden_states or None,
            router_logits=router_logits if want_router else None,
        )


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Switch-Transformer load-balancing loss over all MoE layers' router logits ([tokens, experts] each):
    ``num_experts * sum_e f_e * P_e`` with ``f_e`` the share of top-k choices that went to expert e and ``P_e`` its
    mean routing probability, over the tokens a 2-D ``attention_mask`` marks real (every token without one)."""
    logits = torch.cat([layer.float() for layer in router_logits], dim=0)
    probs = F.softmax(logits, dim=-1)
    chosen = F.one_hot(torch.topk(probs, top_k, dim=-1).indices, num_experts).float()  # [N, k, E]
    if attention_mask is None or attention_mask.dim() != 2:
        weight = torch.ones(logits.shape[0], device=logits.device)
    else:
        weight = attention_mask.reshape(-1).to(logits.device, torch.float32).repeat(len(router_logits))
    tokens_per_expert = (chosen * weight[:, None, None]).sum(0) / weight.sum()  # [k, E]
    prob_per_expert = (probs * weight[:, None]).sum(0) / weight.sum()  # [E]
    return (tokens_per_expert * prob_per_expert).sum() * num_experts


class LLaDAMoEModelLM(LLaDAMoEPreTrainedModel):
    """LLaDA-MoE with its output head ``lm_head``; ``logits[:, i]`` predicts token ``i`` (no shift)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LLaDAMoEConfig) -> None:
        super().__init__(config)
        self.model = LLaDAMoEModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
    ) -> MoeCausalLMOutputWithPast | tuple:
        """Logits [B, L, vocab]; with ``output_router_logits``, also the router logits and the unscaled ``aux_loss``.
        ``use_cache`` must not be true: a diffusion model has no key/value cache."""
        if use_cache:
            raise ValueError("LLaDA-MoE has no key/value cache: call it with use_cache=False or without use_cache")
        base = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
        )
        aux_loss = None
        if base.router_logits:
            aux_loss = load_balancing_loss(
                base.router_logits, self.config.num_experts, self.config.num_experts_per_tok, attention_mask
            )
        output = MoeCausalLMOutputWithPast(
            logits=self.lm_head(base.last_hidden_state),
            aux_loss=aux_loss,
            router_logits=base.router_logits,
            hidden_states=base.hidden_states,
        )
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()
