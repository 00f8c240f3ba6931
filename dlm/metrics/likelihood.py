"""Likelihood metrics of texts: perplexity (an ELBO upper bound for diffusion LMs, exact for causal LMs),
masked-token accuracy (diffusion) and next-token accuracy (causal).

Both kinds of model score the same token ids. A text is tokenized without special tokens; the tokenizer's BOS is
put in front when it has one. The first id (BOS, else the text's first token) is context only, and every later id
is scored: the causal LM predicts token i from tokens < i, the diffusion LM sees the first id unmasked as a
one-token prompt. Texts longer than `max_length` ids are truncated, texts with nothing to score are skipped; both
are counted in the metric's details.

Conditional likelihood (`conversation_inputs`) scores prompt/answer data as the trainer encoded it: the family's chat
template renders the prompt and the answer (`dlm.data.encode_conversation`), the prompt (with its generation prompt)
is context only, never masked, and only the answer tokens (up to and including the template's end of turn) are
scored. A diffusion LM gives the ELBO bound of log p(answer | prompt), a causal LM the exact value.

Diffusion perplexity: each text's count-form ELBO `dlm.elbo.elbo` (a lower bound of its log-likelihood, `mc_num`
Monte-Carlo samples) gives the bound exp(-sum of ELBOs / sum of scored tokens). Its standard error propagates the
texts' independent Monte-Carlo errors through the exponential (delta method):
se = bound * sqrt(sum of se_i^2) / tokens. It is the error of the Monte-Carlo estimate on these texts, not a
sampling error over texts. Masks depend only on the seed and the text's position in the dataset, not on batching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dlm.block_diffusion import model_block_size
from dlm.data import encode_conversation
from dlm.elbo import elbo, example_generators
from dlm.forward import logits_at_positions
from dlm.metrics.result import EvaluationError, MetricResult

Progress = Callable[[int], None]  # called with the number of texts just finished


@dataclass
class ScoringInputs:
    """Token ids of the texts to score: `ids[k]` belongs to text `indices[k]` of the input; its first
    `context[k]` ids (default 1) are context only, the others are scored. `skipped`: texts with nothing to score;
    `truncated`: texts cut to `max_length`. `conditional`: the context is a chat prompt (`conversation_inputs`)."""

    ids: list[list[int]]
    indices: list[int]
    skipped: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    bos: int | None = None
    context: list[int] | None = None
    conditional: bool = False

    def context_length(self, k: int) -> int:
        return 1 if self.context is None else self.context[k]

    @property
    def scored_tokens(self) -> int:
        return sum(len(ids) - self.context_length(k) for k, ids in enumerate(self.ids))

    def scored_counts(self) -> torch.Tensor:
        return torch.tensor([len(ids) - self.context_length(k) for k, ids in enumerate(self.ids)])

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "texts": len(self.ids),
            "scored_tokens": self.scored_tokens,
            "skipped_texts": len(self.skipped),
            "truncated_texts": len(self.truncated),
        }
        if self.conditional:
            details["scored"] = (
                "the answer given the prompt, both in the family's chat template (as trained); the prompt is "
                "context only (never masked)"
            )
        else:
            details["first_token"] = (
                "BOS prepended, every text token scored"
                if self.bos is not None
                else "no BOS: each text's first token is context, the rest scored"
            )
        return details


def scoring_inputs(
    tokenizer: Any, bos: int | None, texts: Sequence[str], max_length: int = 512, *, strict: bool = True
) -> ScoringInputs:
    """Tokenize `texts` for scoring (see the module docstring). `bos`: the tokenizer's BOS id, or None.
    Raises when no text has a token to score, unless `strict` is False (then `ids` may be empty)."""
    if max_length < 2:
        raise EvaluationError(f"max_length must be at least 2 (one context token and one scored), got {max_length}")
    inputs = ScoringInputs(ids=[], indices=[], bos=bos)
    for index, text in enumerate(texts):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        if bos is not None:
            ids = [bos, *ids]
        if len(ids) > max_length:
            inputs.truncated.append(index)
            ids = ids[:max_length]
        if len(ids) < 2:
            inputs.skipped.append(index)
            continue
        inputs.ids.append(ids)
        inputs.indices.append(index)
    if strict and not inputs.ids:
        raise EvaluationError(
            f"none of the {len(texts)} texts has a token to score (all are empty"
            + ("" if bos is not None else ", or one token long, and the tokenizer has no BOS")
            + ")"
        )
    return inputs


def conversation_inputs(
    tokenizer: Any,
    prompts: Sequence[Sequence[Mapping[str, str]]],
    answers: Sequence[str],
    max_length: int = 512,
) -> ScoringInputs:
    """Token ids of each prompt (chat messages) followed by its answer as the trainer encodes them
    (`dlm.data.encode_conversation`): the rendered prompt is context, the answer tokens are scored. An answer cut by
    `max_length` is truncated; a pair whose prompt alone fills `max_length`, or whose answer is empty, is skipped.
    Raises when no pair has an answer token to score."""
    if max_length < 2:
        raise EvaluationError(f"max_length must be at least 2 (one context token and one scored), got {max_length}")
    inputs = ScoringInputs(ids=[], indices=[], context=[], conditional=True)
    for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        messages = [*prompt, {"role": "assistant", "content": answer}]
        encoded = encode_conversation(messages, tokenizer, max_length=max_length) if answer else None
        if not isinstance(encoded, dict):
            inputs.skipped.append(index)
            continue
        full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        if len(full) > len(encoded["input_ids"]):
            inputs.truncated.append(index)
        inputs.ids.append(encoded["input_ids"])
        inputs.indices.append(index)
        inputs.context.append(encoded["prompt_length"])
    if not inputs.ids:
        raise EvaluationError(
            f"none of the {len(prompts)} prompt/answer pairs has an answer token to score (empty answers, or "
            f"prompts of max_length={max_length} tokens or more)"
        )
    return inputs


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _equal_length_batches(inputs: ScoringInputs, batch_size: int) -> list[list[int]]:
    """Positions in `inputs` grouped into batches of texts of one length: no padding, so families that attend to
    padding (LLaDA, BERT, converted models) score each text exactly as on its own."""
    by_length: dict[int, list[int]] = {}
    for k, ids in enumerate(inputs.ids):
        by_length.setdefault(len(ids), []).append(k)
    return [group[i : i + batch_size] for group in by_length.values() for i in range(0, len(group), batch_size)]


def _stack(inputs: ScoringInputs, batch: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """input ids [B, T] of same-length texts and their scored positions (all but the context)."""
    ids = torch.tensor([inputs.ids[k] for k in batch], device=device)
    scored = torch.ones_like(ids, dtype=torch.bool)
    for row, k in enumerate(batch):
        scored[row, : inputs.context_length(k)] = False
    return ids, scored


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {batch_size}")


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio <= 1:
        raise EvaluationError(f"mask ratios must lie in (0, 1], got {ratio}")


def _inputs(loaded: Any, texts: Sequence[str] | ScoringInputs, max_length: int) -> ScoringInputs:
    if isinstance(texts, ScoringInputs):
        return texts
    return scoring_inputs(loaded.tokenizer, loaded.special_ids.bos, texts, max_length)


def _diffusion_only(loaded: Any, metric: str) -> None:
    if not loaded.family.is_diffusion:
        raise EvaluationError(f"{metric} needs a diffusion model; {loaded.path} is a causal LM (family ar)")


@torch.no_grad()
def text_elbos(
    loaded: Any,
    inputs: ScoringInputs,
    *,
    mc_num: int = 128,
    batch_size: int = 8,
    seed: int = 42,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per text of `inputs` (in order): the count-form ELBO of its scored tokens given its first id and the
    Monte-Carlo standard error, float64 [N] each (NaN errors when `mc_num` = 1). Up to `batch_size` sequences go
    through one forward pass. Text k's masks come from `example_generators([f"perplexity:{inputs.indices[k]}"],
    seed)`."""
    _diffusion_only(loaded, "an ELBO")
    if mc_num < 1:
        raise EvaluationError(f"mc_num (Monte-Carlo samples per text) must be at least 1, got {mc_num}")
    _check_batch_size(batch_size)
    model = loaded.model
    means = torch.empty(len(inputs.ids), dtype=torch.float64)
    stderrs = torch.empty(len(inputs.ids), dtype=torch.float64)
    for batch in _equal_length_batches(inputs, batch_size):
        ids, scored = _stack(inputs, batch, _model_device(model))
        mean, stderr = elbo(
            model,
            ids,
            scored,
            mask_id=loaded.special_ids.mask,
            shift=loaded.family.shift_logits,
            block_size=model_block_size(loaded.family, model),
            n=mc_num,
            batch_size=batch_size,
            generator=example_generators([f"perplexity:{inputs.indices[k]}" for k in batch], seed),
        )
        means[batch], stderrs[batch] = mean.cpu(), stderr.cpu()
        if progress is not None:
            progress(len(batch))
    return means, stderrs


