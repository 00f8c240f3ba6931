"""BD3LM's block sampler (dllm's `BD3LMSampler`) for block-diffusion models: causal LMs converted to block diffusion
(`is_causal: false`, a mask token), whose attention is block-causal, bidirectional inside a block.

Generation goes block by block; block ids are column // block length. By default (`block_alignment="sequence_start"`)
each row's blocks start at its first token, as training lays rows out (dllm's trainer and ours count blocks from the
first token and append EOS to a whole block): the answer starts inside the prompt's last block, and the first
decoded block holds that block's prompt tokens, unmasked, beside its first masks. dllm's sampler instead left-pads
the prompt to a whole number of blocks, so every answer starts a block (`block_alignment="prompt_end"`, kept for
the golden token ids): a model trained as dllm trains then decodes its first answer tokens in a layout it has never
seen (on the demo's task, accuracy 0.5 against TODO). The prompt and every finished block sit in an exact key/value cache (`BlockCausalCache`): a finished block's
keys and values are computed once, by one forward pass of the block against the cache, and appended. Each
denoising step of the current block runs the block alone against the cache and leaves the cache as it was. dllm
recomputes the whole prefix at the start of every block instead; the keys and values are the same.

Padding is neither query nor key and is skipped by the position ids (RoPE positions count real tokens only): the
prompt's left padding (attention mask 0), and, as in dllm, generated tokens equal to the pad id once their block is
committed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from dlm.samplers.block_cache import BlockCausalCache
from dlm.samplers.common import (
    DiffusionSampler,
    SampleOutput,
    SamplingError,
    StepHook,
    check_decoding,
    check_family_cache,
    check_prompt,
    count_generated,
    parallel_reveal,
    rand,
    reveal_top,
)

if TYPE_CHECKING:
    from dlm.families.base import Family
    from dlm.families.special_ids import SpecialIds
    from dlm.generation import SamplerSettings

BD3LM_REMASKING = ("low_confidence", "random")


def _linear_reveal_fraction(step: int, steps: int) -> float:
    """Share of the still-masked positions revealed at `step` of `steps` under the linear schedule alpha(t) = 1 - t:
    1 - (1 - alpha(s)) / (1 - alpha(t)) with t = (steps - step) / steps and s = t - 1 / steps. The ratio is taken in
    float32, as dllm's scheduler does, so that halves round the same way."""
    t = torch.tensor((steps - step) / steps, dtype=torch.float32)
    s = torch.tensor((steps - step - 1) / steps, dtype=torch.float32)
    return 1.0 - float((1 - (1 - s)) / (1 - (1 - t)))


def bd3lm_schedule(mask_count: int, steps: int) -> list[int]:
    """Tokens to reveal at each step of a block holding `mask_count` masks (dllm's `get_num_transfer_tokens`, linear
    schedule): round-half-to-even of (masks left) x (reveal fraction), steps that reveal nothing dropped; the counts
    sum to `mask_count`. 4 masks in 8 steps: [1, 1, 1, 1]; 10 masks in 4 steps: [2, 3, 2, 3]."""
    counts, left = [], mask_count
    for step in range(steps):
        count = min(round(left * _linear_reveal_fraction(step, steps)), left)
        left -= count
        if count:
            counts.append(count)
        if not left:
            break
    return counts


def check_bd3lm_settings(
    steps: int, gen_length: int, block_length: int, temperature: float, remasking: str, cfg_scale: float
) -> None:
    if gen_length < 1:
        raise SamplingError(f"gen_length must be at least 1, got {gen_length}")
    if block_length < 1:
        raise SamplingError(f"block_length must be at least 1, got {block_length}")
    if steps < 1:
        raise SamplingError(f"steps must be at least 1 (they are shared out over the blocks), got {steps}")
    if remasking not in BD3LM_REMASKING:
        raise SamplingError(f"remasking={remasking!r} is unknown; choose one of: {', '.join(BD3LM_REMASKING)}")
    if temperature < 0:
        raise SamplingError(f"temperature must be >= 0, got {temperature}")
    if cfg_scale < 0:
        raise SamplingError(f"cfg_scale must be >= 0 (0 turns classifier-free guidance off), got {cfg_scale}")


