"""`GRPOConfig`: the settings of a diffusion GRPO run (`dlm.trainers.grpo_trainer.run_grpo`), checked before anything
loads. Names are TRL's `GRPOConfig` names where TRL has the setting (`num_generations`, `num_iterations`, `beta`,
`epsilon`, `epsilon_high`, `max_prompt_length`, `max_completion_length`, `scale_rewards`, `loss_type`, `reward_funcs`,
`reward_weights`); the rollout sampler's settings are named as the evaluator's (`dlm.eval_config`) and build the same
`SamplerSettings`. Defaults: d1's diffu-GRPO recipe where it has one."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.errors import DlmError
from dlm.generation import SamplerSettings
from dlm.grpo_loss import GRPO_LOSS_TYPES
from dlm.logprob_estimators import LOGP_ESTIMATORS
from dlm.rewards import DEFAULT_REWARD, REWARD_NAMES, WeightedRewards, build_rewards
from dlm.rewards.sandbox import Limits
from dlm.samplers.common import CACHE_MODES, check_decoding
from dlm.samplers.dream import DREAM_ALGORITHMS
from dlm.samplers.llada import LLADA_REMASKING
from dlm.settings import setting
from dlm.trainers.config import LEARNING_RATE_SCHEDULES, TrainerConfig


class GRPOError(DlmError):
    """GRPO settings that cannot work together."""


@dataclass
class GRPOConfig(TrainerConfig):
    """Everything a GRPO run needs; built from the plugin's parameters (same names). Shared settings declared again
    where GRPO's default or meaning differs from SFT's."""

    dataset_split: str = setting(
        "train", title="Training split", group="data", help="The split whose prompts to train on."
    )
    random_sample_size: int = setting(
        0,
        title="Prompts to use at most",
        group="data",
        help="Train on a random subset of this many prompts, the same subset for the same seed; 0 uses all.",
        minimum=0,
    )
    reward_funcs: tuple[str, ...] = setting(
        (DEFAULT_REWARD,),
        title="Rewards",
        group="rewards",
        items={"type": "string", "enum": list(REWARD_NAMES)},
        unique_items=True,
        widget="checkboxes",
        ui_help=(
            "The rewards each completion gets, several at once; their weighted sum is the reward. answer_match "
            "(the default) compares the completion's final answer (\\boxed{}, after ####, the <answer> tag or the "
            "last number) with the row's answer column; code_tests runs the completion's code against the row's "
            "tests in a child process and needs trust_remote_code."
        ),
    )
    reward_weights: tuple[float, ...] = setting(
        (),
        title="Reward weights",
        group="rewards",
        items={"type": "number"},
        ui_help=(
            "Comma-separated weights, one per reward in the order above, the reward file's functions last; empty: "
            "1 each."
        ),
        widget="TextWidget",
        placeholder="1.0, 0.5",
    )
    reward_file: str = setting(
        "",
        title="Your reward function file",
        group="rewards",
        help=(
            "A Python file with your own rewards: the functions its __all__ names, else its function reward, each "
            "fn(prompts, completions, **columns) -> list of floats; they come after the rewards above. Needs "
            "trust_remote_code, since it runs your code. Empty: none."
        ),
    )
    code_seconds_per_test: float = setting(
        Limits.seconds,
        title="Seconds per unit test",
        group="rewards",
        help="code_tests: each unit test is stopped after this many seconds (and scores 0).",
        exclusive_minimum=0,
        maximum=3600,
    )
    code_memory_mib: int = setting(
        Limits.memory_mib,
        title="Memory per unit test (MiB)",
        group="rewards",
        help="code_tests: the memory each unit test's process may use.",
        minimum=64,
        maximum=1048576,
    )
    num_generations: int = setting(
        8,
        title="Completions per prompt",
        group="method",
        help="Completions sampled per prompt (the group); advantages compare each with its group.",
        minimum=2,
        maximum=1024,
    )
    num_iterations: int = setting(
        1,
        title="Updates per rollout",
        group="method",
        help=(
            "Optimizer steps on each batch of rollouts (TRL's num_iterations, d1's mu), each with fresh masks; "
            "above 1 the clipped ratio to the rollout policy matters."
        ),
        minimum=1,
        maximum=100,
    )
    beta: float = setting(
        0.04,
        title="KL coefficient",
        group="method",
        help="Weight of the KL penalty to the reference model (d1: 0.04); 0: no reference is scored at all.",
        minimum=0,
        maximum=100,
    )
    epsilon: float = setting(
        0.2,
        title="Clipping epsilon",
        group="method",
        help="The probability ratio is clipped to [1 - epsilon, 1 + epsilon_high].",
        exclusive_minimum=0,
        maximum=1,
    )
    epsilon_high: float = setting(
        0.0,
        title="Upper clipping epsilon",
        group="method",
        help="Upper clipping bound (DAPO's clip-higher); 0: the same as epsilon.",
        minimum=0,
        maximum=10,
    )
    scale_rewards: bool = setting(
        True,
        title="Divide advantages by the group's standard deviation",
        group="method",
        ui_help="On: advantages are (reward - group mean) / group std (GRPO); off: reward - group mean (Dr. GRPO).",
    )
    leave_one_out: bool = setting(
        False,
        title="Leave-one-out baseline",
        group="method",
        ui_help=(
            "Compare each reward with the mean of the other completions of its prompt instead of the whole group's "
            "(DiffuCoder's coupled-GRPO); the advantages grow by group / (group - 1)."
        ),
    )
    loss_type: str = setting(
        "grpo",
        title="Loss normalisation",
        group="method",
        help=(
            "How per-token losses are averaged: grpo, each completion's mean, then their mean; bnpo, the mean over "
            "every token of the batch (d1, DiffuCoder); dr_grpo, the sum over N x max_completion_length."
        ),
        choices=GRPO_LOSS_TYPES,
    )
    logp_estimator: str = setting(
        LOGP_ESTIMATORS[0],
        title="Log-probability estimator",
        group="method",
        help=(
            "How a completion's token log-probabilities are estimated under a diffusion LM: d1's one-step estimate "
            "with a randomly masked prompt (diffu-GRPO), coupled complementary masks (coupled-GRPO), or an ELBO."
        ),
        choices=LOGP_ESTIMATORS,
    )
    p_mask_prompt: float = setting(
        0.3,
        title="Prompt masking probability",
        group="method",
        help="diffu-GRPO: the share of prompt tokens masked for each estimate (d1: 0.15 to 0.3).",
        minimum=0,
        maximum=1,
    )
    mc_samples: int = setting(
        1,
        title="Estimates per completion",
        group="method",
        help="Monte-Carlo estimates averaged per completion log-probability; more lower the variance, cost grows.",
        minimum=1,
        maximum=64,
    )
    max_prompt_length: int = setting(
        256,
        title="Maximum prompt tokens",
        group="sequences",
        help="Longer prompts are cut from the left, keeping their end (counted in the log).",
        minimum=1,
        maximum=131072,
    )
    max_completion_length: int = setting(
        128,
        title="Completion length in tokens",
        group="sequences",
        help="Tokens generated per completion; a completion ends at its first end-of-sequence token.",
        minimum=1,
        maximum=8192,
    )
    max_length: int = setting(
        512,
        title="Maximum prompt + completion tokens",
        group="sequences",
        help="Longest sequence the model sees: must hold max_prompt_length + max_completion_length.",
        minimum=8,
        maximum=131072,
    )
    steps: int = setting(
        128,
        title="Denoising steps",
        group="rollouts",
        help="Denoising steps per completion (d1: half the completion length).",
        minimum=1,
        maximum=4096,
    )
    block_length: int = setting(
        32,
        title="Block length",
        group="rollouts",
        help=(
            "Semi-autoregressive blocks of the rollouts (d1: 32); the completion length must be a multiple of it, "
            "and the steps a multiple of the number of blocks."
        ),
        minimum=1,
        maximum=8192,
    )
    temperature: float = setting(
        0.9,
        title="Temperature",
        group="rollouts",
        help="Sampling temperature of the rollouts (d1: 0.9); above 0, or a group's completions are all alike.",
        minimum=0,
        maximum=10,
    )
    remasking: str = setting(
        "low_confidence",
        title="LLaDA remasking",
        group="rollouts",
        help="LLaDA-style samplers: which masked positions to reveal at each step.",
        choices=LLADA_REMASKING,
    )
    alg: str = setting(
        "entropy",
        title="Dream reveal order",
        group="rollouts",
        help="Dream: the confidence that chooses which tokens to reveal.",
        choices=DREAM_ALGORITHMS,
    )
    alg_temp: float = setting(
        0.0,
        title="Dream reveal temperature",
        group="rollouts",
        help="Dream: temperature of the choice of revealed positions (0: the most confident).",
        minimum=0,
        maximum=10,
    )
    top_p: float = setting(
        1.0,
        title="Top-p",
        group="rollouts",
        help="Nucleus sampling of the rollouts for Dream (1: off).",
        exclusive_minimum=0,
        maximum=1,
    )
    top_k: int = setting(0, title="Top-k", group="rollouts", help="Top-k sampling for Dream (0: off).", minimum=0)
    cache: str = setting(
        "none",
        title="Decoding cache",
        group="rollouts",
        help=(
            "LLaDA and Dream families: approximate key/value cache refreshed at every block (Fast-dLLM), which "
            "makes rollouts several times faster. none: exact; prefix: the prompt and finished blocks are encoded "
            "once per block; dual: the blocks after the current one too; elastic (LLaDA): refreshed only from the "
            "layer where attention drifts (Elastic-Cache). Block-diffusion families always cache their finished "
            "blocks exactly."
        ),
        choices=CACHE_MODES,
    )
    parallel_threshold: float = setting(
        0.0,
        title="Parallel decoding threshold",
        group="rollouts",
        help=(
            "At each step also reveal every masked position whose chosen token has at least this probability (at "
            "least one per step), so blocks finish in fewer steps; 0: off (the exact schedule)."
        ),
        minimum=0.0,
        maximum=1.0,
    )
    learning_rate: float = setting(
        1e-05,
        title="Learning rate",
        group="optimization",
        help="Peak AdamW learning rate. With LoRA (the default) about 1e-5 to 3e-5 (d1: 3e-6 with LoRA on 8B).",
        minimum=0,
        maximum=1,
    )
    warmup_ratio: float = setting(
        0.0,
        title="Warm-up share of steps",
        group="optimization",
        help="Fraction of the optimizer steps spent warming the learning rate up from 0.",
        minimum=0,
        maximum=1,
    )
    learning_rate_schedule: str = setting(
        "constant",
        title="Learning-rate schedule",
        group="optimization",
        help="How the learning rate falls after warm-up (d1: constant).",
        choices=LEARNING_RATE_SCHEDULES,
    )
    batch_size: int = setting(
        2,
        title="Prompts per device per micro-batch",
        group="optimization",
        help="Prompts per device per micro-batch; each is sampled num_generations times.",
        minimum=1,
        maximum=1024,
    )
    seed: int = setting(
        42,
        title="Random seed",
        group="optimization",
        help="Random seed for prompt order, the random sample, rollouts, estimator masks and initialisation.",
        minimum=0,
    )
    lora_dropout: float = setting(
        0.0,
        title="LoRA dropout",
        group="LoRA and quantization",
        help=(
            "Dropout on the LoRA path. 0 (the default) keeps the policy equal to the reference at the start (KL 0) "
            "and the ratio to the rollout policy exactly 1 at each rollout's first update."
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
        0.0,
        title="Validate every",
        group="logging and validation",
        help="Not used by GRPO, which reports the rewards of its training rollouts instead; leave at 0.",
        minimum=0,
    )
    adaptor_name: str = setting(
        "diffusion_grpo_adaptor",
        title="Adapter name",
        group="checkpoints and outputs",
        help="Name of the LoRA adapter (a folder name).",
    )

    def check(self) -> None:
        """Raise GRPOError naming the setting when the settings cannot work (before anything is loaded)."""
        super().check()
        if isinstance(self.reward_funcs, str):  # "a,b" as a config file may give it
            self.reward_funcs = tuple(name.strip() for name in self.reward_funcs.split(",") if name.strip())
        self.reward_funcs = tuple(self.reward_funcs)
        self.reward_weights = tuple(self.reward_weights)
        choices = {"loss_type": GRPO_LOSS_TYPES, "logp_estimator": LOGP_ESTIMATORS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise GRPOError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.num_generations < 2:
            raise GRPOError(
                f"num_generations={self.num_generations}: advantages compare completions of the same prompt, "
                "so each prompt needs at least 2"
            )
        if self.max_prompt_length + self.max_completion_length > self.max_length:
            raise GRPOError(
                f"max_prompt_length={self.max_prompt_length} + max_completion_length={self.max_completion_length} "
                f"do not fit max_length={self.max_length}: raise max_length or lower one of them"
            )
        if not self.temperature > 0:
            raise GRPOError(
                f"temperature={self.temperature}: greedy rollouts give every completion of a prompt the same "
                "answer, so every advantage is 0 and nothing is learned; use a temperature above 0 (d1: 0.9)"
            )
        if self.epsilon_high and self.epsilon_high < self.epsilon:
            raise GRPOError(
                f"epsilon_high={self.epsilon_high} is below epsilon={self.epsilon}: clip-higher widens the upper "
                "bound; set it to epsilon or more, or 0 for the same as epsilon"
            )
        # a known cache mode and a threshold that is a probability; the family's own rules once the model is loaded
        check_decoding(self.cache, self.parallel_threshold or None)
        self.build_rewards()  # the rewards' own checks (names, weights, the file, trust_remote_code), now

    def build_rewards(self) -> WeightedRewards:
        """The weighted rewards (`dlm.rewards.build_rewards`): the built-in ones named, then the reward file's."""
        return build_rewards(
            list(self.reward_funcs),
            list(self.reward_weights) or None,
            trust_remote_code=self.trust_remote_code,
            reward_file=self.reward_file or None,
            code_seconds_per_test=self.code_seconds_per_test,
            code_memory_mib=self.code_memory_mib,
        )

    @property
    def clip_high(self) -> float:
        """The upper clipping epsilon: `epsilon_high`, or `epsilon` when it is 0."""
        return self.epsilon_high or self.epsilon

    def sampler_settings(self) -> SamplerSettings:
        """The rollout sampler's settings (`SamplerSettings.from_form`: the form's "off" values are None)."""
        return SamplerSettings.from_form(
            steps=self.steps,
            max_new_tokens=self.max_completion_length,
            block_length=self.block_length,
            temperature=self.temperature,
            remasking=self.remasking,
            alg=self.alg,
            alg_temp=self.alg_temp,
            top_p=self.top_p,
            top_k=self.top_k,
            cache=self.cache,
            parallel_threshold=self.parallel_threshold,
        )
