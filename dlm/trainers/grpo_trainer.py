"""GRPO with verifiable rewards for masked diffusion LMs (d1's diffu-GRPO, coupled-GRPO): `GRPOConfig` in, a trained
adapter or model out. TRL's `GRPOTrainer` layout on `transformers.Trainer`.

`run_grpo(config, train_examples, reporter)` loads the model (LoRA/QLoRA or full), encodes the prompts
(`dlm.trainers.grpo_data`; read from rows by `plugin_sdk.prompts`), trains with `DiffusionGRPOTrainer` and returns the
result for `dlm.trainers.outputs.save_outputs`. Log-probability estimators: `dlm.logprob_estimators`; advantages and
the clipped loss: `dlm.grpo_loss`; rewards: `dlm.rewards`.

Each optimizer step's prompts come `num_iterations` times in a row (`RepeatedStepSampler`). At the first of them:
- rollouts: `num_generations` completions per prompt from the family's sampler (`dlm.generation.build_sampler`,
  with its cache and threshold settings), the whole micro-batch's groups in one batch, model in eval mode, no grad;
  a completion ends at its first EOS/EOT (included in its mask, as TRL does);
- rewards (weighted sum of the reward functions) and group-relative advantages;
- one mask seed per iteration; the rollout policy's ("old") log-probabilities for every iteration when
  num_iterations > 1 (with one, the ratio is 1 and the old log-probabilities are the policy's, detached), and the
  reference's when beta > 0, each computed once here, before the first update, on that iteration's masks.
Then each of the `num_iterations` steps scores the completions under the policy on its iteration's masks and takes
the clipped loss. Rollouts and masks are seeded from (seed, step, process, micro-batch), so a resumed run samples
what the uninterrupted one did; a run resumed between the updates of one rollout batch samples it again.

The reference is the model with its LoRA adapters disabled (no second model) or, without LoRA and with beta > 0, a
frozen copy. Metrics use TRL's names (as `train/<name>` in the job): `reward`, `reward_std` (the mean of the groups'
standard deviations), `rewards/<function>`, `frac_reward_zero_std`, `completion_length`, `kl`, `clip_ratio` (and its
low/high parts when the loss gives them), plus `rollout_time` and `update_time`: seconds per optimizer step spent
sampling the completions and computing their rewards, and the rest of the step's work (the log-probability passes
of the policy, the rollout policy and the reference, and the backward passes).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments

from dlm.callbacks import Reporter, ReporterCallback
from dlm.elbo import example_generators
from dlm.errors import ModelError
from dlm.generation import build_sampler, decode_answers
from dlm.grpo_loss import group_advantages, grpo_loss
from dlm.loading import LoadedModel
from dlm.logprob_estimators import Rollouts, completion_logps
from dlm.rewards import RewardError
from dlm.trainers.arguments import common_training_arguments
from dlm.trainers.grpo_config import GRPOConfig, GRPOError
from dlm.trainers.grpo_data import PromptCollator, RepeatedStepSampler, encode_prompt_rows
from dlm.trainers.logs import last_logged, memory_in_use_gb
from dlm.trainers.model import load_for_training, trainable_model
from dlm.trainers.outputs import TrainResult
from dlm.trainers.reference import has_adapters, reference_model
from dlm.trainers.resuming import train_or_resume

# `GRPOLossOutput` fields -> TRL's metric names
LOSS_METRICS = {
    "kl": "kl",
    "clip_ratio": "clip_ratio",
    "low_clip": "clip_ratio/low_mean",
    "high_clip": "clip_ratio/high_mean",
}


def completion_mask(completion_ids: torch.Tensor, end_ids: Sequence[int]) -> torch.Tensor:
    """True for each completion token up to and including its first end token (EOS/EOT), False after it."""
    is_end = torch.isin(completion_ids, torch.tensor(list(end_ids), device=completion_ids.device))
    ends_before = torch.cumsum(is_end.long(), dim=1) - is_end.long()  # end tokens strictly before each position
    return ends_before == 0


class DiffusionGRPOTrainer(Trainer):
    """Trains `model` with GRPO on prompt batches (`PromptCollator`); the settings come from `config`, the rewards
    from `rewards` (`dlm.rewards.build_rewards`). The reference is `ref_model` when given, else the model with its
    adapters disabled; with beta 0 none is scored."""

    def __init__(
        self,
        *args: Any,
        config: GRPOConfig,
        loaded: LoadedModel,
        rewards: Any,
        ref_model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.config, self.loaded, self.rewards = config, loaded, rewards
        self.reward_weights = rewards.weight_tensor()
        self.loss_is_scaled_for_ga = False  # each micro-batch's loss is a mean: the Trainer divides by the steps
        if config.beta > 0 and ref_model is None and not has_adapters(self.accelerator.unwrap_model(self.model)):
            raise GRPOError("beta > 0 needs a reference: LoRA adapters to disable, or a frozen copy (ref_model)")
        self.ref_model = ref_model.eval().requires_grad_(False) if ref_model is not None else None
        if self.ref_model is not None and not getattr(self.ref_model, "hf_device_map", None):
            self.ref_model.to(self.args.device)
        self.sampler = build_sampler(loaded.family, config.sampler_settings())
        self._buffer: dict[int, dict[str, Any]] = {}  # rollouts of this step's micro-batches, by micro-batch
        self._micro_batches = 0
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._seconds = {"rollout_time": 0.0, "update_time": 0.0}
        self._logged_step = 0

    # ---- data --------------------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        per_step = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return RepeatedStepSampler(
            len(dataset), per_step * self.args.world_size, self.config.num_iterations, self.args.seed
        )

    # ---- rollouts ----------------------------------------------------------------------------------------------------
    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The micro-batch's rollouts: sampled and scored at the first of its `num_iterations` steps (or when a
        resumed run has none), reused by the others."""
        micro = self._micro_batches % self.args.gradient_accumulation_steps
        self._micro_batches += 1
        iteration = self.state.global_step % self.config.num_iterations
        if iteration == 0 or micro not in self._buffer:
            self._buffer[micro] = self._generate_and_score_completions(
                super()._prepare_inputs(inputs), self.state.global_step - iteration, micro
            )
        return {**self._buffer[micro], "iteration": iteration}

    def _seed(self, *parts: Any) -> int:
        """A seed from the run's seed and `parts`, the same in every run and process that asks for the same parts."""
        key = ":".join(str(p) for p in (*parts, self.args.process_index))
        return example_generators([key], self.args.seed)[0].initial_seed()

    @torch.no_grad()
    def _generate_and_score_completions(self, inputs: dict[str, Any], step: int, micro: int) -> dict[str, Any]:
        start, group = time.perf_counter(), self.config.num_generations
        prompt_ids = inputs["prompt_ids"].repeat_interleave(group, dim=0)
        prompt_mask = inputs["prompt_mask"].repeat_interleave(group, dim=0).bool()
        generator = torch.Generator(device=prompt_ids.device).manual_seed(self._seed("rollout", step, micro))
        special, width, length = self.loaded.special_ids, prompt_ids.shape[1], self.config.max_completion_length
        with self._policy_in_eval_mode() as model:
            sequences = self.sampler.answer(model, special, prompt_ids, prompt_mask.long(), generator, None).sequences
        completion_ids = torch.full((len(sequences), length), special.eos, dtype=torch.long, device=sequences.device)
        generated = sequences[:, width : width + length]
        completion_ids[:, : generated.shape[1]] = generated
        rollouts = Rollouts(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=completion_mask(completion_ids, (special.eos, special.eot)),
        )
        rewards = self._rewards(inputs["rows"], completion_ids)
        self._seconds["rollout_time"] += time.perf_counter() - start
        total = (rewards * self.reward_weights).sum(dim=1)
        advantages = group_advantages(
            total, group, scale_rewards=self.config.scale_rewards, leave_one_out=self.config.leave_one_out
        )
        self._log_rollouts(rollouts, rewards.to(self.args.device), total.to(self.args.device))
        seeds = [self._seed("masks", step, micro, i) for i in range(self.config.num_iterations)]
        return {
            "rollouts": rollouts,
            "advantages": advantages.to(self.args.device),
            "seeds": seeds,
            "old_logps": self._scored(rollouts, seeds, reference=False) if self.config.num_iterations > 1 else None,
            "ref_logps": self._scored(rollouts, seeds, reference=True) if self.config.beta > 0 else None,
        }

    def _rewards(self, rows: list[dict[str, Any]], completion_ids: torch.Tensor) -> torch.Tensor:
        """[N, rewards] float32: each reward function's score of each completion (prompt rows repeated per group)."""
        group = self.config.num_generations
        texts = decode_answers(self.loaded.tokenizer, self.loaded.special_ids, completion_ids.cpu(), 0)
        repeated = [row for row in rows for _ in range(group)]
        prompts = [row["prompt"][-1]["content"] for row in repeated]  # the user's last turn: the question
        columns = {name: [row["columns"].get(name) for row in repeated] for name in repeated[0]["columns"]}
        try:
            return self.rewards(prompts, texts, columns)
        except RewardError as err:  # name the dataset's row, not the batch's
            if err.row is None:
                raise
            raise RewardError(err.reward, int(repeated[err.row]["id"]), err.message, texts[err.row]) from None

    @contextlib.contextmanager
    def _policy_in_eval_mode(self) -> Iterator[torch.nn.Module]:
        """The policy in eval mode (no dropout) under the accelerator's autocast; its mode is restored after."""
        model, was_training = self.model, self.model.training
        model.eval()
        try:
            with self.accelerator.autocast():
                yield model
        finally:
            model.train(was_training)

    def _scored(self, rollouts: Any, seeds: list[int], *, reference: bool) -> torch.Tensor:
        """[iterations, N, C] log-probabilities of the completions on each iteration's masks, without gradients:
        the reference's, or the rollout policy's."""
        scorer = reference_model(self.model, self.ref_model, self.accelerator) if reference else None
        with scorer if scorer is not None else self._policy_in_eval_mode() as model:
            return torch.stack([self._logps(model, rollouts, seed) for seed in seeds])

    # ---- loss --------------------------------------------------------------------------------------------------------
    def _logps(self, model: torch.nn.Module, rollouts: Any, seed: int) -> torch.Tensor:
        config = self.config
        return completion_logps(
            model,
            rollouts,
            estimator=config.logp_estimator,
            family=self.loaded.family,
            mask_id=self.loaded.special_ids.mask,
            seed=seed,
            p_mask_prompt=config.p_mask_prompt,
            mc_samples=config.mc_samples,
        )

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        config, iteration = self.config, inputs["iteration"]
        rollouts = inputs["rollouts"]
        logps = self._logps(model, rollouts, inputs["seeds"][iteration])
        old = inputs["old_logps"][iteration] if inputs["old_logps"] is not None else None
        ref = inputs["ref_logps"][iteration] if inputs["ref_logps"] is not None else None
        out = grpo_loss(
            logps,
            old,
            ref,
            inputs["advantages"],
            rollouts.completion_mask,
            epsilon_low=config.epsilon,
            epsilon_high=config.clip_high,
            beta=config.beta,
            loss_type=config.loss_type,
        )
        if not torch.isfinite(out.loss.detach()):
            raise FloatingPointError(
                f"the GRPO loss became {out.loss.item()} at step {self.state.global_step + 1}; training stopped and "
                "the last good checkpoint was kept (try a lower learning_rate, or float32)"
            )
        for field, name in LOSS_METRICS.items():
            value = getattr(out, field, None)
            if value is not None:
                self._metrics[name].append(float(self.accelerator.gather(value.detach().reshape(1)).mean()))
        return (out.loss, None) if return_outputs else out.loss

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        start, rollout_before = time.perf_counter(), self._seconds["rollout_time"]
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._seconds["update_time"] += time.perf_counter() - start - (self._seconds["rollout_time"] - rollout_before)
        return loss

    # ---- logging -----------------------------------------------------------------------------------------------------
    def _log_rollouts(self, rollouts: Any, rewards: torch.Tensor, total: torch.Tensor) -> None:
        """The rollout metrics over every process's completions."""
        rewards, total = self.accelerator.gather(rewards), self.accelerator.gather(total)
        lengths = self.accelerator.gather(rollouts.completion_mask.sum(dim=1).float())
        group_std = total.view(-1, self.config.num_generations).std(dim=1)
        self._metrics["reward"].append(float(total.mean()))
        self._metrics["reward_std"].append(float(group_std.mean()))
        self._metrics["frac_reward_zero_std"].append(float((group_std < 1e-6).float().mean()))
        self._metrics["completion_length"].append(float(lengths.mean()))
        for name, column in zip(self.rewards.names, rewards.T, strict=True):
            self._metrics[f"rewards/{name}"].append(float(torch.nanmean(column)))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: the metrics since the last one
            for name, values in self._metrics.items():
                logs[name] = sum(values) / len(values)
            steps = max(self.state.global_step - self._logged_step, 1)
            for name, seconds in self._seconds.items():
                logs[name] = seconds / steps
            logs["memory_gb"] = memory_in_use_gb()
            self._metrics.clear()
            self._seconds = dict.fromkeys(self._seconds, 0.0)
            self._logged_step = self.state.global_step
        super().log(logs, start_time)


def training_arguments(config: GRPOConfig, checkpoint_dir: Path) -> TrainingArguments:
    """What `transformers.Trainer` needs; the GRPO settings stay in `config`, where the trainer reads them."""
    return TrainingArguments(
        **common_training_arguments(config, checkpoint_dir),
        warmup_steps=config.warmup,
        eval_strategy="no",
    )


def _check_model(config: GRPOConfig, loaded: LoadedModel) -> None:
    if not loaded.family.is_diffusion or loaded.special_ids.mask is None:
        raise ModelError(
            f"{config.model_name} is a {loaded.family.name} model without a mask token; diffusion GRPO estimates "
            "log-probabilities by masking completions, so it needs a masked diffusion model (LLaDA, Dream, BERT, "
            "a block-diffusion model, or a causal LM converted with dlm.convert)"
        )
    build_sampler(loaded.family, config.sampler_settings())  # the rollout settings, checked before training


def _summary(config: GRPOConfig, loaded: LoadedModel, trainer: DiffusionGRPOTrainer) -> str:
    return (
        f"GRPO-trained {loaded.family.name} model {config.model_name} for {trainer.state.global_step} steps; "
        f"final train/reward {last_logged(trainer, 'reward')}, train/kl {last_logged(trainer, 'kl')}; seconds per "
        f"step: rollouts {last_logged(trainer, 'rollout_time')}, updates {last_logged(trainer, 'update_time')}"
    )


