"""`FixedEvalMasks`: validation losses that compare like with like, every evaluation on the same masks."""

from __future__ import annotations

from typing import Any

import torch


class FixedEvalMasks:
    """`Trainer` mixin: every evaluation draws its masks from `_eval_generator`, seeded anew with
    `eval_mask_seed`, so validation losses compare like with like; it is None outside evaluation."""

    _eval_generator: torch.Generator | None = None

    @property
    def eval_mask_seed(self) -> int:
        """The seed of the validation masks: the run's seed + 1 (apart from the training masks')."""
        return self.args.seed + 1

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        self._eval_generator = torch.Generator(device=self.args.device).manual_seed(self.eval_mask_seed)
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._eval_generator = None
