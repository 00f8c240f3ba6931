"""Run by `accelerate launch` from tests/dlm/test_sft.py: trains tiny-llada on this process's share of the data and
records what this rank saw (the questions of its batches) and the weights it ended with."""

import json
import sys
from pathlib import Path

import torch

import dlm.data
from dlm.trainers.sft_config import SFTConfig
from dlm.trainers.sft_trainer import run_sft


class Reporter:
    is_main_process = True

    def report_progress(self, percent: float) -> None: ...

    def report_status(self, phase: str, step: int | None = None, max_steps: int | None = None) -> None: ...

    def stop_requested(self) -> bool:
        return False

    def log(self, message: str) -> None: ...

    def log_metrics(self, metrics, step: int) -> None: ...

    def log_text(self, tag: str, text: str, step: int) -> None: ...


def main() -> None:
    workspace, out = sys.argv[1], Path(sys.argv[2])
    seen: list[list[int]] = []
    collate = dlm.data.DiffusionCollator.__call__

    def recording(self, rows):
        seen.extend(list(r["input_ids"]) for r in rows)
        return collate(self, rows)

    dlm.data.DiffusionCollator.__call__ = recording
    config = SFTConfig(
        model_name="tiny-llada",
        output_dir=str(out / "checkpoints"),
        workspace=workspace,
        batch_size=2,
        num_train_epochs=0,
        train_steps=3,
        max_length=64,
        learning_rate=1e-3,
        learning_rate_schedule="constant",
        warmup_ratio=0.0,
        save_steps=1000,
        train_device="cpu",
        dtype="float32",
        lora=False,
    )
    rows = [
        [{"role": "user", "content": f"What is {i} + {2 * i}?"}, {"role": "assistant", "content": f"{3 * i}."}]
        for i in range(24)
    ]
    result = run_sft(config, rows, None, Reporter())
    rank = torch.distributed.get_rank()
    torch.save({k: v.detach() for k, v in result.model.state_dict().items()}, out / f"weights{rank}.pt")
    (out / f"seen{rank}.json").write_text(json.dumps({"world": torch.distributed.get_world_size(), "seen": seen}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
