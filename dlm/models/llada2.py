"""LLaDA 2.x (``inclusionAI/LLaDA2.0-mini``, ``-flash``; ``model_type="llada2_moe"``) for transformers 5.

A block-diffusion mixture-of-experts LM converted from Ling 2.0: fused ``query_key_value`` projection with per-head
RMS norms on queries and keys, rotary embeddings on the first ``partial_rotary_factor`` of each head, then an MoE
feed-forward (dense SwiGLU in the first ``first_k_dense_replace`` layers). The router scores experts with a sigmoid,
adds the load-balancing ``expert_bias`` only to choose them (auxiliary-loss-free balancing: the reference trains no
router loss), keeps the experts of the ``topk_group`` best of ``n_group`` groups (a group scores the sum of its two
best experts), takes the ``num_experts_per_tok`` best, and weighs their outputs by the sigmoid scores normalised to sum
to one and scaled by ``routed_scaling_factor``; ``num_shared_experts`` always-on experts are added.

State-dict names are the published ones (``model.word_embeddings``, ``model.layers.N.attention.{query_key_value,
query_layernorm,key_layernorm,dense}``, ``model.layers.N.mlp.{gate.weight,gate.expert_bias,experts.E.*,
shared_experts.*}`` with ``*`` in ``gate_proj, up_proj, down_proj``, ``model.layers.N.{input,post_attention}_layernorm``,
``model.norm``, ``lm_head``). Experts stay separate ``nn.Linear`` modules so that checkpoints load as saved and LoRA
can target them; tokens are dispatched by sorting them by expert, so each expert runs once on its own tokens.

Attention masks: a 4-D mask [B, 1, Lq, Lk] is used as given (bool: True attends; float: added to the scores), which
is how block-causal masks for training and sampling arrive; a 2-D padding mask [B, Lk] (1 = real token) hides padded
keys from every query; no mask lets every query see every key (the reference's default with SDPA). With
``past_key_values`` (a `DynamicCache`) the keys are the cached ones followed by the input's, and ``position_ids``
default to continuing after the cache. Logits at position i predict token i (no shift).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from dlm.models.layers import GatedMLP, RMSNorm, apply_partial_rotary, eager_attention_forward


@strict
class LLaDA2MoeConfig(PretrainedConfig):
    """Configuration of LLaDA 2.x checkpoints; field names and meanings are those of the published ``config.json``.

    Defaults are the reference configuration class's. ``num_key_value_heads=0`` means as many as the attention
    heads; ``head_dim=None`` means ``hidden_size // num_attention_heads``. Fields the published configs carry for
    other runtimes (``norm_topk_prob``, ``score_function``, ``router_dtype``, ...) are kept but not used: the
    reference always normalises the top-k sigmoid scores and routes in float32. The ``auto_map`` to remote code is
    dropped, so a saved checkpoint loads through the local registration.
    """

    model_type = "llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 30592
    hidden_size: int = 1024
    intermediate_size: int | None = None
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 0
    hidden_act: str = "silu"
    use_qkv_bias: bool = False
    use_qk_norm: bool = True
    use_bias: bool = True
    rms_norm_eps: float = 1e-5
    norm_head: bool = False
    tie_word_embeddings: bool = False
    embedding_dropout: float | int = 0.1
    attention_dropout: float | int = 0.1
    output_dropout: float | int = 0.1
    initializer_range: float = 0.02
    max_position_embeddings: int = 16384
    rope_theta: float | int = 10000.0
    use_cache: bool = True
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    rope_scaling: dict | None = None
    pad_token_id: int | None = 126081
    num_experts: int | None = 16
    num_shared_experts: int | None = 0
    num_experts_per_tok: int = 2
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float | int = 2.5
    moe_intermediate_size: int | None = None
    first_k_dense_replace: int = 0
    head_dim: int | None = None
    output_router_logits: bool = False
    partial_rotary_factor: float | int = 0.5
    mask_token_id: int | None = None

    def __post_init__(self, **kwargs) -> None:
        kwargs.pop("auto_map", None)
        if not self.num_key_value_heads:
            self.num_key_value_heads = self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LLaDA2MoeConfig: num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.num_experts and self.num_experts % self.n_group:
            raise ValueError(f"LLaDA2MoeConfig: num_experts ({self.num_experts}) must be divisible by n_group")
        if self.rope_scaling is not None:
            raise NotImplementedError(
                f"LLaDA2MoeConfig: rope_scaling={self.rope_scaling!r} is not implemented (published LLaDA 2.x "
                "checkpoints use plain RoPE: rope_scaling null)"
            )
        super().__post_init__(**kwargs)

    @property
    def rope_dim(self) -> int:
        """Dimensions of each head that get rotary embeddings (the rest pass through)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer_idx: int) -> bool:
        return bool(self.num_experts) and layer_idx >= self.first_k_dense_replace


