"""What the SFT and DPO trainers share: `TrainerConfig` (the settings every trainer has, named like the plugin
parameters they come from), `TrainResult`, loading the model for training (LoRA/QLoRA), resuming, the shared
`TrainingArguments` keywords, fixed validation masks, and saving the result.

`SFTConfig` and `DPOConfig` add their own settings; a subclass that wants another default for a shared setting
declares the field again with it (dataclass inheritance keeps the field, with the new default).
"""

from __future__ import annotations

import dataclasses
import resource
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
from transformers.trainer_utils import get_last_checkpoint

from dlm.callbacks import Reporter
from dlm.errors import ModelError
from dlm.loading import LoadedModel, load_model_and_tokenizer
from dlm.lora import apply_lora


@dataclass
class TrainerConfig:
    """Shared training settings; defaults are those of masked-diffusion SFT."""

    model_name: str
    output_dir: str
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    learning_rate_schedule: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_train_epochs: int = 1
    train_steps: int = 0
    max_length: int = 512
    seed: int = 42
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "default"
    logging_steps: int = 10
    eval_steps: float = 0.1
    save_steps: float = 0.25
    save_total_limit: int = 0  # checkpoints kept (the oldest go first); 0 keeps all
    resume_from_checkpoint: str = ""
    train_device: str = "auto"
    trust_remote_code: bool = False
    workspace: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> Self:
        """The config from a job's parameters (unknown names and None values ignored), then `overrides`."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in params.items() if k in names and v is not None}
        return cls(**{**values, **overrides})

    @property
    def quantized(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit


@dataclass
class TrainResult:
    """A finished (or stopped) training run: the trained model (a PeftModel with LoRA) and what `save_outputs` and
    the plugin's summary need."""

    model: Any
    tokenizer: Any
    loaded: LoadedModel
    global_step: int
    stopped: bool
    summary: str
    checkpoint_dir: str


def load_for_training(config: TrainerConfig, family: str | None = None) -> LoadedModel:
    """The model to train, quantized (QLoRA) on the first GPU when asked."""
    if config.quantized and not config.lora:
        raise ModelError("load_in_4bit/load_in_8bit train only LoRA adapters: turn lora on (QLoRA)")
    return load_model_and_tokenizer(
        config.model_name,
        family=family,
        dtype=config.dtype,
        load_in_4bit=config.load_in_4bit,
        load_in_8bit=config.load_in_8bit,
        trust_remote_code=config.trust_remote_code,
        workspace=config.workspace,
        device_map={"": 0} if config.quantized and torch.cuda.is_available() else None,
    )


def trainable_model(config: TrainerConfig, loaded: LoadedModel, reporter: Reporter) -> Any:
    """The loaded model, under new LoRA adapters when `config.lora` is on; its size goes to the log."""
    reporter.log(
        f"model {config.model_name}: family {loaded.family.name}, "
        f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.2f}M parameters"
    )
    if not config.lora:
        return loaded.model
    return apply_lora(
        loaded.model,
        loaded.family,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
    )


def _latest_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint of this run, else of the earlier runs whose checkpoint folders sit beside it (a job
    resumed from the workbench is a new job, with its own, still empty folder)."""
    own = get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
    if own is not None:
        return own
    states = checkpoint_dir.parent.glob("*/checkpoint-*/trainer_state.json") if checkpoint_dir.parent.is_dir() else []
    newest = max(states, key=lambda state: state.stat().st_mtime, default=None)
    return str(newest.parent) if newest is not None else None


def resume_path(config: TrainerConfig, checkpoint_dir: Path) -> str | None:
    wanted = config.resume_from_checkpoint.strip()
    if not wanted:
        return None
    if wanted == "latest":
        found = _latest_checkpoint(checkpoint_dir)
        if found is None:
            raise ModelError(
                f"resume_from_checkpoint=latest, but neither {checkpoint_dir} nor the folders beside it hold a "
                "checkpoint yet"
            )
        return found
    if not (Path(wanted) / "trainer_state.json").is_file():
        raise ModelError(f"resume_from_checkpoint={wanted!r} is not a checkpoint folder (no trainer_state.json)")
    return wanted


def train_or_resume(trainer: Any, config: TrainerConfig, reporter: Reporter) -> None:
    """`trainer.train()`, from the checkpoint `resume_from_checkpoint` names, if any."""
    resume = resume_path(config, Path(config.output_dir))
    if resume:
        reporter.log(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)


def step_interval(value: float) -> float | int:
    """A fraction of training below 1, a step count from 1 (what TrainingArguments expects)."""
    return float(value) if value < 1 else int(value)


def common_training_arguments(config: TrainerConfig, checkpoint_dir: Path) -> dict[str, Any]:
    """`TrainingArguments` keywords every dlm trainer shares, from their shared settings."""
    use_cpu = config.train_device == "cpu" or not torch.cuda.is_available()
    bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and not use_cpu and torch.cuda.is_bf16_supported())
    return {
        "output_dir": str(checkpoint_dir),
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.learning_rate_schedule,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "num_train_epochs": config.num_train_epochs if config.num_train_epochs > 0 else 1,
        "max_steps": config.train_steps if config.num_train_epochs == 0 else -1,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": step_interval(config.save_steps) if config.save_steps > 0 else 1.0,
        "save_total_limit": config.save_total_limit or None,
        "seed": config.seed,
        "data_seed": config.seed,
        "bf16": bf16,
        "fp16": config.dtype == "float16" and not use_cpu,
        "use_cpu": use_cpu,
        "activation_checkpointing": config.gradient_checkpointing,
        "report_to": "none",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "ddp_find_unused_parameters": False,
    }


class FixedEvalMasks:
    """`Trainer` mixin: every evaluation draws its masks from `_eval_generator`, seeded anew with
    `args.eval_mask_seed`, so validation losses compare like with like; it is None outside evaluation."""

    _eval_generator: torch.Generator | None = None

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        self._eval_generator = torch.Generator(device=self.args.device).manual_seed(self.args.eval_mask_seed)
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._eval_generator = None


def memory_in_use_gb() -> float:
    """Peak accelerator memory when on CUDA, else the process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def last_logged(trainer: Any, key: str) -> str:
    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    return f"{values[-1]:.4g}" if values else "n/a"


def save_outputs(result: TrainResult, *, adaptor_dir: Path | None, full_model_dir: Path | None) -> list[Path]:
    """Save the LoRA adapter (loadable with `PeftModel.from_pretrained` on the base) and/or the full model
    (LoRA merged) as a normal checkpoint. Written to a temporary folder and renamed, so nothing half-written is
    ever taken for a result."""
    written = []
    model = result.model
    if adaptor_dir is not None and hasattr(model, "peft_config"):
        written.append(_save_atomically(model, result.tokenizer, adaptor_dir))
    if full_model_dir is not None:
        full = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        written.append(_save_atomically(full, result.tokenizer, full_model_dir))
    return written


def _save_atomically(model: Any, tokenizer: Any, destination: Path) -> Path:
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.partial-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination
