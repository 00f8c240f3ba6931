"""Count-form ELBO of responses given prompts: a Monte-Carlo lower bound of log p(response | prompt).

One sample masks exactly l of the L response tokens (l spread over 1..L, the tokens uniform) and scores
(L / l) * sum over the masked tokens of log p(true token | masked sequence); the bound is the mean over samples.
It is a sum over tokens (a sequence log-likelihood), not a per-token mean. The prompt and the padding are never
masked: `response_mask` marks the scored tokens.

Block diffusion (`block_size`): log p(response) is the sum over blocks of log p(block | clean blocks before it),
and each block has its own count-form bound, so one sample masks l_b of each block's L_b response tokens, scores
(L_b / l_b) * sum over block b's masked tokens, summed over the blocks, in one pass over `x_t ⊕ x_0`
(`dlm.block_diffusion`). Blocks count from the first position, as in training.

Masks are drawn once (`draw_elbo_masks`) and passed to `elbo_terms`, so a policy and its reference can be scored
on the very same masks (antithetic sharing, which makes their difference far less noisy). Per-example generators
(`example_generators`) make an example's masks depend only on its id and seed, not on its batch: a reference
ELBO precomputed once is reproduced later with identical masks.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence

import torch

from dlm.block_diffusion import block_logits_at_positions
from dlm.forward import logits_at_positions

EXACT_MAX_LENGTH = 8  # 2^8 - 1 masks per row: the brute-force reference stays cheap

Generators = torch.Generator | Sequence[torch.Generator] | None


def spread_mask_counts(length: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask counts l_j (j = 0..n-1) spread evenly over 1..length with one random offset k ~ U{1..length}:
    l_j = ((round(k + j * length / n) - 1) mod length) + 1. Returns int64 [n] on the generator's device."""
    if length < 1 or n < 1:
        raise ValueError(f"spread_mask_counts needs length >= 1 and n >= 1, got length={length}, n={n}")
    device = generator.device if generator is not None else torch.device("cpu")
    k = torch.randint(1, length + 1, (1,), generator=generator, device=device).double()
    spread = torch.round(k + torch.arange(n, dtype=torch.float64, device=device) * (length / n)).long()
    return (spread - 1) % length + 1


def example_generators(example_ids: Sequence[int | str], seed: int = 0) -> list[torch.Generator]:
    """One CPU generator per example, seeded from (seed, example id) by a stable hash (the same in every process)."""
    generators = []
    for example_id in example_ids:
        digest = hashlib.blake2b(f"{seed}:{example_id}".encode(), digest_size=8).digest()
        generators.append(torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1))
    return generators


def _row_generators(generator: Generators, rows: int) -> list[torch.Generator | None]:
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * rows
    generators = list(generator)
    if len(generators) != rows:
        raise ValueError(f"got {len(generators)} generators for {rows} rows: pass one per row, or a single one")
    return generators


