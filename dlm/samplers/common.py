"""What the diffusion samplers share: the output record, the error, prompt checks, the canvas, the block forward
pass (cached or not, `dlm.models.cache`), randomness from an optional generator, ranking and parallel reveal, and
the checks of the fast-decoding settings.

Fast decoding (off by default, which keeps the samplers exact), after Fast-dLLM: `cache` 'prefix' or 'dual' runs
the whole canvas once per block (the refresh) and then only the block and what follows it, or the block alone,
against the refreshed keys and values (LLaDA and Dream models only); `parallel_threshold` also reveals every
position whose chosen token is at least that probable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dlm.errors import DlmError
from dlm.families import FAMILIES
from dlm.families.base import WATCHED_CACHES
from dlm.forward import logits_at_positions, unwrap_model
from dlm.models import DreamModel, LLaDAModelLM
from dlm.models.cache import CanvasCache

if TYPE_CHECKING:
    from dlm.families.base import Family
    from dlm.families.special_ids import SpecialIds

CACHE_MODES = WATCHED_CACHES  # every `cache` mode a sampler knows; a family lists those its models serve


# `on_step(canvas, step, block)`: called after every denoising step with the live canvas [B, prompt + generated]
# (copy it to keep it), the step within the block and the block's index (where rows decode different blocks, those
# of the row furthest behind); it must not write to the canvas.
StepHook = Callable[[torch.Tensor, int, int], None]


class SamplingError(DlmError, ValueError):
    """Sampler settings or prompts that cannot work; the message names the setting and what would work."""


@dataclass
class SampleOutput:
    """`sequences` [B, prompt + generated] (prompt included, padding as given); `nfe`: network evaluations per
    sequence (a classifier-free-guidance step counts two); `generated_tokens` [B]: generated tokens that are not
    EOS/EOT, the numerator of tokens per second."""

    sequences: torch.Tensor
    nfe: int
    generated_tokens: torch.Tensor
    row_nfe: torch.Tensor | None = None  # [B] each row's network evaluations, where rows advance on their own


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_blocks(steps: int, length: int, block_length: int, name: str) -> None:
    """`block_length` divides the generated length (`name`) and `steps` is a multiple of the number of blocks."""
    if block_length < 1 or length % block_length:
        raise SamplingError(
            f"block_length={block_length} must divide {name}={length}; block lengths that work: "
            f"{', '.join(map(str, divisors(length)))}"
        )
    blocks = length // block_length
    if steps < 1 or steps % blocks:
        lower = max(blocks, steps // blocks * blocks)
        raise SamplingError(
            f"steps={steps} must be a positive multiple of the number of blocks, {name}/block_length = "
            f"{length}/{block_length} = {blocks}: use steps={lower} or steps={lower + blocks} (any multiple of "
            f"{blocks}), or change block_length"
        )


def check_prompt(prompt_ids: torch.Tensor, attention_mask: torch.Tensor | None, mask_id: int) -> torch.Tensor:
    """Validate the prompts; return each row's left-padding length [B]."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise SamplingError(
            f"prompt_ids must be 2-D [batch, length] with at least one token, got shape {tuple(prompt_ids.shape)}"
        )
    hits = (prompt_ids == mask_id).nonzero()
    if len(hits):
        row, col = hits[0].tolist()
        raise SamplingError(
            f"prompt row {row} holds the mask token id {mask_id} at position {col}: prompts (and their padding) must "
            "not contain the mask token; pad with EOS or the pad token instead"
        )
    if attention_mask is None:
        return torch.zeros(prompt_ids.shape[0], dtype=torch.long, device=prompt_ids.device)
    if attention_mask.shape != prompt_ids.shape:
        raise SamplingError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from prompt_ids shape "
            f"{tuple(prompt_ids.shape)}"
        )
    keep = attention_mask.bool()
    if bool((keep[:, :-1] & ~keep[:, 1:]).any()) or not bool(keep[:, -1].all()):
        raise SamplingError(
            "prompts must be left-padded (attention_mask 0...0 1...1 in every row, ending with a real token): "
            "set tokenizer.padding_side = 'left'"
        )
    return (~keep).sum(-1)


def padding_mask(attention_mask: torch.Tensor | None, gen_length: int) -> torch.Tensor | None:
    """The canvas' attention mask, or None when nothing is padded (the model then attends everywhere)."""
    if attention_mask is None or bool(attention_mask.bool().all()):
        return None
    ones = attention_mask.new_ones(attention_mask.shape[0], gen_length)
    return torch.cat([attention_mask, ones], dim=1)


def rand(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform [0, 1) noise drawn on the generator's device (so a CPU generator seeds CUDA runs too)."""
    source = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)


def multinomial(probs: torch.Tensor, num_samples: int, generator: torch.Generator | None) -> torch.Tensor:
    source = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(source), num_samples, generator=generator).to(probs.device)


