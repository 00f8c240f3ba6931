"""The elastic cache (`cache="elastic"`, Elastic-Cache's adaptive, layer-aware refresh) against a brute force: every
pass the sampler makes is replayed, one row at a time, by a by-hand LLaDA (matmuls on the checkpoint's weights, no
cache object) that keeps each layer's canvas inputs and derives the cached keys from them; the drift test, the most
attended key and the refresh depth are worked out there from the attention it computes, and each pass's logits must
equal the sampler's."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from dlm.families import FAMILIES
from dlm.generation import SamplerSettings, build_sampler
from dlm.models import LLaDAConfig, LLaDAModelLM
from dlm.samplers.common import SamplingError
from dlm.samplers.elastic import ElasticLogits
from dlm.samplers.llada import generate_llada
from tests.helpers import left_padded

MASK = 99
PAD = 2
PROMPTS = ([11, 25, 7, 40, 33, 9, 17], [5, 44, 21, 8], [30, 12, 19, 27, 6, 14])
BLOCK = 4


@pytest.fixture(scope="module")
def model() -> LLaDAModelLM:
    """Three layers and grouped-query attention, so that refreshes start at different depths."""
    torch.manual_seed(0)
    config = LLaDAConfig(
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        n_layers=3,
        mlp_hidden_size=128,
        vocab_size=100,
        embedding_size=100,
        mask_token_id=MASK,
        max_sequence_length=256,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=PAD,
    )
    model = LLaDAModelLM(config).eval()
    with torch.no_grad():  # sharper attention than at initialisation, so that it drifts measurably
        for block in model.model.transformer.blocks:
            block.q_proj.weight.mul_(8.0)
            block.k_proj.weight.mul_(8.0)
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    return left_padded(PROMPTS, PAD)


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of x [H, n, D] at `positions` [n], in float64."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, half, dtype=torch.float64) / half)
    angles = positions.double()[:, None] * inv_freq[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class ByHand:
    """One row of the elastic cache worked out by hand: the canvas inputs of every layer (what the cache holds;
    cached keys and values are those of these inputs) and the watched attention of the row's last pass."""

    def __init__(self, model: LLaDAModelLM, real: torch.Tensor, similarity: float) -> None:
        self.model, self.config, self.similarity = model, model.config, similarity
        self.blocks = model.model.transformer.blocks
        self.bias = torch.where(real.bool(), 0.0, -math.inf).double()
        self.inputs: list[torch.Tensor] | None = None
        self.anchors: dict[int, int] = {}
        self.signatures: dict[int, torch.Tensor] = {}
        self.refresh_layers: list[int] = []  # the depth of every refresh (or of every full pass)
        self.windows = 0

    def _norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()

    def _linear(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return x @ layer.weight.double().T

    def layer(self, index: int, queries: torch.Tensor, columns: torch.Tensor, canvas: torch.Tensor):
        """Block `index` on the inputs `queries` [m, d] at canvas `columns`, attending to the keys and values of
        the canvas inputs `canvas` [L, d]: (outputs [m, d], attention probabilities [H, m, L])."""
        block, heads, kv_heads = self.blocks[index], self.config.n_heads, self.config.effective_n_kv_heads
        dim = self.config.head_dim
        h, keys_h = self._norm(block.attn_norm, queries), self._norm(block.attn_norm, canvas)
        q = self._linear(block.q_proj, h).view(-1, heads, dim).transpose(0, 1)
        k = self._linear(block.k_proj, keys_h).view(-1, kv_heads, dim).transpose(0, 1)
        v = self._linear(block.v_proj, keys_h).view(-1, kv_heads, dim).transpose(0, 1)
        every = torch.arange(canvas.shape[0])
        q, k = _rope(q, columns, self.config.rope_theta), _rope(k, every, self.config.rope_theta)
        k, v = k.repeat_interleave(heads // kv_heads, 0), v.repeat_interleave(heads // kv_heads, 0)
        probabilities = (q @ k.transpose(1, 2) / math.sqrt(dim) + self.bias).softmax(-1)
        x = queries + self._linear(block.attn_out, (probabilities @ v).transpose(0, 1).reshape(len(columns), -1))
        h = self._norm(block.ff_norm, x)
        ffn = torch.nn.functional.silu(self._linear(block.ff_proj, h)) * self._linear(block.up_proj, h)
        return x + self._linear(block.ff_out, ffn), probabilities

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        transformer = self.model.model.transformer
        return self._linear(transformer.ff_out, self._norm(transformer.ln_f, hidden))

    def watch(self, canvas: torch.Tensor, start: int) -> torch.Tensor:
        columns = torch.arange(start, start + 2 * BLOCK)
        self.watched, self.watched_masks = start, (canvas[columns.clamp(max=len(canvas) - 1)] == MASK)
        self.watched_masks &= columns < len(canvas)
        return columns.clamp(max=len(canvas) - 1)

    def anchor_of(self, probabilities: torch.Tensor, start: int) -> tuple[int, torch.Tensor]:
        mass = probabilities.sum((0, 1)).clone()
        mass[max(start - BLOCK, 0) : start + 3 * BLOCK] = -1.0
        anchor = int(mass.argmax())
        return anchor, probabilities[:, :, anchor]

    def full(self, canvas: torch.Tensor, start: int, first_layer: int) -> torch.Tensor:
        """The whole canvas from `first_layer` (token embeddings at 0, else the kept inputs of that layer)."""
        watched = self.watch(canvas, start)
        if first_layer == 0:
            self.inputs = [torch.zeros(len(canvas), self.config.d_model, dtype=torch.float64)] * self.config.n_layers
            x = self.model.model.transformer.wte.weight.double()[canvas]
        else:
            x = self.inputs[first_layer]
        every = torch.arange(len(canvas))
        for index in range(first_layer, self.config.n_layers):
            self.inputs[index] = x
            x, probabilities = self.layer(index, x, every, x)
            if index < self.config.n_layers - 1:  # no key depends on the last layer's outputs: not watched
                self.anchors[index], self.signatures[index] = self.anchor_of(probabilities[:, watched], start)
        self.refresh_layers.append(first_layer)
        return self.logits(x[start : start + BLOCK])

    def window(self, canvas: torch.Tensor, start: int) -> torch.Tensor:
        self.windows += 1
        length = len(canvas)
        width = min(3 * BLOCK, length)
        window_start = min(max(start - BLOCK, 0), length - width)
        columns = torch.arange(window_start, window_start + width)
        earlier = torch.arange(self.watched, self.watched + 2 * BLOCK).clamp(max=length - 1)
        in_window = bool(((earlier >= window_start) & (earlier < window_start + width)).all())
        unchanged = self.watched_masks & (canvas[earlier] == MASK) & in_window
        watched = self.watch(canvas, start)
        x = self.model.model.transformer.wte.weight.double()[canvas[columns]]
        restart = self.config.n_layers
        for index in range(self.config.n_layers):
            kept = self.inputs[index].clone()
            kept[columns] = x
            self.inputs[index] = kept
            x, probabilities = self.layer(index, x, columns, kept)
            if index == self.config.n_layers - 1:
                break
            by_column = torch.zeros(probabilities.shape[0], length, length, dtype=torch.float64)
            by_column[:, columns] = probabilities
            now = by_column[:, earlier, self.anchors[index]] * unchanged
            before = self.signatures[index] * unchanged
            similarity = torch.cosine_similarity(now.flatten(), before.flatten(), dim=0) if unchanged.any() else 1.0
            if similarity < self.similarity and restart == self.config.n_layers:
                restart = index
            self.anchors[index], self.signatures[index] = self.anchor_of(by_column[:, watched], start)
        logits = self.logits(x[start - window_start : start - window_start + BLOCK])
        restart = restart if in_window else 0
        return self.full(canvas, start, restart) if restart < self.config.n_layers else logits


def _record_passes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call of the sampler's elastic cache: the canvas, rows and block starts it got and the logits it gave."""
    passes: list[dict[str, Any]] = []
    call = ElasticLogits.__call__

    def recording(self, x, rows, starts, refresh):
        logits = call(self, x, rows, starts, refresh)
        passes.append({"x": x.clone(), "rows": rows.tolist(), "starts": starts.tolist(), "logits": logits.clone()})
        return logits

    monkeypatch.setattr(ElasticLogits, "__call__", recording)
    return passes


def _replay_by_hand(
    model: LLaDAModelLM, passes: list[dict[str, Any]], canvas_mask: torch.Tensor, similarity: float
) -> list[ByHand]:
    """Every recorded pass, row by row, by hand: each row's logits must equal the sampler's."""
    rows = [ByHand(model, mask, similarity) for mask in canvas_mask]
    for made in passes:
        for index, (row, start) in enumerate(zip(made["rows"], made["starts"], strict=True)):
            by_hand = rows[row]
            canvas = made["x"][row]
            expected = by_hand.full(canvas, start, 0) if by_hand.inputs is None else by_hand.window(canvas, start)
            torch.testing.assert_close(made["logits"][index].double(), expected, atol=2e-4, rtol=1e-4)
    return rows


@pytest.mark.parametrize(("similarity", "cfg_scale"), [(0.0, 0.0), (0.999, 0.0), (0.9995, 0.0), (0.9995, 1.5)])
def test_every_pass_equals_the_by_hand_elastic_cache(
    model: LLaDAModelLM, monkeypatch: pytest.MonkeyPatch, similarity: float, cfg_scale: float
) -> None:
    """Each canvas row of every pass (with classifier-free guidance, the unconditional rows too) against the by-hand
    cache; the forward passes each row is charged."""
    ids, attention = _batch()
    passes = _record_passes(monkeypatch)
    out = generate_llada(
        model,
        ids,
        mask_id=MASK,
        attention_mask=attention,
        steps=24,
        gen_length=24,
        block_length=BLOCK,
        cache="elastic",
        refresh_similarity=similarity,
        parallel_threshold=0.2,
        cfg_scale=cfg_scale,
    )
    canvas_mask = torch.cat([attention, torch.ones(len(PROMPTS), 24, dtype=torch.long)], dim=1)
    canvas_mask = canvas_mask.repeat(2 if cfg_scale else 1, 1)  # guidance: the unconditional canvases follow
    rows = _replay_by_hand(model, passes, canvas_mask, similarity)
    depths = [layer for row in rows for layer in row.refresh_layers[1:]]  # after each row's first, full pass
    # a pass, and a refresh within it, each count as a network evaluation (with guidance, of both canvases)
    charged = [row.windows + len(row.refresh_layers) for row in rows]
    assert out.row_nfe.tolist() == [sum(charged[row :: len(PROMPTS)]) for row in range(len(PROMPTS))]
    if similarity == 0.0:
        assert depths == [], "a similarity of 0 never refreshes"
    if similarity == 0.9995:  # between the similarities this model shows
        assert len(set(depths)) > 1, f"refreshes at one depth only: {depths}"
        assert 0 < len(depths) < sum(row.windows for row in rows), "every window pass refreshed, or none"


def test_a_row_that_skips_a_given_block_starts_over(model: LLaDAModelLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block given whole (`infill`) is skipped: the queries watched before it leave the window, so the row's next
    pass refreshes from layer 0 whatever the similarity."""
    ids, attention = _batch()
    infill = torch.full((len(PROMPTS), 24), MASK)
    infill[1, 8:12] = torch.tensor([21, 22, 23, 24])  # row 1's third block
    passes = _record_passes(monkeypatch)
    settings = {"steps": 24, "gen_length": 24, "block_length": BLOCK, "cache": "elastic", "refresh_similarity": 0.0}
    generate_llada(model, ids, mask_id=MASK, attention_mask=attention, infill=infill, **settings)
    canvas_mask = torch.cat([attention, torch.ones(len(PROMPTS), 24, dtype=torch.long)], dim=1)
    rows = _replay_by_hand(model, passes, canvas_mask, 0.0)
    assert [row.refresh_layers[1:] for row in rows] == [[], [0], []]


def test_a_forward_resumed_at_a_layer_equals_the_whole_forward(model: LLaDAModelLM) -> None:
    x = torch.tensor([[11, 25, 7, 40, MASK, MASK, 9]])
    whole = model.model(x, output_hidden_states=True)
    for layer in range(1, model.config.n_layers):
        resumed = model.model(inputs_embeds=whole.hidden_states[layer], first_layer=layer, output_hidden_states=True)
        torch.testing.assert_close(resumed.last_hidden_state, whole.last_hidden_state)
        assert len(resumed.hidden_states) == model.config.n_layers + 1 - layer
    with pytest.raises(ValueError, match="first_layer must be in"):
        model.model(x, first_layer=1)


def test_a_full_pass_is_the_model_s_own_forward(model: LLaDAModelLM) -> None:
    """A row's first pass runs the whole canvas: its block logits are the uncached model's."""
    x = torch.tensor([[11, 25, 7, 40] + [MASK] * 8])
    logits = ElasticLogits(model, None, BLOCK, 0.9, MASK)(x, torch.tensor([0]), torch.tensor([4]), True)
    torch.testing.assert_close(logits[0], model(x).logits[0, 4:8], atol=1e-5, rtol=1e-5)


def test_rows_decode_as_each_prompt_alone(llada: nn.Module) -> None:
    ids, attention = _batch()
    settings = {"gen_length": 16, "block_length": 4, "steps": 16, "cache": "elastic", "parallel_threshold": 0.5}
    settings |= {"refresh_similarity": 0.95, "mask_id": llada.config.mask_token_id}
    out = generate_llada(llada, ids, attention_mask=attention, **settings)
    for row, prompt in enumerate(PROMPTS):
        alone = generate_llada(llada, torch.tensor([prompt]), **settings)
        assert out.sequences[row, ids.shape[1] :].tolist() == alone.sequences[0, len(prompt) :].tolist()
        assert int(out.row_nfe[row]) == alone.nfe


def test_settings_reach_the_elastic_cache(monkeypatch: pytest.MonkeyPatch, llada: nn.Module) -> None:
    """`SamplerSettings(cache="elastic", refresh_similarity=...)` builds a LLaDA sampler whose run watches
    attention with that similarity."""
    seen: list[float] = []
    init = ElasticLogits.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self.similarity)

    monkeypatch.setattr(ElasticLogits, "__init__", spy)
    settings = SamplerSettings(
        steps=8, max_new_tokens=8, block_length=4, cache="elastic", refresh_similarity=0.37, stop_at_end=False
    )
    sampler = build_sampler(FAMILIES["llada"], settings)
    sampler.sample(llada, torch.tensor([[11, 25, 7]]), mask_id=llada.config.mask_token_id)
    assert seen == [0.37]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"refresh_similarity": 1.5}, r"refresh_similarity must be in \[0, 1\]"),
        ({"refresh_similarity": -0.1}, r"refresh_similarity must be in \[0, 1\]"),
        ({"suffix_window": 4}, "cannot be combined with suffix_window"),
        ({"grow_canvas": 4}, "cannot be combined with grow_canvas"),
    ],
)
def test_settings_that_cannot_work_are_refused(llada: nn.Module, settings: dict, message: str) -> None:
    with pytest.raises(SamplingError, match=message):
        generate_llada(
            llada, torch.tensor([[5, 6]]), mask_id=3, steps=8, gen_length=8, block_length=4, cache="elastic", **settings
        )


def test_dream_is_refused_with_the_cache_it_can_use(dream: nn.Module) -> None:
    settings = SamplerSettings(steps=8, max_new_tokens=8, block_length=4, cache="elastic")
    with pytest.raises(
        SamplingError, match=r"cache='elastic' needs a model that hands its attention queries.*cache='dual'"
    ):
        build_sampler(FAMILIES["dream"], settings)
    from dlm.samplers.dream import generate_dream

    with pytest.raises(SamplingError, match=r"DreamModel cannot: use cache='dual'"):
        generate_dream(dream, torch.tensor([[5, 6]]), mask_id=3, steps=8, max_new_tokens=8, cache="elastic")
