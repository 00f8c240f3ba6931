"""`DPOConfig`: the settings of an ELBO-DPO run (`dlm.trainers.dpo_trainer.run_dpo`), checked before anything
loads. Defaults: the LLaDA 1.5 recipe. The one place the DPO settings are defaulted and validated: the trainer
reads them from here (its `TrainingArguments` carry only what `transformers` needs)."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.errors import DlmError
from dlm.preference_loss import LOSS_TYPES
from dlm.settings import setting
from dlm.trainers.config import LEARNING_RATE_SCHEDULES, TrainerConfig

REFERENCE_MODES = ("auto", "frozen_copy", "disabled_adapters", "precomputed")
MEMORY_MODES = ("auto", "keep_graphs", "per_sample_backward")


class DPOError(DlmError):
    """DPO settings that cannot work together."""


@dataclass
class DPOConfig(TrainerConfig):
    """Everything a DPO run needs; built from the plugin's parameters (same names). Defaults: the LLaDA 1.5 recipe
    (shared settings declared again here where its default differs from SFT's)."""

    dataset_split: str = setting(
        "train",
        title="Training split",
        group="data",
        help="The split to train on. The dataset's own validation split, when it has one, gives the val/ metrics.",
    )
    random_sample_size: int = setting(
        0,
        title="Pairs to use at most",
        group="data",
        help="Train on a random subset of this many pairs, the same subset for the same seed; 0 uses all.",
        minimum=0,
    )
    max_length: int = setting(
        1024,
        title="Maximum prompt + response tokens",
        group="sequences",
        help=(
            "Maximum tokens of prompt plus one response. A response that does not fit after the prompt is clipped "
            "from the right; a pair whose prompt leaves no room is skipped (both counted in the log)."
        ),
        minimum=8,
        maximum=131072,
    )
    max_prompt_length: int = setting(
        512,
        title="Maximum prompt tokens",
        group="sequences",
        help=(
            "Maximum prompt tokens. Longer prompts are cut from the left: the start of the conversation is "
            "dropped and its latest turns kept (counted in the log)."
        ),
        minimum=1,
        maximum=131072,
    )
    learning_rate: float = setting(
        5e-06,
        title="Learning rate",
        group="optimization",
        help="Peak AdamW learning rate. With LoRA (the default) about 5e-6 to 5e-5; for all weights LLaDA 1.5 used 5e-7.",
        minimum=0,
        maximum=1,
    )
    warmup_steps: int = setting(
        15,
        title="Warm-up steps",
        group="optimization",
        help="Optimizer steps spent warming the learning rate up from 0 (LLaDA 1.5: 15). 0: the fraction below applies.",
        minimum=0,
    )
    warmup_ratio: float = setting(
        0.0,
        title="Warm-up share, when warm-up steps is 0",
        group="optimization",
        help="Fraction of the optimizer steps spent warming up; used only when Warm-up steps is 0.",
        minimum=0,
        maximum=1,
    )
    weight_decay: float = setting(
        0.01,
        title="Weight decay",
        group="optimization",
        help="AdamW's decoupled weight decay; 0 turns it off (LLaDA 1.5: 0.01).",
        minimum=0,
        maximum=1,
    )
    adam_beta2: float = setting(
        0.95,
        title="Adam beta2",
        group="optimization",
        help="AdamW's second-moment decay (LLaDA 1.5: 0.95).",
        minimum=0,
        maximum=0.9999,
    )
    beta: float = setting(
        0.2,
        title="DPO beta",
        group="method",
        help="DPO temperature: how far the policy may move from the reference (LLaDA 1.5: 0.2).",
        minimum=0,
        maximum=100,
    )
    loss_type: str = setting(
        "sigmoid",
        title="Preference loss",
        group="method",
        help=(
            "sigmoid: the DPO loss -log sigmoid(beta * h); ipo: the IPO loss (h - 1/(2 beta))^2; h is the chosen "
            "response's ELBO log-ratio (policy minus reference) minus the rejected one's."
        ),
        choices=LOSS_TYPES,
        choice_labels=("DPO (sigmoid)", "IPO"),
    )
    sft_weight: float = setting(
        0.05,
        title="SFT loss weight",
        group="method",
        help=(
            "Weight of the masked-diffusion (MDLM) SFT loss on the chosen response added to the preference loss "
            "(LLaDA 1.5: 0.05); 0 turns it off."
        ),
        minimum=0,
        maximum=100,
    )
    mc_samples: int = setting(
        8,
        title="ELBO samples per response",
        group="method",
        help=(
            "Masked copies scored per response (LLaDA 1.5: 8), their masking levels spread evenly. More samples "
            "lower the variance of the loss; cost grows with them."
        ),
        minimum=1,
        maximum=1024,
        ui_help=(
            "Each pair costs this many forward passes per response for the policy and as many for the reference "
            "(done once, before training, when the reference is precomputed)."
        ),
    )
    antithetic: bool = setting(
        True,
        title="Share masks between policy and reference",
        group="method",
        ui_help=(
            "Use the very same masks for the policy and the reference on each response, so their ELBO difference "
            "has far less variance (LLaDA 1.5's variance reduction)."
        ),
    )
    reference: str = setting(
        "auto",
        title="Reference model",
        group="method",
        help=(
            "auto picks for you. frozen_copy: a second copy of the model; disabled_adapters: the base model with "
            "LoRA switched off (no second copy, needs LoRA); precomputed: scored once per pair before training."
        ),
        choices=REFERENCE_MODES,
    )
    memory_mode: str = setting(
        "auto",
        title="Memory mode",
        group="hardware",
        help=(
            "auto picks for you. keep_graphs back-propagates all samples at once (memory grows with the sample "
            "count); per_sample_backward gives the same gradient one sample at a time, with memory independent of "
            "the count."
        ),
        choices=MEMORY_MODES,
    )
    lora_dropout: float = setting(
        0.0,
        title="LoRA dropout",
        group="LoRA and quantization",
        help=(
            "Dropout on the LoRA path. 0 (the default) keeps the policy equal to the reference at the start, so "
            "the first loss is exactly ln 2, and keeps the per-sample memory mode's gradient exact."
        ),
        minimum=0,
        maximum=0.5,
    )
    logging_steps: int = setting(
        1,
        title="Log every N steps",
        group="logging and validation",
        help="Log metrics every this many optimizer steps.",
        minimum=1,
    )
    eval_steps: float = setting(
        0.25,
        title="Validate every",
        group="logging and validation",
        help=(
            "When there is validation data. Below 1: a fraction of training (0.25 = four times); from 1: a number "
            "of optimizer steps."
        ),
        minimum=0,
    )
    adaptor_name: str = setting(
        "diffusion_dpo_adaptor",
        title="Adapter name",
        group="checkpoints and outputs",
        help="Name of the LoRA adapter (a folder name).",
    )
    num_train_epochs: int = setting(
        1,
        title="Epochs",
        group="optimization",
        help="Passes over the pairs (LLaDA 1.5: 1); 0: train for the number of steps below instead.",
        minimum=0,
        maximum=1000,
    )
    batch_size: int = setting(
        4,
        title="Batch size per device",
        group="optimization",
        help="Preference pairs per device per micro-batch.",
        minimum=1,
        maximum=1024,
    )
    learning_rate_schedule: str = setting(
        "cosine",
        title="Learning-rate schedule",
        group="optimization",
        help="How the learning rate falls after warm-up (LLaDA 1.5: cosine).",
        choices=LEARNING_RATE_SCHEDULES,
    )
    seed: int = setting(
        42,
        title="Random seed",
        group="optimization",
        help="Random seed for data order, the random sample, the validation hold-out, ELBO masks and initialisation.",
        minimum=0,
    )
    save_total_limit: int = setting(
        0,
        title="Checkpoints kept",
        group="checkpoints and outputs",
        help="Keep only the newest this many checkpoints of a run (older ones are deleted); 0 keeps all.",
        minimum=0,
    )

    def check(self) -> None:
        """Raise DPOError naming the setting when the settings cannot work (before anything is loaded)."""
        super().check()
        choices = {"loss_type": LOSS_TYPES, "reference": REFERENCE_MODES, "memory_mode": MEMORY_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DPOError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.mc_samples < 1:
            raise DPOError(f"mc_samples must be at least 1 (Monte-Carlo samples per ELBO), got {self.mc_samples}")
        if not self.beta > 0:
            raise DPOError(f"beta must be positive, got {self.beta}")
        if self.sft_weight < 0:
            raise DPOError(f"sft_weight must be 0 or more, got {self.sft_weight}")
        if self.reference == "disabled_adapters" and not self.lora:
            raise DPOError(
                "reference=disabled_adapters uses the base model under the LoRA adapters as the reference, but "
                "lora is off: turn lora on, or use reference=frozen_copy or precomputed"
            )

    @property
    def warmup(self) -> float | int:
        """warmup_steps when set, else the share of training of warmup_ratio."""
        return self.warmup_steps if self.warmup_steps > 0 else super().warmup

    @property
    def reference_mode(self) -> str:
        """The reference actually used: `auto` is disabled_adapters with LoRA, else frozen_copy."""
        if self.reference != "auto":
            return self.reference
        return "disabled_adapters" if self.lora else "frozen_copy"