def reveal_top(
    confidence: torch.Tensor, counts: torch.Tensor, offsets: torch.Tensor, ends: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean [B, T]: the `counts[b]` most confident positions of each row b.

    `confidence` covers the whole canvas (-inf where nothing may be revealed). Each row runs `torch.topk` on its
    canvas without the left padding (`offsets[b]` positions) and, given `ends`, without what follows `ends[b]`, as
    the official code does on a one-prompt canvas: ties (saturated probabilities are common) then break exactly as
    there, whatever the batch.
    """
    reveal = torch.zeros_like(confidence, dtype=torch.bool)
    stops = [confidence.shape[1]] * len(counts) if ends is None else ends.tolist()
    for row, (count, offset, stop) in enumerate(zip(counts.tolist(), offsets.tolist(), stops, strict=True)):
        if count:
            reveal[row, offset + torch.topk(confidence[row, offset:stop], count).indices] = True
    return reveal


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def count_generated(generated: torch.Tensor, end_ids: Sequence[int | None]) -> torch.Tensor:
    keep = torch.ones_like(generated, dtype=torch.bool)
    for end_id in end_ids:
        if end_id is not None:
            keep &= generated != end_id
    return keep.sum(dim=-1)


def check_decoding(cache: str, parallel_threshold: float | None, suffix_window: int | None = None) -> None:
    """Validate the fast-decoding settings: a known cache mode, a threshold that is a probability, a window that
    is not negative."""
    if suffix_window is not None and suffix_window < 0:
        raise SamplingError(f"suffix_window must be >= 0 (positions after the block kept in view), got {suffix_window}")
    if cache not in CACHE_MODES:
        raise SamplingError(f"cache={cache!r} is unknown; choose one of: {', '.join(CACHE_MODES)}")
    if parallel_threshold is not None and not 0 < parallel_threshold <= 1:
        raise SamplingError(
            f"parallel_threshold must be in (0, 1] (a probability; unset for the exact schedule), got "
            f"{parallel_threshold}"
        )


def refuse_cache(cache: str, holder: str, fallback: str = "none") -> None:
    """`SamplingError`: `holder` (a family or a model class) cannot serve the known cache mode `cache`; `fallback`
    is the mode to suggest."""
    able = [f.name for f in FAMILIES.values() if cache in f.cache_modes]
    need = (
        "hands its attention queries to its key/value cache"
        if cache == "elastic"
        else "can return and accept a key/value cache"
    )
    raise SamplingError(
        f"cache={cache!r} needs a model that {need}, which the {' and '.join(able)} families can; {holder} "
        f"cannot: use cache={fallback!r}"
    )


def check_family_cache(cache: str, family: Family) -> None:
    """A known `cache` mode that `family`'s models cannot serve is an error (unknown modes are left to
    `check_decoding`)."""
    if cache in CACHE_MODES and cache not in family.cache_modes:
        refuse_cache(cache, family.name, "dual" if "dual" in family.cache_modes else "none")


def check_model_cache(cache: str, model: torch.nn.Module) -> None:
    """`cache` other than 'none' needs a `dlm.models` model, whose forward records and replays a `CanvasCache`;
    'elastic' one that hands the cache its attention queries (LLaDA)."""
    base = unwrap_model(model)
    if cache == "elastic" and not isinstance(base, LLaDAModelLM):
        refuse_cache(cache, type(base).__name__, "dual" if isinstance(base, DreamModel) else "none")
    if cache in CACHE_MODES and cache != "none" and not isinstance(base, LLaDAModelLM | DreamModel):
        refuse_cache(cache, type(base).__name__)


def masked_canvas(prompt_ids: torch.Tensor, length: int, mask_id: int, infill: torch.Tensor | None) -> torch.Tensor:
    """The prompt followed by `length` masks, or by `infill` [B, length] (mask_id where tokens are to be generated,
    fixed tokens elsewhere)."""
    if infill is None:
        infill = prompt_ids.new_full((prompt_ids.shape[0], length), mask_id)
    elif infill.shape != (prompt_ids.shape[0], length):
        raise SamplingError(
            f"infill must have shape [batch, generated length] = [{prompt_ids.shape[0]}, {length}] (mask id where "
            f"tokens are to be generated), got {tuple(infill.shape)}"
        )
    return torch.cat([prompt_ids, infill.to(prompt_ids)], dim=1)


class BlockLogits:
    """Logits [rows, n, V] (at least float32) predicting the tokens of each selected row's block [start, start + n);
    one forward pass per call, over the selected rows only (finished rows leave the batch).

    `cache` 'none' runs the whole canvas every time (the exact samplers). With 'prefix' or 'dual', a `refresh` call
    runs the whole canvas and records every layer's keys and values for its rows; the calls after it run only the
    block and everything after it ('prefix'; rows at one start) or the block alone ('dual'; each row at its own
    start) and attend to the recorded keys elsewhere. Dream reads token i's logits at position i - 1 (`shift`), so
    its span starts one position earlier. `suffix_window` (DPad's suffix pruning; None: off) keeps only that many
    positions after each row's block in view: the canvas beyond is neither run nor attended to.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        attention_mask: torch.Tensor | None,
        cache: str,
        shift: bool,
        block_length: int,
        suffix_window: int | None = None,
    ) -> None:
        self.model, self.attention_mask, self.mode, self.shift = model, attention_mask, cache, shift
        self.block_length, self.suffix_window = block_length, suffix_window
        self.keys: list[torch.Tensor] = []  # per layer [canvas rows, H_kv, L, D], filled row by row by refreshes
        self.values: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, refresh: bool) -> torch.Tensor:
        n = self.block_length
        reach = starts + n + (self.suffix_window if self.suffix_window is not None else x.shape[1])
        width = min(x.shape[1], int(reach.max()))
        keep = self._key_mask(rows, reach, width)
        if self.mode == "none" or refresh:
            canvas = x[rows, :width]
            positions = torch.zeros_like(canvas, dtype=torch.bool)
            positions.scatter_(1, starts[:, None] + torch.arange(n, device=x.device), True)
            recording = CanvasCache() if self.mode != "none" else None
            extra = {} if recording is None else {"past_key_values": recording}
            logits = logits_at_positions(self.model, canvas, keep, positions, self.shift, **extra)
            if recording is not None:
                self._store(recording, rows, width, x.shape)
        else:
            logits = self._replay(x, rows, starts, width, keep)
        return _at_least_float32(logits).reshape(len(rows), n, -1)

    def _key_mask(self, rows: torch.Tensor, reach: torch.Tensor, width: int) -> torch.Tensor | None:
        """[rows, width]: real (unpadded) keys within each row's reach; None when every key is."""
        pruned = bool((reach < width).any())
        if self.attention_mask is None and not pruned:
            return None
        keep = torch.ones(len(rows), width, dtype=torch.long, device=rows.device)
        if self.attention_mask is not None:
            keep = self.attention_mask[rows, :width].to(keep)
        if pruned:
            keep = keep * (torch.arange(width, device=rows.device) < reach[:, None])
        return keep

    def _store(self, recording: CanvasCache, rows: torch.Tensor, width: int, canvas: torch.Size) -> None:
        for layer, (key, value) in enumerate(zip(recording.keys, recording.values, strict=True)):
            if layer == len(self.keys):
                shape = (canvas[0], key.shape[1], canvas[1], key.shape[3])
                self.keys.append(key.new_zeros(shape))
                self.values.append(value.new_zeros(shape))
            self.keys[layer][rows, :, :width] = key
            self.values[layer][rows, :, :width] = value

    def _replay(
        self, x: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, width: int, keep: torch.Tensor | None
    ) -> torch.Tensor:
        """A pass over each row's span against its refreshed keys elsewhere."""
        span_starts = starts - int(self.shift)
        if self.mode == "dual":
            span_length = self.block_length + int(self.shift)
        else:
            if bool((starts != starts[0]).any()):
                raise ValueError("a prefix-cache pass needs rows at one block start")
            span_length = width - int(span_starts[0])
        # every row of the cache (in order: rows are sorted active ones) needs no copy, a subset is gathered
        every = len(rows) == self.keys[0].shape[0]
        view = CanvasCache(
            *([t[:, :, :width] if every else t[rows, :, :width] for t in ts] for ts in (self.keys, self.values))
        )
        uniform = not bool((span_starts != span_starts[0]).any())
        view.span_start = int(span_starts[0]) if uniform else span_starts
        span = x[rows].gather(1, span_starts[:, None] + torch.arange(span_length, device=x.device))
        positions = torch.zeros_like(span, dtype=torch.bool)
        positions[:, : self.block_length] = True
        return logits_at_positions(self.model, span, keep, positions, past_key_values=view)


