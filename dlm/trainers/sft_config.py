"""`SFTConfig`: the settings of a masked-diffusion SFT or pre-training run (`dlm.trainers.sft_trainer.run_sft`)."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.errors import ConfigError
from dlm.families import training_methods
from dlm.losses import LossConfig
from dlm.trainers.common import TrainerConfig

TRAINING_METHODS = ("auto", *training_methods())


@dataclass
class SFTConfig(TrainerConfig):
    """Everything a training run needs; built from the plugin's parameters (same names)."""

    training_method: str = "auto"
    train_mode: str = "sft"
    truncation: str = "right"
    mask_prompt_loss: bool = True
    loss_weight_type: str = "auto"
    loss_norm_type: str = "token"
    noise_schedule: str = "linear"
    time_epsilon: float = 1e-3
    random_length_ratio: float = 0.01
    perbatch_cutoff: bool = False
    resp_cutoff_ratio: float = 0.0
    pad_to: str = "batch"  # how far batches are padded with EOS (dlm.data.PAD_TO)
    eval_strategy: str = "no"
    sample_every_steps: int = 0
    num_samples: int = 2
    sample_cache: str = "none"
    sample_parallel_threshold: float = 0.0
    num_proc: int = 1

    def check(self) -> None:
        super().check()
        if self.training_method not in TRAINING_METHODS:
            raise ConfigError(f"training_method={self.training_method!r} is not one of {', '.join(TRAINING_METHODS)}")
        self._check_loss_settings()
        if self.sample_every_steps > 0 and self.train_mode != "sft":
            raise ConfigError(
                f"sample_every_steps={self.sample_every_steps} samples answers to validation prompts, which only "
                "train_mode=sft has; set sample_every_steps to 0"
            )

    def _check_loss_settings(self) -> None:
        """The diffusion loss settings, checked now by the rules of `LossConfig` (built for the model once loaded),
        so that a bad one fails before the model loads."""
        weight = {} if self.loss_weight_type in ("", "auto") else {"loss_weight_type": self.loss_weight_type}
        try:
            LossConfig(
                mask_token_id=0,
                loss_norm_type=self.loss_norm_type,
                noise_schedule=self.noise_schedule,
                time_epsilon=self.time_epsilon,
                **weight,
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None