@dataclass(frozen=True)
class _Choice:
    """How a step picks tokens (argmax, or Gumbel-max in float64 at a temperature) and ranks positions (probability
    of the chosen token, or uniform noise for `random`)."""

    temperature: float
    remasking: str
    generator: torch.Generator | None

    @property
    def deterministic(self) -> bool:
        """Whether a position's choice depends on its own logits alone (no random draws shaped like the block)."""
        return self.temperature == 0 and self.remasking == "low_confidence"

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, ranking confidence, probability of each token) for block logits [B, n, V]."""
        if self.temperature > 0:
            noise = rand(logits.shape, self.generator, logits.device, torch.float64)
            x0 = (logits.double().exp() / (-noise.log()) ** self.temperature).argmax(-1)
        else:
            x0 = logits.argmax(-1)
        probability = F.softmax(logits, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        confidence = probability if self.remasking == "low_confidence" else rand(x0.shape, self.generator, x0.device)
        return x0, confidence, probability


BLOCK_ALIGNMENTS = ("sequence_start", "prompt_end")


@dataclass
class _Canvas:
    """Where everything sits in a run: columns are cut into blocks of `block` columns (the last one may be shorter);
    row b holds hidden positions (neither query nor key), its prompt, its `gen_length` masks, then hidden positions
    up to the longest row.

    `sequence_start` (as training lays rows out: blocks count from each row's first token): a row's leading hidden
    positions are a whole number of blocks, so its prompt starts a block and its answer starts where its prompt ends,
    inside the prompt's last block; decoding starts at the first block that holds an answer position of some row.
    `prompt_end` (dllm's sampler): the prompts, left-padded, are padded further left to a whole number of blocks, so
    every answer starts a block."""

    ids: torch.Tensor  # [B, T]
    real: torch.Tensor  # [B, T] bool: a prompt or answer position
    prompt: torch.Tensor  # [B, T] bool: a prompt position
    answer_start: torch.Tensor  # [B]: the column of each row's first answer position
    first_block: int  # the column where decoding starts (a block boundary)

    @classmethod
    def lay_out(
        cls, prompt_ids: torch.Tensor, prompt_valid: torch.Tensor, gen_length: int, block: int, mask_id: int,
        filler: int, alignment: str,
    ) -> _Canvas:  # fmt: skip
        rows, width = prompt_ids.shape
        lengths = prompt_valid.sum(-1)
        if alignment == "prompt_end":
            lead = torch.full_like(lengths, -width % block) + width - lengths
        else:
            lead = block * (int((lengths // block).max()) - lengths // block)
        answer_start = lead + lengths
        first_block = int(answer_start.min()) // block * block
        total = int(answer_start.max()) + gen_length  # the last block may be shorter
        index = torch.arange(total, device=prompt_ids.device).expand(rows, total)
        prompt = (index >= lead.unsqueeze(-1)) & (index < answer_start.unsqueeze(-1))
        answer = (index >= answer_start.unsqueeze(-1)) & (index < answer_start.unsqueeze(-1) + gen_length)
        ids = torch.full((rows, total), filler, dtype=prompt_ids.dtype, device=prompt_ids.device)
        ids[prompt] = prompt_ids[prompt_valid]
        ids[answer] = mask_id
        return cls(ids, prompt | answer, prompt, answer_start, first_block)

    def answers(self, gen_length: int) -> torch.Tensor:
        """[B, gen_length]: each row's answer positions."""
        index = self.answer_start.unsqueeze(-1) + torch.arange(gen_length, device=self.ids.device)
        return self.ids.gather(1, index)

    def answer_positions(self, start: int, end: int, gen_length: int) -> torch.Tensor:
        """[B, end - start] bool: which columns of block [start, end) are answer positions."""
        index = torch.arange(start, end, device=self.ids.device)
        offset = index - self.answer_start.unsqueeze(-1)
        return (offset >= 0) & (offset < gen_length)


def _row_schedules(mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, steps] tokens to reveal per row and step: each row's `bd3lm_schedule`, zero-padded on the right."""
    counts = torch.zeros(len(mask_counts), steps, dtype=torch.long)
    for row, masks in enumerate(mask_counts.tolist()):
        schedule = bd3lm_schedule(masks, steps) if masks else []
        counts[row, : len(schedule)] = torch.tensor(schedule, dtype=torch.long)
    return counts.to(mask_counts.device)


@dataclass
class _Bd3lmRun:
    """One sampling run: the canvas, the cache of the `live` rows (doubled under classifier-free guidance:
    conditional, then prompt masked), the decoding rule and each row's network evaluations (`row_nfe`)."""

    prompt_ids: torch.Tensor
    canvas: _Canvas
    gen_length: int
    mask_id: int
    pad_id: int | None
    cache: BlockCausalCache
    choose: _Choice
    cfg_scale: float
    right_shift: bool
    threshold: float | None
    last_logits: torch.Tensor | None = None  # the live rows' committed prefix's last logits (right shift), guided
    live: torch.Tensor = field(init=False)  # [L] the canvas rows in the cache, in its order
    row_nfe: torch.Tensor = field(init=False)  # [B]

    def __post_init__(self) -> None:
        rows = self.canvas.ids.shape[0]
        self.live = torch.arange(rows, device=self.canvas.ids.device)
        self.row_nfe = torch.zeros(rows, dtype=torch.long, device=self.canvas.ids.device)

    @property
    def x(self) -> torch.Tensor:
        return self.canvas.ids

    @property
    def evaluations(self) -> int:
        """Network evaluations of one forward pass per row (a guided pass runs each row twice)."""
        return 2 if self.cfg_scale > 0 else 1

    def start(self) -> None:
        """Commit the columns before the first block to decode (the unconditional rows mask their prompt tokens). A
        row with no real token there (its prompt is shorter than a block) sits the pass out, as alone it makes none."""
        if self.canvas.first_block:
            self.commit(0, self.canvas.first_block, only_real=True)

    def block(self, start: int, end: int, steps: int, index: int, on_step: StepHook | None) -> None:
        """Denoise block [start, end) with dllm's schedule for `steps` steps, per row for the masks it holds; under
        a deterministic choice a row whose block holds no mask sits out the passes (it would reveal nothing), so
        each live row takes the passes it takes alone."""
        schedule = _row_schedules((self.x[:, start:end] == self.mask_id).sum(-1), steps)
        for step in range(steps):
            stepping = (self.x[self.live, start:end] == self.mask_id).any(-1)
            if not bool(stepping.any()):
                break
            if not self.choose.deterministic:  # random draws cover every live row, as dllm's do
                stepping = torch.ones_like(stepping)
            in_cache = stepping.nonzero().squeeze(-1)
            rows = self.live[in_cache]
            masked = self.x[rows, start:end] == self.mask_id
            # choices that depend on each position alone need the output head only where a row is still masked
            where = masked if self.choose.deterministic and not self.right_shift else None
            block_ids = self._pass_ids(self.x[rows, start:end], self.canvas.prompt[rows, start:end])
            block_real = self._doubled(self.canvas.real[rows, start:end])
            logits = self._guided(
                self.cache.peek(block_ids, block_real, self._doubled(where), self._cache_rows(in_cache))
            )
            self.row_nfe[rows] += self.evaluations
            if self.right_shift:  # with nothing committed, the first column is a prompt token: its logits go unread
                previous = logits[:, 0] if self.last_logits is None else self.last_logits[in_cache]
                logits = torch.cat([previous.unsqueeze(1), logits[:, :-1]], dim=1)
            self._reveal(logits, masked, rows, start, end, schedule[rows, step], where)
            if on_step is not None:
                on_step(self.output(), step, index)

    def commit(self, start: int, end: int, only_real: bool = False) -> None:
        """Append columns [start, end) of the live rows to the cache (`only_real`: run only the rows with a real
        token there); generated pad-id tokens become padding."""
        ids, valid = self.x[self.live, start:end], self.canvas.real[self.live, start:end]
        prompt = self.canvas.prompt[self.live, start:end]
        if self.pad_id is not None:
            valid = valid & ~((ids == self.pad_id) & ~prompt)
        running = valid.any(-1) if only_real else torch.ones_like(valid[:, 0])
        in_cache = self._cache_rows(running.nonzero().squeeze(-1))
        logits = self.cache.commit(self._pass_ids(ids, prompt), self._doubled(valid), in_cache)
        self.last_logits = self._guided(logits)
        self.row_nfe[self.live[running]] += self.evaluations

    def leave(self, staying: torch.Tensor) -> None:
        """Only the live rows where `staying` (bool [L]) go on."""
        kept = staying.nonzero().squeeze(-1)
        self.cache.keep_rows(self._cache_rows(kept))
        self.live = self.live[kept]
        if self.last_logits is not None:
            self.last_logits = self.last_logits[kept]

    def output(self) -> torch.Tensor:
        """[B, P + gen_length]: the prompts as given, then the answers."""
        return torch.cat([self.prompt_ids, self.canvas.answers(self.gen_length)], dim=1)

    def _doubled(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        """Per-row values of a pass, repeated for the unconditional rows under guidance."""
        return rows if self.cfg_scale <= 0 or rows is None else torch.cat([rows, rows])

    def _pass_ids(self, ids: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """A pass's token ids, followed under guidance by a copy with the `prompt` positions masked."""
        return ids if self.cfg_scale <= 0 else torch.cat([ids, ids.masked_fill(prompt, self.mask_id)])

    def _cache_rows(self, positions: torch.Tensor) -> torch.Tensor:
        """The cache rows of the live rows at `positions`: under guidance, each row's unconditional copy follows
        the conditional rows."""
        return positions if self.cfg_scale <= 0 else torch.cat([positions, positions + len(self.live)])

    def _guided(self, logits: torch.Tensor) -> torch.Tensor:
        if self.cfg_scale <= 0:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + (self.cfg_scale + 1) * (cond - uncond)

    def _reveal(
        self, logits: torch.Tensor, masked: torch.Tensor, rows: torch.Tensor, start: int, end: int,
        counts: torch.Tensor, where: torch.Tensor | None,
    ) -> None:  # fmt: skip
        x0, confidence, probability = self.choose(logits)
        if where is not None:  # back to the whole block [R, n]: the positions left out are revealed already
            x0, confidence, probability = (
                v.new_zeros(where.shape).masked_scatter(where, v) for v in (x0, confidence, probability)
            )
        confidence = confidence.masked_fill(~masked, -torch.inf)
        counts = torch.minimum(masked.sum(-1), counts)
        # a row's real columns are a prefix of the block: rank them alone, so that ties break as for the row alone
        widths = self.canvas.real[rows, start:end].sum(-1)
        reveal = reveal_top(confidence, counts, torch.zeros_like(counts), widths)
        reveal = parallel_reveal(reveal, masked, probability, self.threshold) & masked
        self.x[rows, start:end] = torch.where(reveal, x0, self.x[rows, start:end])


@dataclass(frozen=True)
class BD3LMSampler(DiffusionSampler):
    """dllm's BD3LM block sampler for a batch of left-padded prompts [B, P], with an exact key/value cache.

    `gen_length` tokens are generated in blocks of `block_length` (the last one shorter when it does not divide
    `gen_length`), each in ceil(`steps` / blocks) steps of dllm's linear schedule (`bd3lm_schedule`). Each step
    reveals the positions of highest confidence (softmax probability of the chosen token for `low_confidence`,
    uniform noise for `random`); tokens are the argmax of the logits at temperature 0, else of Gumbel-perturbed
    logits in float64. `right_shift_logits`: block position i reads the logits of position i - 1 (the first reads the
    committed prefix's last logits). `cfg_scale` > 0 adds rows whose prompt tokens are masked:
    `uncond + (cfg_scale + 1) * (cond - uncond)`. Generation stops after the first block by whose end every row has
    produced an end token (`eos_id`/`eot_id`, as dllm with its EOS); the rest of the canvas is filled with it.
    `stop_at_end` stops each row so, after its own such block (dllm's batch decodes on past a row's end).

    Rows advance on their own: a row that has stopped or whose answer is complete leaves the batch and the cache,
    and (where no random draw is shared) a row whose block holds no mask sits out the block's remaining passes, so
    each row gets the tokens and network evaluations (`row_nfe`; `nfe`: the batch's) it gets alone.

    `block_alignment` (module docstring): `sequence_start`, blocks as in training (each row decodes as it would
    alone: the schedule follows each row's own masks); `prompt_end`, dllm's layout and token ids.

    Beyond dllm (off by default): `parallel_threshold` also reveals every masked position whose chosen token's
    probability reaches it, so a block can finish in fewer steps.
    """

    blockwise: ClassVar[bool] = True

    steps: int
    gen_length: int
    block_length: int
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    right_shift_logits: bool = False
    parallel_threshold: float | None = None
    block_alignment: str = "sequence_start"
    stop_at_end: bool = False

    def __post_init__(self) -> None:
        check_bd3lm_settings(
            self.steps, self.gen_length, self.block_length, self.temperature, self.remasking, self.cfg_scale
        )
        check_decoding("none", self.parallel_threshold)
        if self.block_alignment not in BLOCK_ALIGNMENTS:
            raise SamplingError(
                f"block_alignment={self.block_alignment!r} is unknown; choose one of: {', '.join(BLOCK_ALIGNMENTS)}"
            )

    @property
    def blocks(self) -> int:
        return math.ceil(self.gen_length / self.block_length)

    @property
    def steps_per_block(self) -> int:
        return math.ceil(self.steps / self.blocks)

    @property
    def forward_passes(self) -> int:
        """Model calls per answer at most: the denoising steps, the prompt's and each finished block's but the last.
        Under `sequence_start` an answer can start inside a block and so span one block more."""
        spanned = (
            self.blocks
            if self.block_alignment == "prompt_end"
            else -(-(self.gen_length + self.block_length - 1) // self.block_length)
        )
        return spanned * (self.steps_per_block + 1)

    @classmethod
    def from_settings(cls, settings: SamplerSettings, family: Family) -> BD3LMSampler:
        """The sampler for `settings` (`max_new_tokens` is the generated length); `SamplingError` names a setting
        that cannot work."""
        cls.check_decoding_settings(settings, family)
        return cls(
            steps=settings.steps,
            gen_length=settings.max_new_tokens,
            block_length=settings.block_length,
            temperature=settings.temperature,
            remasking=settings.remasking,
            cfg_scale=settings.cfg_scale,
            right_shift_logits=family.shift_logits,
            parallel_threshold=settings.parallel_threshold,
            stop_at_end=settings.stop_at_end,
        )

    @classmethod
    def check_decoding_settings(cls, settings: SamplerSettings, family: Family) -> None:
        """The fast-decoding settings alone: the key/value cache is always on and exact, so `cache` must be a mode
        the family serves; the threshold must be a probability."""
        check_decoding(settings.cache, settings.parallel_threshold)
        check_family_cache(settings.cache, family)

    def answer(
        self,
        model: torch.nn.Module,
        special: SpecialIds,
        prompt_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        on_step: StepHook | None = None,
    ) -> SampleOutput:
        """Answers to left-padded prompts, ending at the checkpoint's EOS or end-of-turn token; generated pad tokens
        are padding to the blocks after theirs, as in dllm."""
        return self.sample(
            model,
            prompt_ids,
            mask_id=special.mask,
            attention_mask=attention_mask,
            pad_id=special.pad,
            eos_id=special.eos,
            eot_id=special.eot,
            generator=generator,
            on_step=on_step,
        )

    @torch.no_grad()
    def sample(
        self,
        model: torch.nn.Module,
        prompt_ids: torch.Tensor,
        *,
        mask_id: int,
        attention_mask: torch.Tensor | None = None,
        pad_id: int | None = None,
        eos_id: int | None = None,
        eot_id: int | None = None,
        generator: torch.Generator | None = None,
        on_step: StepHook | None = None,
    ) -> SampleOutput:
        """Sample continuations of left-padded prompts [B, P] (see the class). Prompt positions where
        `attention_mask` is 0 are padding; generated tokens equal to `pad_id` are padding to the blocks after theirs
        (dllm takes every pad-id token for padding; its prompts arrive unpadded)."""
        check_prompt(prompt_ids, attention_mask, mask_id)
        if self.stop_at_end and eos_id is None and eot_id is None:
            raise SamplingError("stop_at_end needs eos_id or eot_id (the tokens that end an answer)")
        prompt_valid = (
            torch.ones_like(prompt_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        filler = pad_id if pad_id is not None else 0
        canvas = _Canvas.lay_out(
            prompt_ids, prompt_valid, self.gen_length, self.block_length, mask_id, filler, self.block_alignment
        )
        rows = 2 * prompt_ids.shape[0] if self.cfg_scale > 0 else prompt_ids.shape[0]
        run = _Bd3lmRun(
            prompt_ids=prompt_ids,
            canvas=canvas,
            gen_length=self.gen_length,
            mask_id=mask_id,
            pad_id=pad_id,
            cache=BlockCausalCache(model, self.block_length, rows, prompt_ids.device),
            choose=_Choice(self.temperature, self.remasking, generator),
            cfg_scale=self.cfg_scale,
            right_shift=self.right_shift_logits,
            threshold=self.parallel_threshold,
        )
        run.start()
        ends = [i for i in (eos_id, eot_id) if i is not None]
        self._generate(run, torch.tensor(ends, dtype=prompt_ids.dtype, device=prompt_ids.device), on_step)
        sequences = run.output()
        return SampleOutput(
            sequences=sequences,
            nfe=run.cache.forward_passes * run.evaluations,
            generated_tokens=count_generated(sequences[:, prompt_ids.shape[1] :], (eos_id, eot_id)),
            row_nfe=run.row_nfe,
        )

    def _generate(self, run: _Bd3lmRun, end_ids: torch.Tensor, on_step: StepHook | None) -> None:
        """Denoise block after block, committing each finished one for the rows that go on. After each block, a row
        leaves once its answer is complete, or has ended (it has produced an end token; with `stop_at_end` at once,
        else once every row has): its answer positions after the block become the first end token."""
        canvas = run.canvas
        width = canvas.ids.shape[1]
        ended = torch.zeros(canvas.ids.shape[0], dtype=torch.bool, device=canvas.ids.device)
        for index, start in enumerate(range(canvas.first_block, width, self.block_length)):
            end = min(start + self.block_length, width)
            if index:
                run.commit(start - self.block_length, start)
            run.block(start, end, self.steps_per_block, index, on_step)
            rows = run.live
            answer = canvas.answer_positions(start, end, self.gen_length)[rows]
            ended[rows] |= (torch.isin(canvas.ids[rows, start:end], end_ids) & answer).any(-1)
            stopped = ended[rows] if self.stop_at_end else ended.all().expand(len(rows))
            leaving = stopped | (canvas.answer_start[rows] + self.gen_length <= end)
            for row in rows[stopped].tolist():
                canvas.ids[row, end:] = torch.where(canvas.real[row, end:], end_ids[0], canvas.ids[row, end:])
            if bool(leaving.all()):
                return
            if bool(leaving.any()):
                run.leave(~leaving)
