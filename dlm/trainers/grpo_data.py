"""The prompts of a GRPO run: encoded once (chat template, cut from the left to `max_prompt_length`), batched
left-padded, and ordered so that each optimizer step's prompts come `num_iterations` times in a row (TRL's
`RepeatSampler`): the trainer samples them once and updates on them `num_iterations` times."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dlm.generation import encode_prompts
from dlm.loading import LoadedModel
from dlm.trainers.grpo_config import GRPOError


@dataclass(frozen=True)
class EncodedPrompts:
    rows: list[dict[str, Any]]  # id, prompt (messages), columns (the row's other values), prompt_ids
    truncated: int  # prompts cut from the left to max_prompt_length

    def summary(self) -> str:
        cut = f", {self.truncated} cut from the left to max_prompt_length" if self.truncated else ""
        return f"{len(self.rows)} encoded{cut}"


def encode_prompt_rows(examples: Sequence[Any], loaded: LoadedModel, max_prompt_length: int) -> EncodedPrompts:
    """`examples` (with `id`, `prompt` messages and `columns`, as `plugin_sdk.prompts.read_prompts` gives them)
    with their prompt token ids: the model's chat template with the generation prompt, cut from the left."""
    rows, truncated = [], 0
    for example in examples:
        ids, _ = encode_prompts(loaded.tokenizer, [example.prompt], loaded.special_ids.pad)
        ids = ids[0].tolist()
        if len(ids) > max_prompt_length:
            ids, truncated = ids[-max_prompt_length:], truncated + 1
        rows.append({"id": example.id, "prompt": example.prompt, "columns": dict(example.columns), "prompt_ids": ids})
    return EncodedPrompts(rows, truncated)


@dataclass
class PromptCollator:
    """Encoded prompt rows into a batch: `prompt_ids` [B, P] left-padded with `pad_id`, `prompt_mask` [B, P]
    (1 = a real token) and the rows themselves (`rows`: ids, messages and columns, for the rewards)."""

    pad_id: int

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        width = max(len(r["prompt_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["prompt_ids"])
            ids[i, width - n :] = torch.tensor(row["prompt_ids"])
            mask[i, width - n :] = 1
        return {"prompt_ids": ids, "prompt_mask": mask, "rows": [dict(r) for r in rows]}


class RepeatedStepSampler(torch.utils.data.Sampler[int]):
    """Indices of `size` prompts in a seeded order per epoch, in chunks of `per_step` (one optimizer step's prompts
    over all micro-batches and processes), each chunk given `repeats` times in a row; an incomplete last chunk is
    dropped, so that every step has its full batch."""

    def __init__(self, size: int, per_step: int, repeats: int, seed: int) -> None:
        if size < per_step:
            raise GRPOError(
                f"one optimizer step takes {per_step} prompts (batch_size x gradient_accumulation_steps x "
                f"processes), but the data has {size}: lower batch_size or gradient_accumulation_steps, or add prompts"
            )
        self.size, self.per_step, self.repeats, self.seed = size, per_step, repeats, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.size // self.per_step) * self.per_step * self.repeats

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        for start in range(0, len(order) - self.per_step + 1, self.per_step):
            chunk = order[start : start + self.per_step]
            for _ in range(self.repeats):
                yield from chunk