def run_grpo(config: GRPOConfig, train_examples: Sequence[Any], reporter: Reporter) -> TrainResult:
    """Train on prompts (with `id`, `prompt` messages and `columns` for the rewards, as `plugin_sdk.prompts` reads
    them); the returned model is the trained one (a PeftModel with LoRA). `config` was checked when it was built."""
    torch.manual_seed(config.seed)
    reporter.report_status(f"loading model {config.model_name}")
    loaded = load_for_training(config)
    _check_model(config, loaded)
    frozen_copy = config.beta > 0 and not config.lora
    ref_model = load_for_training(config).model if frozen_copy else None
    model = trainable_model(config, loaded, reporter)
    reporter.report_status("encoding data")
    prompts = encode_prompt_rows(train_examples, loaded, config.max_prompt_length)
    reporter.log(f"training prompts: {prompts.summary()}")
    rewards = config.build_rewards()
    progress = ReporterCallback(reporter)
    trainer = DiffusionGRPOTrainer(
        model=model,
        args=training_arguments(config, Path(config.output_dir)),
        train_dataset=prompts.rows,
        data_collator=PromptCollator(loaded.special_ids.pad),
        callbacks=[progress],
        config=config,
        loaded=loaded,
        rewards=rewards,
        ref_model=ref_model,
    )
    trainer.remove_callback(PrinterCallback)  # metrics reach the job log through the reporter instead
    reference = "none (beta 0)" if config.beta == 0 else "a frozen copy" if frozen_copy else "disabled adapters"
    reporter.log(
        f"GRPO: {config.num_generations} completions per prompt, {config.num_iterations} update(s) per rollout, "
        f"estimator {config.logp_estimator}, rewards {', '.join(rewards.names)}, beta {config.beta}, "
        f"reference {reference}, loss {config.loss_type}"
    )
    train_or_resume(trainer, config, reporter)
    model.eval()  # training is over: whoever uses the result next must not see dropout
    return TrainResult(
        model=model,
        tokenizer=loaded.tokenizer,
        loaded=loaded,
        global_step=trainer.state.global_step,
        stopped=progress.stopped,
        summary=_summary(config, loaded, trainer),
        checkpoint_dir=str(Path(config.output_dir)),
    )