@dataclass
class CausalScores:
    """Per text of the scoring inputs: summed negative log-likelihood (float64), correctly predicted next tokens
    (argmax) and scored tokens."""

    nll: torch.Tensor
    correct: torch.Tensor
    tokens: torch.Tensor


@torch.no_grad()
def causal_scores(
    loaded: Any, inputs: ScoringInputs, *, batch_size: int = 8, progress: Progress | None = None
) -> CausalScores:
    """Exact next-token log-likelihoods and argmax hits of a causal LM on `inputs`; texts are right-padded in
    batches of `batch_size` (padding follows every scored token, so a causal model never sees it)."""
    if loaded.family.is_diffusion:
        raise EvaluationError(
            f"exact token likelihoods need a causal LM; {loaded.path} is a {loaded.family.name} diffusion model"
        )
    _check_batch_size(batch_size)
    model = loaded.model
    device = _model_device(model)
    count = len(inputs.ids)
    scores = CausalScores(
        nll=torch.zeros(count, dtype=torch.float64),
        correct=torch.zeros(count, dtype=torch.long),
        tokens=inputs.scored_counts(),
    )
    order = sorted(range(count), key=lambda k: len(inputs.ids[k]))  # similar lengths together: less padding
    for first in range(0, count, batch_size):
        batch = order[first : first + batch_size]
        width = max(len(inputs.ids[k]) for k in batch)
        ids = torch.full((len(batch), width), loaded.special_ids.pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, k in enumerate(batch):
            ids[row, : len(inputs.ids[k])] = torch.tensor(inputs.ids[k])
            attention[row, : len(inputs.ids[k])] = 1
        scored = attention.bool()
        for row, k in enumerate(batch):
            scored[row, : inputs.context_length(k)] = False
        ids, attention, scored = ids.to(device), attention.to(device), scored.to(device)
        logits = logits_at_positions(model, ids, attention, scored, shift=True)
        log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        targets = ids[scored]
        nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()
        hits = (logits.argmax(-1) == targets).long()
        owner = scored.nonzero()[:, 0]
        rows = torch.tensor(batch)
        scores.nll[rows] = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add(0, owner, nll).cpu()
        scores.correct[rows] = torch.zeros(len(batch), dtype=torch.long, device=device).index_add(0, owner, hits).cpu()
        if progress is not None:
            progress(len(batch))
    return scores


def ratio_stderr(numerators: torch.Tensor, denominators: torch.Tensor) -> float | None:
    """Standard error of sum(numerators) / sum(denominators) over texts treated as independent clusters (the
    delta method for a ratio estimator); None for fewer than 2 texts."""
    count = len(numerators)
    if count < 2:
        return None
    numerators, denominators = numerators.double(), denominators.double()
    ratio = numerators.sum() / denominators.sum()
    residuals = numerators - ratio * denominators
    return float((count / (count - 1) * residuals.square().sum()).sqrt() / denominators.sum())


def diffusion_perplexity(
    means: torch.Tensor, stderrs: torch.Tensor, inputs: ScoringInputs, mc_num: int, name: str = "perplexity"
) -> MetricResult:
    """The perplexity bound exp(-sum ELBO / tokens) of per-text ELBOs, with its delta-method standard error."""
    tokens = inputs.scored_tokens
    per_token = float(means.sum()) / tokens
    bound = math.exp(-per_token)
    stderr = None if mc_num < 2 else bound * math.sqrt(float(stderrs.square().sum())) / tokens
    return MetricResult(
        name=name,
        value=bound,
        stderr=stderr,
        kind="upper_bound",
        details={
            **inputs.details(),
            "mc_num": mc_num,
            "elbo_per_token": per_token,
            "estimator": "count-form ELBO; upper bound exp(-sum ELBO / sum tokens)",
            "stderr": "Monte-Carlo error of the bound on these texts (delta method)",
        },
    )


def causal_perplexity(scores: CausalScores, inputs: ScoringInputs, name: str = "perplexity") -> MetricResult:
    """The exact perplexity exp(sum NLL / tokens) of per-text causal scores."""
    per_token = float(scores.nll.sum()) / inputs.scored_tokens
    return MetricResult(
        name=name,
        value=math.exp(per_token),
        kind="exact",
        details={**inputs.details(), "nll_per_token": per_token},
    )


def next_token_metric(scores: CausalScores, inputs: ScoringInputs) -> MetricResult:
    """Next-token (argmax) accuracy over all scored tokens, with its across-text standard error."""
    return MetricResult(
        name="next_token_accuracy",
        value=float(scores.correct.sum()) / inputs.scored_tokens,
        stderr=ratio_stderr(scores.correct, scores.tokens),
        kind="exact",
        details={**inputs.details(), "stderr": "across texts (ratio estimator)"},
    )


def perplexity(
    loaded: Any,
    texts: Sequence[str] | ScoringInputs,
    *,
    mc_num: int = 128,
    batch_size: int = 8,
    max_length: int = 512,
    seed: int = 42,
    progress: Progress | None = None,
) -> MetricResult:
    """Perplexity of `texts` (strings, or `scoring_inputs` already made) over the same tokens for every family: an
    upper bound with its Monte-Carlo standard error for a diffusion LM (`loaded` a `dlm.loading.LoadedModel`), the
    exact value for a causal LM."""
    if mc_num < 1:
        raise EvaluationError(f"mc_num (Monte-Carlo samples per text) must be at least 1, got {mc_num}")
    inputs = _inputs(loaded, texts, max_length)
    if loaded.family.is_diffusion:
        means, stderrs = text_elbos(loaded, inputs, mc_num=mc_num, batch_size=batch_size, seed=seed, progress=progress)
        return diffusion_perplexity(means, stderrs, inputs, mc_num)
    return causal_perplexity(causal_scores(loaded, inputs, batch_size=batch_size, progress=progress), inputs)


def next_token_accuracy(
    loaded: Any,
    texts: Sequence[str] | ScoringInputs,
    *,
    batch_size: int = 8,
    max_length: int = 512,
    progress: Progress | None = None,
) -> MetricResult:
    """The fraction of scored tokens of `texts` (strings or `scoring_inputs`) a causal LM predicts exactly (argmax
    of the next-token distribution), with its across-text standard error."""
    inputs = _inputs(loaded, texts, max_length)
    return next_token_metric(causal_scores(loaded, inputs, batch_size=batch_size, progress=progress), inputs)


def ratio_masks(scored: torch.Tensor, ratio: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Bool [B, T]: in each row, exactly max(1, round(ratio * L)) of its L scored positions (half rounds up),
    chosen uniformly with the row's generator; nothing outside `scored` [B, T]."""
    _check_ratio(ratio)
    scored = scored.bool().cpu()
    masks = torch.zeros_like(scored)
    for row, generator in enumerate(generators):
        where = scored[row].nonzero().squeeze(-1)
        count = max(1, math.floor(ratio * len(where) + 0.5))
        # the `count` lowest of i.i.d. uniform scores are a uniformly random subset of that size
        chosen = torch.rand(len(where), generator=generator).argsort()[:count]
        masks[row, where[chosen]] = True
    return masks


def masked_accuracy_name(ratio: float) -> str:
    """The metric name for a mask ratio: `masked_accuracy@0.15`, `masked_accuracy@1`."""
    return f"masked_accuracy@{ratio:g}"


@torch.no_grad()
def masked_token_accuracy(
    loaded: Any,
    texts: Sequence[str] | ScoringInputs,
    ratio: float,
    *,
    batch_size: int = 8,
    max_length: int = 512,
    seed: int = 42,
    progress: Progress | None = None,
) -> MetricResult:
    """Accuracy of a diffusion LM's argmax prediction at masked positions when `ratio` of each text's scored
    tokens are masked (`ratio_masks`; one mask per text, from `example_generators([f"{name}:{index}"], seed)` with
    `name` = `masked_accuracy_name(ratio)`), over all masked tokens, with its across-text standard error."""
    _diffusion_only(loaded, "masked-token accuracy")
    _check_batch_size(batch_size)
    _check_ratio(ratio)
    name = masked_accuracy_name(ratio)
    inputs = _inputs(loaded, texts, max_length)
    model = loaded.model
    correct = torch.zeros(len(inputs.ids), dtype=torch.long)
    masked = torch.zeros(len(inputs.ids), dtype=torch.long)
    for batch in _equal_length_batches(inputs, batch_size):
        ids, scored = _stack(inputs, batch, _model_device(model))
        mask = ratio_masks(scored, ratio, example_generators([f"{name}:{inputs.indices[k]}" for k in batch], seed))
        mask = mask.to(ids.device)
        logits = logits_at_positions(
            model, ids.masked_fill(mask, loaded.special_ids.mask), None, mask, loaded.family.shift_logits
        )
        hits = (logits.argmax(-1) == ids[mask]).long()
        owner = mask.nonzero()[:, 0]
        correct[batch] = torch.zeros(len(batch), dtype=torch.long, device=ids.device).index_add(0, owner, hits).cpu()
        masked[batch] = mask.sum(-1).cpu()
        if progress is not None:
            progress(len(batch))
    return MetricResult(
        name=name,
        value=float(correct.sum()) / float(masked.sum()),
        stderr=ratio_stderr(correct, masked),
        kind="estimate",
        details={
            **inputs.details(),
            "mask_ratio": ratio,
            "masked_tokens": int(masked.sum()),
            "seed": seed,
            "stderr": "across texts (ratio estimator), one mask per text",
        },
    )