def rotary_cos_sin(
    config: LLaDA2MoeConfig, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, L, rope_dim] for positions [B, L], computed in float32 and cast to `dtype`."""
    dim = config.rope_dim
    exponents = torch.arange(0, dim, 2, device=position_ids.device, dtype=torch.float32) / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    freqs = position_ids[..., None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class LLaDA2MoeAttention(nn.Module):
    """Grouped-query attention with a fused qkv projection, q/k RMS norms and partial RoPE; never causal by itself."""

    is_causal = False

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim**-0.5
        width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, width, bias=config.use_qkv_bias)
        if config.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        batch, length = hidden.shape[:2]
        qkv = self.query_key_value(hidden).view(batch, length, -1, self.head_dim).transpose(1, 2)
        query, key, value = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        if self.config.use_qk_norm:
            query, key = self.query_layernorm(query), self.key_layernorm(key)
        query, key = apply_partial_rotary(query, *rotary), apply_partial_rotary(key, *rotary)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, _ = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        return self.dense(output.reshape(batch, length, -1))


class LLaDA2MoeGate(nn.Module):
    """Sigmoid router with group-limited top-k choice; `expert_bias` steers the choice, not the weights."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(expert ids [T, k], float32 weights [T, k], router logits [T, E]) for tokens [T, H]."""
        config = self.config
        logits = F.linear(hidden.float(), self.weight.float())
        scores = logits.sigmoid()
        choice = (scores + self.expert_bias).view(-1, config.n_group, config.num_experts // config.n_group)
        group_scores = choice.topk(2, dim=-1).values.sum(-1)
        groups = group_scores.topk(config.topk_group, dim=-1, sorted=False).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, groups, True)
        choice = choice.masked_fill(~keep.unsqueeze(-1), float("-inf")).flatten(1)
        experts = choice.topk(config.num_experts_per_tok, dim=-1).indices
        weights = scores.gather(1, experts)
        if config.num_experts_per_tok > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return experts, weights * config.routed_scaling_factor, logits


class LLaDA2MoeSparseMoeBlock(nn.Module):
    """Routed experts plus the shared experts."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        self.gate = LLaDA2MoeGate(config)
        self.experts = nn.ModuleList(
            GatedMLP(config.hidden_size, config.moe_intermediate_size, config.hidden_act)
            for _ in range(config.num_experts)
        )
        self.shared_experts = (
            GatedMLP(config.hidden_size, config.moe_intermediate_size * config.num_shared_experts, config.hidden_act)
            if config.num_shared_experts
            else None
        )

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output [B, L, H], router logits [B, L, E])."""
        tokens = hidden.reshape(-1, hidden.shape[-1])
        experts, weights, logits = self.gate(tokens)
        routed = self._dispatch(tokens, experts, weights).view_as(hidden)
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(hidden)
        return routed, logits.view(*hidden.shape[:-1], -1)

    def _dispatch(self, tokens: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Sum over each token's experts of weight * expert(token): assignments sorted by expert, so each expert
        runs once on a contiguous slice; the weighted sum is taken in float32. In training every expert runs, on no
        tokens if none chose it, so that all parameters take part in the graph (zero gradients instead of none:
        DDP needs no `find_unused_parameters`)."""
        top_k = experts.shape[1]
        order = experts.flatten().argsort(stable=True)
        counts = torch.bincount(experts.flatten(), minlength=len(self.experts)).tolist()
        sorted_tokens = tokens[order // top_k]
        chunks = enumerate(sorted_tokens.split(counts))
        outputs = [self.experts[e](chunk) for e, chunk in chunks if counts[e] or self.training]
        per_assignment = torch.empty_like(sorted_tokens)
        per_assignment[order] = torch.cat(outputs) if outputs else sorted_tokens[:0]
        weighted = per_assignment.view(-1, top_k, tokens.shape[-1]).float() * weights.unsqueeze(-1)
        return weighted.sum(1).to(tokens.dtype)


class LLaDA2MoeDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm attention and feed-forward (MoE or dense), each with a residual."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention = LLaDA2MoeAttention(config, layer_idx)
        self.mlp = (
            LLaDA2MoeSparseMoeBlock(config)
            if config.is_moe_layer(layer_idx)
            else GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states, router logits or None for a dense layer)."""
        hidden = hidden + self.attention(self.input_layernorm(hidden), rotary, attention_mask, cache)
        out = self.mlp(self.post_attention_layernorm(hidden))
        out, router_logits = out if isinstance(out, tuple) else (out, None)
        return hidden + out, router_logits


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    config_class = LLaDA2MoeConfig
    config: LLaDA2MoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDA2MoeDecoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LLaDA2MoeGate):
            module.weight.normal_(mean=0.0, std=self.config.initializer_range)
            module.expert_bias.zero_()