def parallel_reveal(
    reveal: torch.Tensor,
    masked: torch.Tensor,
    probability: torch.Tensor,
    threshold: float | None,
    eligible: torch.Tensor | None = None,
) -> torch.Tensor:
    """`reveal` plus every masked position whose chosen token's probability reaches `threshold` (and that is
    `eligible`, if given)."""
    if threshold is None:
        return reveal
    confident = masked & (probability >= threshold)
    return reveal | (confident if eligible is None else confident & eligible)


class DiffusionSampler:
    """A diffusion sampler whose settings were checked when it was built; `answer` runs it on a batch of encoded
    chat prompts (`sample` is the algorithm with every option)."""

    steps: int

    @property
    def forward_passes(self) -> int:
        """Network evaluations per answer at most (the steps), for progress estimates."""
        return self.steps

    def sample(self, model: torch.nn.Module, prompt_ids: torch.Tensor, **options: Any) -> SampleOutput:
        raise NotImplementedError

    def answer(
        self,
        model: torch.nn.Module,
        special: SpecialIds,
        prompt_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        on_step: StepHook | None = None,
    ) -> SampleOutput:
        """Answers to left-padded prompts, ending at the checkpoint's EOS or end-of-turn token; `on_step` sees the
        canvas after every step."""
        mask_for_model = attention_mask if bool((attention_mask == 0).any()) else None
        return self.sample(
            model,
            prompt_ids,
            mask_id=special.mask,
            attention_mask=mask_for_model,
            eos_id=special.eos,
            eot_id=special.eot,
            generator=generator,
            on_step=on_step,
        )
