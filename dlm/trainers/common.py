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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch

from dlm.callbacks import Reporter
from dlm.errors import ConfigError, ModelError
from dlm.loading import LoadedModel, load_model_and_tokenizer
from dlm.lora import apply_lora
from dlm.resume import check_checkpoint, disk_full_named, latest_checkpoint, write_owner

SEED_LIMIT = 2**32  # numpy (through transformers' set_seed) takes seeds below 2**32


@dataclass
class TrainerConfig:
    """Shared training settings; defaults are those of masked-diffusion SFT."""

    model_name: str
    output_dir: str
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4  # with LoRA (the default); full fine-tuning wants ~2e-5
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

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ConfigError naming the setting when the settings cannot work; runs when the config is built, so
        before any data or model is loaded. Subclasses extend it."""
        if self.num_train_epochs == 0 and self.train_steps == 0:
            raise ConfigError(
                "num_train_epochs is 0 and train_steps is 0: nothing would be trained; set num_train_epochs to 1 or "
                "more, or train_steps to the number of optimizer steps"
            )
        if self.num_train_epochs > 0 and self.train_steps > 0:
            raise ConfigError(
                f"train_steps={self.train_steps} (max_steps) counts only when num_train_epochs is 0, and "
                f"num_train_epochs is {self.num_train_epochs}: set num_train_epochs to 0 to train for "
                f"{self.train_steps} steps, or train_steps to 0"
            )
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"seed={self.seed} does not fit: use a whole number from 0 to {SEED_LIMIT - 1}")
        if self.quantized and not self.lora:
            raise ConfigError("load_in_4bit/load_in_8bit train only LoRA adapters: turn lora on (QLoRA)")
        if self.train_device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "train_device=cuda, but no CUDA GPU is visible here (torch.cuda.is_available() is false); "
                "use train_device=auto or cpu, or check CUDA_VISIBLE_DEVICES and the driver"
            )

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


def check_positions(config: TrainerConfig, loaded: LoadedModel) -> None:
    """max_length must fit the model's position table (a longer sequence fails or silently degrades)."""
    model_config = loaded.model.config
    limit = getattr(model_config, "max_sequence_length", None) or getattr(model_config, "max_position_embeddings", None)
    if isinstance(limit, int) and config.max_length > limit:
        raise ConfigError(
            f"max_length={config.max_length} is longer than {config.model_name} can take ({limit} positions); "
            f"set max_length to {limit} or less"
        )


def trainable_model(config: TrainerConfig, loaded: LoadedModel, reporter: Reporter) -> Any:
    """The loaded model, under new LoRA adapters when `config.lora` is on; its size goes to the log."""
    check_positions(config, loaded)
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


def resume_path(config: TrainerConfig, checkpoint_dir: Path, log: Callable[[str], None]) -> str | None:
    """The checkpoint to resume from (None: start afresh), checked whole and of this trainer and base model; records
    in `checkpoint_dir` whose checkpoints it will hold."""
    owner = {"trainer": type(config).__name__, "model_name": config.model_name}
    wanted = config.resume_from_checkpoint.strip()
    found = None
    if wanted == "latest":
        found = latest_checkpoint(checkpoint_dir, **owner, log=log)
        if found is None:
            raise ModelError(
                f"resume_from_checkpoint=latest, but neither {checkpoint_dir} nor the folders beside it hold a "
                "checkpoint yet"
            )
    elif wanted:
        found = Path(wanted)
        if not (found / "trainer_state.json").is_file():
            raise ModelError(f"resume_from_checkpoint={wanted!r} is not a checkpoint folder (no trainer_state.json)")
    if found is not None:
        check_checkpoint(found, **owner)
    write_owner(checkpoint_dir, **owner)
    return str(found) if found is not None else None


def train_or_resume(trainer: Any, config: TrainerConfig, reporter: Reporter) -> None:
    """`trainer.train()`, from the checkpoint `resume_from_checkpoint` names, if any; a full disk is named."""
    checkpoint_dir = Path(config.output_dir)
    resume = resume_path(config, checkpoint_dir, reporter.log)
    if resume:
        reporter.log(f"resuming from {resume}")
    with disk_full_named(checkpoint_dir):
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
    ever taken for a result; a folder that holds an earlier result is kept and the new one goes to `<name>-2`, ...
    Returns the folders written."""
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
        return _claim(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _claim(staging: Path, destination: Path) -> Path:
    """Rename `staging` to `destination`, or, when an earlier job's result is there, to the first free
    `destination-2`, `-3`, ... (atomic, so jobs finishing together each get their own): no result replaces another."""
    candidates = [destination, *(destination.with_name(f"{destination.name}-{n}") for n in range(2, 1000))]
    for candidate in candidates:
        try:
            staging.rename(candidate)  # atomic; fails when the candidate is a non-empty folder
            return candidate
        except OSError:
            if not candidate.exists():
                raise
    raise FileExistsError(f"{destination} and its numbered variants are all taken")
