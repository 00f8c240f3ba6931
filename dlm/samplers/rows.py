"""Block-by-block denoising in which every row of a batch moves on its own, for the LLaDA and Dream samplers.

A row whose block has no masks left (a parallel threshold can finish it early) starts its next block at once
instead of waiting for the batch, and a row that has finished, or whose answer has ended (`end_ids`), leaves the
batch: forward passes run only on the rows that still decode, whatever block each is at. With the exact schedule
rows never part, so every pass holds the whole batch, as the official samplers'. Each row's network evaluations
are counted (`RowRun.decode`), so a batch costs per prompt what each prompt costs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.samplers.common import BlockLogits, StepHook


@dataclass(kw_only=True)
class RowRun:
    """The canvas [B, prompt + generated] and each row's place in it; a sampler's run adds how a step picks and
    reveals tokens (`_step`) and, if it plans per block, `_enter`."""

    x: torch.Tensor
    prompt_len: int
    offsets: torch.Tensor  # each row's left padding
    mask_id: int
    logits: BlockLogits
    blocks: int
    steps: int  # per block
    end_ids: tuple[int, ...] = ()  # stop a row once its answer has ended (empty: decode every block)
    on_step: StepHook | None = None  # after every round, with the step and block of the row furthest behind
    pass_cost: int = 1  # network evaluations per row and pass (two with classifier-free guidance)

    def __post_init__(self) -> None:
        batch, device = self.x.shape[0], self.x.device
        self.block = torch.zeros(batch, dtype=torch.long, device=device)
        self.step = torch.zeros_like(self.block)
        self.fresh = torch.ones(batch, dtype=torch.bool, device=device)  # the block's first pass refreshes the cache
        self.done = torch.zeros_like(self.fresh)

    @property
    def block_length(self) -> int:
        return self.logits.block_length

    def decode(self) -> torch.Tensor:
        """Denoise every row to its end; return each row's network evaluations [B] (an elastic-cache refresh counts
        as one more)."""
        rows = torch.arange(self.x.shape[0], device=self.x.device)
        self._enter(rows)
        self._advance(rows)
        nfe = torch.zeros_like(self.block)
        while bool((~self.done).any()):
            active = (~self.done).nonzero()[:, 0]
            stepped = False
            for group, refresh in self._groups(active):
                if self._step(group, refresh):
                    nfe[group] += self.pass_cost
                    self.fresh[group] = False
                    stepped = True
            if stepped and self.on_step is not None:
                last = active[self.block[active].argmin()]  # the row furthest behind: blocks never go back
                self.on_step(self.x, int(self.step[last]), int(self.block[last]))
            self.step[active] += 1
            self._advance(active)
        refreshes = getattr(self.logits, "refreshes", None)  # the elastic cache's extra passes
        if refreshes is not None:
            nfe += refreshes.view(-1, len(nfe)).sum(0)
        return nfe

    def _step(self, rows: torch.Tensor, refresh: bool) -> bool:
        """One denoising step of each of `rows` (each at its own block and step); False when it needed no forward
        pass."""
        raise NotImplementedError

    def _enter(self, rows: torch.Tensor) -> None:
        """Plan the rows' current blocks (called as each row starts one)."""

    def columns(self, rows: torch.Tensor) -> torch.Tensor:
        """Canvas columns [rows, block_length] of each row's current block."""
        starts = self.prompt_len + self.block[rows] * self.block_length
        return starts[:, None] + torch.arange(self.block_length, device=self.x.device)

    def _advance(self, rows: torch.Tensor) -> None:
        """Rows whose answer has ended are done; rows whose block is finished start the next one."""
        while len(rows):
            if self.end_ids:
                ended = rows[answers_ended(self.x[rows, self.prompt_len :], self.mask_id, self.end_ids)]
                self.done[ended] = True
                end_rows(self.x, ended, self.prompt_len, self.end_ids)
                rows = rows[~self.done[rows]]
            masked = (self.x[rows[:, None], self.columns(rows)] == self.mask_id).any(-1)
            rows = rows[~masked | (self.step[rows] >= self.steps)]
            self.block[rows] += 1
            self.step[rows] = 0
            self.fresh[rows] = True
            self.done[rows[self.block[rows] == self.blocks]] = True
            rows = rows[~self.done[rows]]
            if len(rows):
                self._enter(rows)

    def _groups(self, active: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
        """The passes of one round, (rows, refresh): without a cache one full pass; with one, the rows starting a
        block refresh together and the others replay (a prefix cache: per block, as their spans differ); the elastic
        cache takes every row in one pass."""
        if self.logits.mode in ("none", "elastic"):  # the elastic cache decides per row what to recompute
            return [(active, False)]
        refresh = self.fresh[active]
        groups = [(active[refresh], True)] if bool(refresh.any()) else []
        replay = active[~refresh]
        if self.logits.mode == "dual":
            return groups + ([(replay, False)] if len(replay) else [])
        return groups + [(replay[self.block[replay] == b], False) for b in self.block[replay].unique().tolist()]


def answers_ended(generated: torch.Tensor, mask_id: int, end_ids: tuple[int, ...]) -> torch.Tensor:
    """Bool [rows]: the answer has ended, an end token revealed with nothing masked before it, so no later step can
    change the answer (revealed tokens stay)."""
    is_end = torch.isin(generated, torch.tensor(end_ids, device=generated.device))
    first_end = torch.where(is_end.any(-1), is_end.int().argmax(-1), generated.shape[1])
    before = torch.arange(generated.shape[1], device=generated.device) < first_end[:, None]
    return is_end.any(-1) & ~((generated == mask_id) & before).any(-1)


def end_rows(x: torch.Tensor, rows: torch.Tensor, prompt_len: int, end_ids: tuple[int, ...]) -> None:
    """Fill every position after each row's first end token with the first of `end_ids` (the rest of its canvas
    is not decoded)."""
    for row in rows.tolist():
        generated = x[row, prompt_len:]
        first_end = int(torch.isin(generated, torch.tensor(end_ids, device=x.device)).int().argmax())
        generated[first_end + 1 :] = end_ids[0]
