"""`SFTConfig`: the settings of a masked-diffusion SFT or pre-training run (`dlm.trainers.sft_trainer.run_sft`)."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.block_diffusion import BLOCK_TIMES
from dlm.errors import ConfigError
from dlm.families import training_methods
from dlm.losses import LOSS_NORM_TYPES, LossConfig
from dlm.samplers.common import CACHE_MODES
from dlm.settings import setting
from dlm.trainers.config import TrainerConfig

TRAINING_METHODS = ("auto", *training_methods())


@dataclass
class SFTConfig(TrainerConfig):
    """Everything a training run needs; built from the plugin's parameters (same names), each field with its form."""

    training_method: str = setting(
        "auto",
        title="Model family",
        group="method",
        help=(
            "auto reads it from the model. bert, dream, llada, llada_moe, a2d: that family's masked-diffusion loss; "
            "bd3lm (a causal LM converted with kind=bd3lm), sdar, llada2: block diffusion (x_t ⊕ x_0, blocks of "
            "block_size); ar: a causal-LM baseline trained with the next-token loss on the same data."
        ),
        choices=TRAINING_METHODS,
        ui_help="Leave on auto unless the model's family is not recognised.",
    )
    train_mode: str = setting(
        "sft",
        title="Training mode",
        group="method",
        help=(
            "SFT trains only the final assistant turn of each conversation; pre-training packs raw text into "
            "chunks of the maximum length, every token maskable."
        ),
        choices=("sft", "pretrain"),
        choice_labels=("SFT (chat fine-tuning)", "Pre-training (raw text)"),
    )
    truncation: str = setting(
        "right",
        title="Too-long conversations",
        group="sequences",
        help=(
            "What to do with conversations longer than the maximum length: right clips them (rows whose prompt "
            "alone is too long are dropped), filter drops them."
        ),
        choices=("right", "filter"),
        choice_labels=("Clip them (right)", "Drop them (filter)"),
    )
    mask_prompt_loss: bool = setting(
        True,
        title="Train on answers only",
        group="sequences",
        ui_help="Train only on the answer (the prompt is never masked nor scored). Off: the prompt is trained too.",
    )
    loss_weight_type: str = setting(
        "auto",
        title="Per-token loss weight",
        group="diffusion loss",
        help=(
            "auto: the family's own (cart[geo_p:0.3] for Dream, scheduler otherwise). scheduler: 1/t for the "
            "linear schedule; uniform; cart[geo_p:P]: Dream's context-adaptive weights."
        ),
        ui_help="Leave on auto unless you are reproducing a paper's recipe.",
    )
    loss_norm_type: str = setting(
        "token",
        title="Loss normalisation",
        group="diffusion loss",
        help=(
            "How the weighted loss is normalised: token (by all answer tokens in the batch), sequence (per "
            "sequence by its answer length, LLaDA's SFT recipe), batch (by the number of sequences)."
        ),
        choices=LOSS_NORM_TYPES,
    )
    noise_schedule: str = setting(
        "linear",
        title="Masking schedule",
        group="diffusion loss",
        help="Masking schedule alpha(t): linear (mask probability t) or cosine.",
        choices=("linear", "cosine"),
    )
    time_epsilon: float = setting(
        0.001,
        title="Smallest masking level",
        group="diffusion loss",
        help="Smallest masking level t drawn, so that every example has at least a little masked.",
        minimum=0,
        maximum=0.5,
    )
    block_time: str = setting(
        "sequence",
        title="Block diffusion: masking level per",
        group="diffusion loss",
        help=(
            "Block diffusion models only: one masking level t per sequence, shared by its blocks (dllm's BD3LM "
            "trainer), or one per block, stratified over the batch's blocks (BD3LM's own code)."
        ),
        choices=BLOCK_TIMES,
    )
    random_length_ratio: float = setting(
        0.01,
        title="Pre-training: random-length batches",
        group="diffusion loss",
        help="Pre-training only: probability that a batch is trained on a random shorter length (LLaDA: 0.01).",
        minimum=0,
        maximum=1,
    )
    perbatch_cutoff: bool = setting(
        False,
        title="Dream: cut responses per batch",
        group="diffusion loss",
        ui_help="Dream: trim every response in a batch to the response length of one randomly chosen example.",
    )
    resp_cutoff_ratio: float = setting(
        0.0,
        title="Dream: response cut-off probability",
        group="diffusion loss",
        help="Dream: probability that an example's response is cut to a random shorter length.",
        minimum=0,
        maximum=1,
    )
    pad_to: str = setting(
        "batch",
        title="End-of-text padding",
        group="sequences",
        help=(
            "How far each batch is padded with EOS (LLaDA-style models train on it: it teaches where answers "
            "end). batch: the longest row (a model trained on short uniform answers ends early in longer "
            "generation windows); random: a quarter of the batches to a random length up to max_length; "
            "max_length: every batch. The last two show longer windows but slow learning several-fold."
        ),
        choices=("batch", "random", "max_length"),
    )
    eval_strategy: str = setting(
        "no",
        title="Validation",
        group="logging and validation",
        help=(
            "When to compute validation metrics: never, on the interval below, or every epoch. Uses the dataset's "
            "validation split, else a held-out share of the training data."
        ),
        choices=("no", "steps", "epoch"),
        choice_labels=("Never", "On the interval below", "Every epoch"),
    )
    sample_every_steps: int = setting(
        0,
        title="Sample answers every N steps",
        group="logging and validation",
        help="Generate answers to a few validation prompts every this many steps and log them as text; 0: never.",
        minimum=0,
    )
    num_samples: int = setting(
        2,
        title="Answers per sample",
        group="logging and validation",
        help="How many validation prompts get an answer each time answers are sampled.",
        minimum=1,
        maximum=64,
    )
    sample_cache: str = setting(
        "none",
        title="Sample decoding cache",
        group="logging and validation",
        help=(
            "Sample logging with LLaDA or Dream models: approximate key/value cache refreshed at every block "
            "(Fast-dLLM prefix or dual), or where attention drifts (elastic, LLaDA); none: the exact sampler."
        ),
        choices=CACHE_MODES,
    )
    sample_parallel_threshold: float = setting(
        0.0,
        title="Sample parallel decoding threshold",
        group="logging and validation",
        help=(
            "Sample logging: also reveal every masked position whose chosen token has at least this probability "
            "(at least one per step); 0: off."
        ),
        minimum=0.0,
        maximum=1.0,
    )
    num_proc: int = setting(
        1,
        title="Tokenizer processes",
        group="data",
        help=(
            "Worker processes for tokenizing the dataset (worth it from a few thousand examples; 1 tokenizes in "
            "the job process)."
        ),
        minimum=1,
        maximum=64,
    )

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
                block_time=self.block_time,
                **weight,
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None