def additive_mask(
    attention_mask: torch.Tensor | None, query_length: int, key_length: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """The mask as the attention backends take it: additive [B, 1, Lq, Lk] in `dtype` (the dtype's minimum where
    hidden, so a fully hidden row stays finite), or None for no mask."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        if attention_mask.shape[1] != key_length:
            raise ValueError(
                f"a 2-D attention_mask must cover every key [batch, {key_length}] (cached and new), got shape "
                f"{tuple(attention_mask.shape)}"
            )
        attention_mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, query_length, key_length)
    if attention_mask.dim() != 4 or attention_mask.shape[-2:] != (query_length, key_length):
        raise ValueError(
            f"attention_mask must be [batch, {key_length}] or [batch, 1, {query_length}, {key_length}], got shape "
            f"{tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype == torch.bool:
        hidden = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
        return hidden.masked_fill(~attention_mask, torch.finfo(dtype).min)
    return attention_mask.to(dtype)


class LLaDA2MoeModel(LLaDA2MoePreTrainedModel):
    """Embedding, decoder layers and final norm."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(LLaDA2MoeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
    ) -> MoeModelOutputWithPast | tuple:
        """Hidden states after the final norm; ``hidden_states`` = (embeddings, outputs of layers 0..n-2, final)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LLaDA2 forward: pass exactly one of input_ids or inputs_embeds")
        config = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        output_router_logits = output_router_logits if output_router_logits is not None else config.output_router_logits
        return_dict = return_dict if return_dict is not None else config.return_dict
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=config)
        hidden = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        length = hidden.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=hidden.device).unsqueeze(0)
        rotary = rotary_cos_sin(config, position_ids.expand(hidden.shape[0], -1), hidden.dtype)
        mask = additive_mask(attention_mask, length, past + length, hidden.dtype)
        all_hidden: tuple[torch.Tensor, ...] = ()
        all_router: tuple[torch.Tensor, ...] = ()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden,)
            hidden, router_logits = layer(hidden, rotary, mask, past_key_values)
            if output_router_logits and router_logits is not None:
                all_router += (router_logits,)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden += (hidden,)
        output = MoeModelOutputWithPast(
            last_hidden_state=hidden,
            past_key_values=past_key_values,
            hidden_states=all_hidden or None,
            router_logits=all_router or None,
        )
        return output if return_dict else output.to_tuple()


class LLaDA2MoeModelLM(LLaDA2MoePreTrainedModel):
    """LLaDA 2.x with its output head ``lm_head``; ``logits[:, i]`` predicts token ``i``."""

    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
    ) -> MoeCausalLMOutputWithPast | tuple:
        """Logits [B, L, V]; ``past_key_values`` is returned (extended by this input) when one was passed or
        ``use_cache`` is true. No loss: the diffusion trainers compute theirs from the logits."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        base = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
            return_dict=True,
        )
        output = MoeCausalLMOutputWithPast(
            logits=self.lm_head(base.last_hidden_state),
            past_key_values=base.past_key_values,
            hidden_states=base.hidden_states,
            router_logits=base.router_logits,
        )
        return output if return_dict else output.to_tuple()