def draw_elbo_masks(
    response_mask: torch.Tensor, n: int, generator: Generators = None, *, block_size: int | None = None
) -> torch.Tensor:
    """`n` masks per row: bool [n, B, T], sample j of row b masking exactly l_j of the row's L response tokens
    (`spread_mask_counts(L, n)`), chosen uniformly; nothing outside `response_mask` [B, T] is ever masked. With
    `block_size`, the same within each block of the row that holds response tokens, block after block.

    `generator` is one generator for the whole batch, or one per row (`example_generators`): then a row's masks,
    relative to its response tokens, depend only on its generator and its response length.
    """
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be 2-D [batch, length], got shape {tuple(response_mask.shape)}")
    response_mask = response_mask.bool()
    batch, length = response_mask.shape
    masks = torch.zeros(n, batch, length, dtype=torch.bool)
    for row, gen in enumerate(_row_generators(generator, batch)):
        where = response_mask[row].nonzero().squeeze(-1).cpu()
        if len(where) == 0:
            raise ValueError(f"row {row} has no response token to mask (response_mask is all false)")
        groups = (
            [where]
            if block_size is None
            else [where[where // block_size == b] for b in where.div(block_size, rounding_mode="floor").unique()]
        )
        for group in groups:
            masks[:, row, group] = _uniform_subsets(len(group), n, gen)
    return masks.to(response_mask.device)


def _uniform_subsets(length: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """bool [n, length]: sample j marks l_j (`spread_mask_counts`) of the `length` places, uniformly."""
    counts = spread_mask_counts(length, n, generator).cpu()
    device = generator.device if generator is not None else torch.device("cpu")
    scores = torch.rand(n, length, generator=generator, device=device).cpu()
    # the l lowest of i.i.d. uniform scores are a uniformly random l-subset
    ranks = scores.argsort(dim=-1).argsort(dim=-1)
    return ranks < counts.unsqueeze(-1)


def _check_masks(
    response_mask: torch.Tensor, masks: torch.Tensor, input_ids: torch.Tensor, block_size: int | None = None
) -> None:
    if input_ids.dim() != 2 or response_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids must be 2-D [batch, length] with response_mask of the same shape, got "
            f"{tuple(input_ids.shape)} and {tuple(response_mask.shape)}"
        )
    if masks.dim() != 3 or masks.shape[1:] != input_ids.shape:
        raise ValueError(
            f"masks must be [n, batch, length] = [n, {', '.join(map(str, input_ids.shape))}], got {tuple(masks.shape)}"
        )
    outside = masks & ~response_mask.unsqueeze(0)
    if bool(outside.any()):
        sample, row, pos = outside.nonzero()[0].tolist()
        raise ValueError(f"mask sample {sample} masks position {pos} of row {row}, which is not a response token")
    empty = ~masks.any(dim=-1)
    if bool(empty.any()):
        sample, row = empty.nonzero()[0].tolist()
        raise ValueError(f"mask sample {sample} of row {row} masks no token: every sample must mask l >= 1 tokens")
    if block_size is not None:
        scored_blocks = _per_block(response_mask.unsqueeze(0), block_size) > 0
        empty = scored_blocks & (_per_block(masks, block_size) == 0)
        if bool(empty.any()):
            sample, row, block = empty.nonzero()[0].tolist()
            raise ValueError(
                f"mask sample {sample} of row {row} masks no token of block {block}, which holds response tokens: "
                "block diffusion scores every block, each with l >= 1"
            )


def _per_block(flags: torch.Tensor, block_size: int) -> torch.Tensor:
    """Counts of true flags per block of the last dimension: [..., T] -> [..., ceil(T / block_size)]."""
    padding = -flags.shape[-1] % block_size
    padded = torch.nn.functional.pad(flags.long(), (0, padding))
    return padded.unflatten(-1, (-1, block_size)).sum(-1)


def elbo_terms(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    masks: torch.Tensor,
    *,
    mask_id: int,
    shift: bool,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 32,
    block_size: int | None = None,
) -> torch.Tensor:
    """Per-sample ELBO terms float64 [n, B]: (L / l) * sum over the masked positions of log p(true token); with
    `block_size`, the sum over blocks of (L_b / l_b) * sum over the block's masked positions (module docstring).

    `input_ids` [B, T] clean sequences, `response_mask` [B, T] the scored tokens (L per row), `masks` [n, B, T]
    (from `draw_elbo_masks`; l = masks per sample), `shift` True for families whose output at i - 1 predicts
    token i (Dream). Up to `batch_size` (sample, row) sequences go through one forward pass, and the output head
    runs only at masked positions. Log-probabilities are log-softmax in float32 (float64 for a float64 model),
    accumulated in float64.
    Gradients flow when enabled (the caller chooses `torch.no_grad()` or not).
    """
    response_mask = response_mask.bool()
    masks = masks.bool().to(input_ids.device)
    _check_masks(response_mask, masks, input_ids, block_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if block_size is not None and shift:
        raise ValueError("block diffusion predicts each token at its own position: shift must be False")
    n, batch, _ = masks.shape
    flat_masks = masks.reshape(n * batch, -1)
    chunks = []
    for first in range(0, n * batch, batch_size):
        index = torch.arange(first, min(first + batch_size, n * batch), device=input_ids.device)
        rows = index % batch
        mask = flat_masks[index]
        clean = input_ids[rows]
        padding = None if attention_mask is None else attention_mask[rows]
        positions = mask.nonzero(as_tuple=True)
        if block_size is None:
            logits = logits_at_positions(model, clean.masked_fill(mask, mask_id), padding, mask, shift)
        else:
            noisy = clean.masked_fill(mask, mask_id)
            logits = block_logits_at_positions(model, noisy, clean, block_size, positions, padding)
        log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        token_log_probs = log_probs.gather(-1, clean[mask].unsqueeze(-1)).squeeze(-1)
        # logits come in row-major order of the mask: weight each by L / l of its sequence (of its block), then
        # sum them per sequence in float64
        weights = count_weights(response_mask[rows], mask, block_size)[positions]
        total = torch.zeros(len(index), dtype=torch.float64, device=positions[0].device).index_add(
            0, positions[0], token_log_probs.double() * weights
        )
        chunks.append(total)
    return torch.cat(chunks).reshape(n, batch)


def count_weights(response_mask: torch.Tensor, mask: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """float64 [k, T]: L / l of each position's sequence, or L_b / l_b of its block with `block_size`."""
    if block_size is None:
        ratio = response_mask.sum(-1).double() / mask.sum(-1).double()
        return ratio[:, None].expand(mask.shape)
    ratio = _per_block(response_mask, block_size).double() / _per_block(mask, block_size).double().clamp_min(1)
    return ratio.repeat_interleave(block_size, dim=-1)[:, : mask.shape[-1]]


def elbo(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    mask_id: int,
    shift: bool,
    n: int = 128,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 32,
    generator: Generators = None,
    masks: torch.Tensor | None = None,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ELBO estimate per row, float64 (mean [B], standard error [B]) from `n` samples (or the given `masks`).

    The standard error is std / sqrt(n) of the terms, which ignores the (variance-reducing) stratification of
    the mask counts, so it errs on the large side; NaN when n = 1.
    """
    if masks is None:
        masks = draw_elbo_masks(response_mask, n, generator, block_size=block_size)
    terms = elbo_terms(
        model,
        input_ids,
        response_mask,
        masks,
        mask_id=mask_id,
        shift=shift,
        attention_mask=attention_mask,
        batch_size=batch_size,
        block_size=block_size,
    )
    count = terms.shape[0]
    stderr = terms.std(dim=0) / math.sqrt(count) if count > 1 else torch.full_like(terms[0], math.nan)
    return terms.mean(dim=0), stderr


def exact_elbo(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    mask_id: int,
    shift: bool,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """The count-form ELBO computed exactly, float64 [B]: E_{l ~ U{1..L}} E_{mask of size l} of the term,
    enumerating all 2^L - 1 masks of each row. For responses of at most 8 tokens (a brute-force reference)."""
    response_mask = response_mask.bool()
    values = []
    for row in range(input_ids.shape[0]):
        where = response_mask[row].nonzero().squeeze(-1).tolist()
        length = len(where)
        if not 1 <= length <= EXACT_MAX_LENGTH:
            raise ValueError(
                f"exact_elbo enumerates every mask, so row {row} needs 1 to {EXACT_MAX_LENGTH} response tokens, "
                f"it has {length}"
            )
        subsets = [s for size in range(1, length + 1) for s in itertools.combinations(where, size)]
        masks = torch.zeros(len(subsets), 1, input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
        for i, subset in enumerate(subsets):
            masks[i, 0, list(subset)] = True
        weights = torch.tensor(
            [1.0 / (length * math.comb(length, len(s))) for s in subsets], dtype=torch.float64, device=input_ids.device
        )
        terms = elbo_terms(
            model,
            input_ids[row : row + 1],
            response_mask[row : row + 1],
            masks,
            mask_id=mask_id,
            shift=shift,
            attention_mask=None if attention_mask is None else attention_mask[row : row + 1],
            batch_size=batch_size,
        )
        values.append((terms[:, 0] * weights).sum())
    return torch.stack(values)
