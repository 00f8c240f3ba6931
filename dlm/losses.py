"""The masked-diffusion training loss (MDLM; Dream's shifted, CART-weighted variant; block diffusion, BD3LM) and the
next-token AR loss.

Training is `t, masked = draw_mask(batch, config, generator)` then `diffusion_loss(model, batch, masked=masked, t=t,
config=config)`. Logits are computed at the masked positions only (`dlm.forward.logits_at_positions`).
With `LossConfig.block_size` set, the model runs once over `x_t ⊕ x_0` under the block diffusion mask and the loss
is read from the noisy half (`dlm.block_diffusion`); weights and normalisations are the same.

With z the masked positions, m the maskable ones (labels != -100) and w the token weights, the loss is
`sum(z * w * CE) / D`, where D follows `loss_norm_type`:
- `token`: the number of maskable tokens;
- `sequence`: each sequence's sum is first divided by its own maskable count, D is the number of sequences;
- `batch`: the number of sequences.

Gradient accumulation: the loss is a sum divided by D, so k micro-batches add up to exactly one batch k times larger
when every micro-batch divides by the D of the whole optimizer step. The trainer sums `count_items(micro_batch,
loss_norm_type)` over the micro-batches of a step (and over processes) and passes it as `num_items_in_batch`; the
micro-batch losses must then be summed, not averaged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from dlm.block_diffusion import BLOCK_TIMES, block_logits_at_positions, block_times, mask_with_token_times
from dlm.families import get_family
from dlm.families.base import Family
from dlm.forward import logits_at_positions
from dlm.masking import cart_weights, mask_tokens, parse_loss_weight_type
from dlm.schedules import get_schedule, sample_times

LOSS_NORM_TYPES = ("token", "sequence", "batch")
IGNORE_INDEX = -100
Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class LossConfig:
    """Everything that makes one family's diffusion loss differ from another's.

    `shift_logits`: token i is predicted at position i - 1 (Dream). `loss_weight_type`: `scheduler` (w(t) of the
    noise schedule, 1/t for linear), `uniform` or `cart[geo_p:P]`. `loss_norm_type`: `token`, `sequence` or `batch`.
    `noise_schedule`: `linear` or `cosine`. `time_epsilon`: t is drawn from [eps, 1).
    `block_size`: block diffusion with blocks of this many tokens (None: full-sequence diffusion); `block_time`:
    one t per `sequence` (dllm's BD3LM trainer) or per `block` (BD3LM's code, stratified over the batch's blocks).
    """

    mask_token_id: int
    shift_logits: bool = False
    loss_weight_type: str = "scheduler"
    loss_norm_type: str = "token"
    noise_schedule: str = "linear"
    time_epsilon: float = 1e-3
    block_size: int | None = None
    block_time: str = "sequence"

    def __post_init__(self) -> None:
        parse_loss_weight_type(self.loss_weight_type)
        get_schedule(self.noise_schedule)
        if self.loss_norm_type not in LOSS_NORM_TYPES:
            raise ValueError(
                f"unknown loss_norm_type {self.loss_norm_type!r}; choose one of: {', '.join(LOSS_NORM_TYPES)}"
            )
        if not 0.0 <= self.time_epsilon < 1.0:
            raise ValueError(f"time_epsilon must be in [0, 1), got {self.time_epsilon}")
        if not isinstance(self.mask_token_id, int) or self.mask_token_id < 0:
            raise ValueError(f"mask_token_id must be a non-negative integer, got {self.mask_token_id!r}")
        self._check_block_settings()

    def _check_block_settings(self) -> None:
        if self.block_time not in BLOCK_TIMES:
            raise ValueError(f"unknown block_time {self.block_time!r}; choose one of: {', '.join(BLOCK_TIMES)}")
        if self.block_size is None:
            return
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")
        if self.shift_logits:
            raise ValueError("block diffusion predicts each token at its own position: shift_logits must be False")
        if parse_loss_weight_type(self.loss_weight_type).kind == "cart":
            raise ValueError("block diffusion takes the scheduler or uniform loss weight, not cart")

    @classmethod
    def for_family(cls, family: str | Family, mask_token_id: int, **overrides: object) -> LossConfig:
        """The family's defaults (logit shift, loss weight, block size) with `overrides` (any other field) applied."""
        family = get_family(family)
        if not family.is_diffusion:
            raise ValueError(f"family {family.name!r} is not a diffusion family; train it with ar_loss")
        base = cls(
            mask_token_id=mask_token_id,
            shift_logits=family.shift_logits,
            loss_weight_type=family.default_loss_weight or "scheduler",
            block_size=family.block_size,
        )
        return replace(base, **overrides)


@dataclass
class LossOutput:
    """A micro-batch's loss and detached counts for logging (tensors, so that nothing waits on the device).

    `nll_sum` is the sum of weighted cross-entropies over masked tokens: `nll_sum / num_maskable`, accumulated over
    batches, is the per-token NLL bound whose exp is the reported perplexity bound. `num_correct / num_masked` is the
    masked-token accuracy. `empty` is true when no token was trained; the loss is then exactly 0 (with a graph).
    `masked` and `correct` (bool [B, L]) say where, so that accuracy can be split (answer tokens, padding).
    """

    loss: torch.Tensor
    num_maskable: torch.Tensor
    num_masked: torch.Tensor
    num_correct: torch.Tensor
    nll_sum: torch.Tensor
    masked: torch.Tensor | None = None
    correct: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        return int(self.num_masked) == 0


def target_positions(batch: Batch, next_token: bool = False) -> torch.Tensor:
    """Bool [B, L]: the positions whose token is trained: labels != -100 (without labels: attention_mask, else all).

    `next_token` (the AR loss) also drops position 0, which no position predicts.
    """
    input_ids = batch["input_ids"]
    labels = batch.get("labels")
    attention_mask = batch.get("attention_mask")
    if labels is not None:
        if labels.shape != input_ids.shape:
            raise ValueError(
                f"batch labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}: they must match"
            )
        positions = labels != IGNORE_INDEX
    elif attention_mask is not None:
        positions = attention_mask.bool()
    else:
        positions = torch.ones_like(input_ids, dtype=torch.bool)
    if next_token:
        positions = positions.clone()
        positions[:, 0] = False
    return positions


def count_items(batch: Batch, loss_norm_type: str, next_token: bool = False) -> torch.Tensor:
    """The micro-batch's share of the loss denominator: maskable tokens (`token`) or sequences (`sequence`,
    `batch`). Summed over an optimizer step's micro-batches, it is the `num_items_in_batch` to pass to the losses."""
    if loss_norm_type == "token":
        return target_positions(batch, next_token).sum()
    if loss_norm_type in ("sequence", "batch"):
        return torch.tensor(batch["input_ids"].shape[0], device=batch["input_ids"].device)
    raise ValueError(f"unknown loss_norm_type {loss_norm_type!r}; choose one of: {', '.join(LOSS_NORM_TYPES)}")


def draw_mask(
    batch: Batch, config: LossConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw times t and the masked positions bool [B, L] (within the maskable positions). t is [B], one per
    sequence, except for block diffusion with `block_time` `block`: [B, L], each block's time over its tokens."""
    input_ids = batch["input_ids"]
    if config.block_size is not None and config.block_time == "block":
        batch_size, length = input_ids.shape
        t = block_times(batch_size, length, config.block_size, config.time_epsilon, generator, input_ids.device)
        return t, mask_with_token_times(target_positions(batch), t, config.noise_schedule, generator)
    t = sample_times(input_ids.shape[0], config.time_epsilon, generator, device=input_ids.device)
    _, masked = mask_tokens(
        input_ids, target_positions(batch), t, config.mask_token_id, generator, config.noise_schedule
    )
    return t, masked


def token_weights(config: LossConfig, t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Float [B, L] weights of each position's cross-entropy (only masked positions count); t is [B] or [B, L]."""
    weight_type = parse_loss_weight_type(config.loss_weight_type)
    if weight_type.kind == "cart":
        return cart_weights(masked, weight_type.geo_p)
    if weight_type.kind == "uniform":
        return torch.ones(masked.shape, device=masked.device)
    weight = get_schedule(config.noise_schedule).weight(t.float())
    return (weight if weight.dim() == 2 else weight[:, None]).expand(masked.shape)


def _normalise(
    weighted_ce: torch.Tensor,
    batch_idx: torch.Tensor,
    trained: torch.Tensor,
    loss_norm_type: str,
    num_items_in_batch: int | torch.Tensor | None,
) -> torch.Tensor:
    """Sum of `weighted_ce` (one value per selected row of sequence `batch_idx`) divided as `loss_norm_type` says."""
    batch_size = trained.shape[0]
    per_sequence_count = trained.sum(dim=1)
    if loss_norm_type == "sequence":
        per_sequence = torch.zeros(batch_size, dtype=weighted_ce.dtype, device=weighted_ce.device)
        per_sequence = per_sequence.index_add(0, batch_idx, weighted_ce)
        total = (per_sequence / per_sequence_count.clamp_min(1)).sum()
    else:
        total = weighted_ce.sum()
    if num_items_in_batch is None:
        num_items_in_batch = per_sequence_count.sum() if loss_norm_type == "token" else batch_size
    denominator = torch.as_tensor(num_items_in_batch, device=total.device).to(total.dtype).clamp_min(1)
    return total / denominator


def _output(loss, logits, targets, weighted_ce, trained, selected) -> LossOutput:
    with torch.no_grad():
        hits = logits.argmax(dim=-1) == targets
        correct = torch.zeros_like(selected)
        correct[selected] = hits  # boolean indexing walks `selected` in the row-major order of its nonzero()
        return LossOutput(
            loss=loss,
            num_maskable=trained.sum(),
            num_masked=selected.sum(),
            num_correct=hits.sum(),
            nll_sum=weighted_ce.detach().sum(),
            masked=selected,
            correct=correct,
        )


def diffusion_loss(
    model: nn.Module,
    batch: Batch,
    *,
    masked: torch.Tensor,
    t: torch.Tensor,
    config: LossConfig,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> LossOutput:
    """The masked-diffusion loss of one (micro-)batch for the given masked positions and times.

    `batch` holds `input_ids` [B, L], optionally `labels` (-100 = not maskable; elsewhere equal to `input_ids`,
    which are the targets) and `attention_mask` (passed to the model). Masked positions are replaced by
    `config.mask_token_id` and the model is run once, with logits only at masked positions (block diffusion: once
    over `x_t ⊕ x_0`). `t` is [B], or [B, L] (a time per token, as `draw_mask` gives for per-block times).
    `num_items_in_batch`: the loss denominator of the whole optimizer step (see `count_items`); by default this
    micro-batch's own.
    """
    input_ids = batch["input_ids"]
    maskable = target_positions(batch)
    if masked.shape != input_ids.shape or masked.dtype != torch.bool:
        raise ValueError(
            f"masked must be a bool tensor shaped like input_ids {tuple(input_ids.shape)}, got {masked.dtype} "
            f"of shape {tuple(masked.shape)}"
        )
    if t.shape not in ((input_ids.shape[0],), input_ids.shape):
        raise ValueError(
            f"t must have one time per sequence, shape [{input_ids.shape[0]}], or one per token, shape "
            f"{list(input_ids.shape)}; got {tuple(t.shape)}"
        )
    labels = batch.get("labels")
    if labels is not None and bool(((labels != input_ids) & maskable).any()):
        raise ValueError("batch labels differ from input_ids at maskable positions: the diffusion targets are the ids")
    if bool((masked & ~maskable).any()):
        raise ValueError("masked positions include tokens that are not maskable (label -100 or padding)")

    noisy_ids = input_ids.masked_fill(masked, config.mask_token_id)
    batch_idx, pos_idx = masked.nonzero(as_tuple=True)
    if config.block_size is not None:
        logits = block_logits_at_positions(
            model, noisy_ids, input_ids, config.block_size, (batch_idx, pos_idx), batch.get("attention_mask")
        )
    else:
        logits = logits_at_positions(
            model, noisy_ids, batch.get("attention_mask"), (batch_idx, pos_idx), shift=config.shift_logits
        )
    targets = input_ids[batch_idx, pos_idx]
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    weighted_ce = ce * token_weights(config, t, masked)[batch_idx, pos_idx]
    loss = _normalise(weighted_ce, batch_idx, maskable, config.loss_norm_type, num_items_in_batch)
    return _output(loss, logits, targets, weighted_ce, maskable, masked)


def ar_loss(
    model: nn.Module,
    batch: Batch,
    *,
    loss_norm_type: str = "token",
    num_items_in_batch: int | torch.Tensor | None = None,
) -> LossOutput:
    """Next-token cross-entropy of a causal LM (the autoregressive baseline), normalised like `diffusion_loss`.

    Targets are `labels` (else `input_ids`) at positions 1.. with label != -100, each predicted from the position
    before it; logits are computed only there. Pass `count_items(batch, loss_norm_type, next_token=True)` sums as
    `num_items_in_batch` under gradient accumulation.
    """
    if loss_norm_type not in LOSS_NORM_TYPES:
        raise ValueError(f"unknown loss_norm_type {loss_norm_type!r}; choose one of: {', '.join(LOSS_NORM_TYPES)}")
    input_ids = batch["input_ids"]
    trained = target_positions(batch, next_token=True)
    batch_idx, pos_idx = trained.nonzero(as_tuple=True)
    logits = logits_at_positions(model, input_ids, batch.get("attention_mask"), (batch_idx, pos_idx), shift=True)
    labels = batch.get("labels")
    targets = (labels if labels is not None else input_ids)[batch_idx, pos_idx]
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    loss = _normalise(ce, batch_idx, trained, loss_norm_type, num_items_in_batch)
    return _output(loss, logits, targets, ce, trained, trained)
