"""`DPOConfig`: the settings of an ELBO-DPO run (`dlm.trainers.dpo_trainer.run_dpo`), checked before anything
loads. Defaults: the LLaDA 1.5 recipe. The one place the DPO settings are defaulted and validated: the trainer
reads them from here (its `TrainingArguments` carry only what `transformers` needs)."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.errors import DlmError
from dlm.preference_loss import LOSS_TYPES
from dlm.trainers.config import TrainerConfig

REFERENCE_MODES = ("auto", "frozen_copy", "disabled_adapters", "precomputed")
MEMORY_MODES = ("auto", "keep_graphs", "per_sample_backward")


class DPOError(DlmError):
    """DPO settings that cannot work together."""


@dataclass
class DPOConfig(TrainerConfig):
    """Everything a DPO run needs; built from the plugin's parameters (same names). Defaults: the LLaDA 1.5 recipe
    (shared settings declared again here where its default differs from SFT's)."""

    dataset_split: str = "train"
    random_sample_size: int = 0
    max_length: int = 1024
    max_prompt_length: int = 512
    learning_rate: float = 5e-6  # with LoRA (the default); LLaDA 1.5 used 5e-7 on all weights
    warmup_steps: int = 15
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    adam_beta2: float = 0.95
    beta: float = 0.2
    loss_type: str = "sigmoid"
    sft_weight: float = 0.05
    mc_samples: int = 8
    antithetic: bool = True
    reference: str = "auto"
    memory_mode: str = "auto"
    lora_dropout: float = 0.0
    logging_steps: int = 1
    eval_steps: float = 0.25
    adaptor_name: str = "diffusion_dpo_adaptor"

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
    def reference_mode(self) -> str:
        """The reference actually used: `auto` is disabled_adapters with LoRA, else frozen_copy."""
        if self.reference != "auto":
            return self.reference
        return "disabled_adapters" if self.lora else "frozen_copy"
