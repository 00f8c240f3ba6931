"""`DiffusionLM`: a masked-diffusion LM as the lm-eval model `dlm_diffusion` (ELBO likelihoods, the family's sampler
for generation), registered with lm-eval on import."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from dlm.block_diffusion import model_block_size
from dlm.elbo import elbo, example_generators
from dlm.families import get_family
from dlm.families.base import Family
from dlm.forward import logits_at_positions
from dlm.generation import (
    SamplerSettings,
    check_decoding_settings,
    decode_answers,
    decoding_settings,
    encode_prompts,
    generate,
    in_blocks,
)
from dlm.lm_eval.errors import LmEvalError
from dlm.loading import LoadedModel, load_model_and_tokenizer
from dlm.samplers.common import SamplingError

LM_NAME = "dlm_diffusion"
DEFAULT_MAX_LENGTH = 4096  # when the config names no context length

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def request_key(context_ids: Sequence[int], continuation_ids: Sequence[int]) -> str:
    """The id that seeds a request's ELBO masks (with `dlm.elbo.example_generators`): its token ids."""
    return f"{' '.join(map(str, context_ids))}|{' '.join(map(str, continuation_ids))}"


def settings_for_length(settings: SamplerSettings, max_gen_toks: int, family: Family | str) -> SamplerSettings:
    """Sampler settings for a task that asks for up to `max_gen_toks` new tokens.

    Block samplers (LLaDA, BERT, converted models) round the length up to a multiple of `block_length`; the number of
    steps keeps the tokens revealed per step of `settings` (a multiple of the number of blocks, at most one step per
    token), since that ratio, not the step count, sets the quality of the samples.
    """
    blockwise = in_blocks(get_family(family), settings)
    if max_gen_toks < 1:
        raise LmEvalError(f"max_gen_toks must be at least 1, got {max_gen_toks}")
    if settings.max_new_tokens < 1 or settings.steps < 1 or (blockwise and settings.block_length < 1):
        raise LmEvalError(
            f"sampler max_new_tokens, steps and block_length must be at least 1, got {settings.max_new_tokens}, "
            f"{settings.steps} and {settings.block_length}"
        )
    length = max_gen_toks
    blocks = 1
    if blockwise:
        length = math.ceil(max_gen_toks / settings.block_length) * settings.block_length
        blocks = length // settings.block_length
    per_block = -(-settings.steps * length // (settings.max_new_tokens * blocks))  # ceil, in integers
    steps = min(max(per_block, 1) * blocks, length)
    return dataclasses.replace(settings, max_new_tokens=length, steps=steps)


def _cut_at_stops(text: str, stops: Sequence[str]) -> str:
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


def _sampler_from_args(fields: dict[str, Any]) -> SamplerSettings:
    """SamplerSettings from lm-eval `model_args` values, which may be strings (`steps=64,temperature=0.5`)."""
    known = {f.name: f for f in dataclasses.fields(SamplerSettings)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise LmEvalError(
            f"unknown {LM_NAME} argument(s) {', '.join(unknown)}; sampler settings are: {', '.join(known)}"
        )
    values = {}
    for name, value in fields.items():
        kind = str(known[name].type)
        if value is None or (isinstance(value, str) and value.strip().lower() == "none" and "None" in kind):
            values[name] = None
            continue
        try:
            if kind.startswith("int"):
                values[name] = int(value)
            elif kind.startswith("float"):
                values[name] = float(value)
            elif kind.startswith("bool"):
                values[name] = value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")
            else:
                values[name] = str(value)
        except ValueError as e:
            raise LmEvalError(f"{LM_NAME} argument {name}={value!r} is not a valid {kind}") from e
    return SamplerSettings(**values)


def _flag(value: bool | str) -> bool:
    """A boolean lm-eval model argument, which arrives as text from `--model_args`."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


def available_device(device: str, log: Log) -> str:
    """`device`, or the CPU when it names a CUDA device and none is present (lm-eval's CLI asks for `cuda:0` by
    default; its own `hf` model falls back the same way)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        log(f"{LM_NAME}: no CUDA device is available, so the model runs on the CPU instead of {device}")
        return "cpu"
    return device


def positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and not value.is_integer()):
        raise LmEvalError(f"{name} must be a positive integer, got {value!r}")
    return number


@register_model(LM_NAME)
class DiffusionLM(TemplateLM):
    """A masked-diffusion LM as an lm-eval model: ELBO likelihoods, generation with dlm's samplers.

    `pretrained`: a `LoadedModel` or anything `load_model_and_tokenizer` takes (a path, a tiny preset name).
    `mc_num`: Monte-Carlo samples per ELBO. `batch_size`: sequences per forward pass (ELBO samples) and prompts per
    generation batch. `sampler`: the sampler settings, or their fields as keyword arguments (strings are accepted,
    as lm-eval's `model_args` give them). `max_length`: context length (default: the model config's).
    `add_bos_token`: start every context with BOS (off, as lm-eval does for causal models; chat templates add it).
    `device`: where to run (lm-eval's CLI default `cuda:0` falls back to the CPU when no GPU is present).
    `trust_remote_code`, `dtype`: how a named model is loaded (`load_model_and_tokenizer`).
    """

    backend = "causal"  # TemplateLM tokenizes context + continuation together, then splits

    def __init__(
        self,
        pretrained: LoadedModel | str,
        mc_num: int = 128,
        batch_size: int | str = 32,
        sampler: SamplerSettings | None = None,
        seed: int = 0,
        max_length: int | None = None,
        add_bos_token: bool = False,
        device: str | None = None,
        log: Log | None = None,
        progress: Progress | None = None,
        max_batch_size: int | None = None,  # lm-eval passes it to every model (None unless asked for)
        trust_remote_code: bool | str = False,
        dtype: str = "auto",
        **sampler_fields: Any,
    ) -> None:
        super().__init__()
        if max_batch_size is not None:
            raise LmEvalError(
                f"{LM_NAME} cannot honour max_batch_size={max_batch_size}: it applies to --batch_size auto, and "
                f"{LM_NAME} runs one fixed batch size (give --batch_size N)"
            )
        loaded = (
            pretrained
            if isinstance(pretrained, LoadedModel)
            else load_model_and_tokenizer(pretrained, dtype=dtype, trust_remote_code=_flag(trust_remote_code))
        )
        if not loaded.family.is_diffusion:
            raise LmEvalError(
                f"{loaded.path} is a causal LM (family {loaded.family.name}); {LM_NAME} scores diffusion models with "
                "the ELBO. Evaluate causal LMs with lm-eval's HFLM (dlm.lm_eval.run.hf_lm), as run_lm_eval does."
            )
        if sampler is not None and sampler_fields:
            raise LmEvalError(f"give the sampler settings either as sampler= or as fields, not both: {sampler_fields}")
        self.loaded = loaded
        self.log = log or logging.getLogger(__name__).info
        self.model = loaded.model.eval()
        if device:
            self.model.to(available_device(device, self.log))
        self._device = next(self.model.parameters()).device
        self.tokenizer = loaded.tokenizer
        self.family = loaded.family
        self.special = loaded.special_ids
        self.mc_num = positive_int("mc_num", mc_num)
        self.batch_size = positive_int("batch_size", batch_size)
        requested = sampler if sampler is not None else _sampler_from_args(sampler_fields)
        self.sampler = decoding_settings(loaded.family, loaded.model, requested)  # a block model's own blocks
        try:
            check_decoding_settings(loaded.family, self.sampler)
        except SamplingError as e:
            raise LmEvalError(f"{LM_NAME} sampler settings: {e}") from e
        self.seed = int(seed)
        config = self.model.config
        length = (
            max_length
            or getattr(config, "max_sequence_length", None)
            or getattr(config, "max_position_embeddings", None)
        )
        self.max_length = positive_int("max_length", length or DEFAULT_MAX_LENGTH)
        self.add_bos_token = _flag(add_bos_token)
        self.progress = progress
        self.generation_stats = {"sequences": 0, "generated_tokens": 0, "forward_passes": 0, "seconds": 0.0}
        self._logged: set[str] = set()

    # ---------------------------------------------------------------- tokenization (TemplateLM)
    @property
    def eot_token_id(self) -> int:
        return self.special.eos

    @property
    def prefix_token_id(self) -> int:
        """What an empty context becomes: BOS, else EOS (lm-eval's convention)."""
        return self.special.bos if self.special.bos is not None else self.special.eos

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        ids = self.tokenizer(string, add_special_tokens=False)["input_ids"]
        bos = self.special.bos
        if self.add_bos_token and add_special_tokens is not False and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    def get_model_info(self) -> dict[str, Any]:
        """Recorded by lm-eval in results["config"]: every score carries how it was computed."""
        return {
            "model_path": self.loaded.path,
            "family": self.family.name,
            "likelihood": f"count-form ELBO (a lower bound), {self.mc_num} Monte-Carlo samples",
            "sampler": dataclasses.asdict(self.sampler),
            "seed": self.seed,
            "max_length": self.max_length,
        }

    def _note_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            self.log(message)

    def _report(self, kind: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(kind, done, total)

    # ---------------------------------------------------------------- likelihoods
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        pairs = [self._fit(context, continuation) for _, context, continuation in requests]
        return self._score_pairs(pairs, "loglikelihood")

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = True) -> list[float]:
        """ELBO of each whole text, summed over lm-eval's rolling windows: disjoint runs of scored tokens, each given
        the token before it (the first given BOS/EOS, the last as many earlier tokens as fit); a bound of log p(text)
        with each window's context cut to what lm-eval gives."""
        pairs: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        for index, request in enumerate(requests):
            (text,) = request.args
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(text, add_special_tokens=False),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length - 1,  # the context token and the scored tokens all go in the input
                context_len=1,
            )
            for window in map(make_disjoint_window, windows):
                pairs.append(window)
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (value, _) in zip(owners, self._score_pairs(pairs, "loglikelihood_rolling"), strict=True):
            totals[owner] += value
        return totals

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Drop the oldest context tokens that do not fit in the context length."""
        if len(continuation) >= self.max_length:
            raise LmEvalError(
                f"a continuation of {len(continuation)} tokens does not fit in the model's context length of "
                f"{self.max_length} tokens with any context; the task asks to score text longer than the model reads"
            )
        return context[max(0, len(context) + len(continuation) - self.max_length) :], continuation

    @torch.no_grad()
    def _score_pairs(self, pairs: list[tuple[list[int], list[int]]], kind: str) -> list[tuple[float, bool]]:
        """(ELBO, is_greedy) of each (context ids, continuation ids), batched by length; order kept."""
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)  # an empty continuation has log p = 0
        order = sorted((i for i, (_, cont) in enumerate(pairs) if cont), key=lambda i: -sum(map(len, pairs[i])))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for index, result in zip(chunk, self._score_batch([pairs[i] for i in chunk]), strict=True):
                results[index] = result
            self._report(kind, min(start + self.batch_size, len(order)), len(order))
        return results

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        width = max(len(ctx) + len(cont) for ctx, cont in pairs)
        ids = torch.full((len(pairs), width), self.special.pad, dtype=torch.long)
        response = torch.zeros((len(pairs), width), dtype=torch.bool)
        attention = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, (ctx, cont) in enumerate(pairs):
            ids[row, : len(ctx) + len(cont)] = torch.tensor(ctx + cont)
            response[row, len(ctx) : len(ctx) + len(cont)] = True
            attention[row, : len(ctx) + len(cont)] = 1
        # right padding hidden by the attention mask leaves every real token's output as without padding
        padding = attention.to(self._device) if bool((attention == 0).any()) else None
        ids, response = ids.to(self._device), response.to(self._device)
        shift = self.family.shift_logits
        values, _ = elbo(
            self.model,
            ids,
            response,
            mask_id=self.special.mask,
            shift=shift,
            block_size=model_block_size(self.family, self.model),
            n=self.mc_num,
            attention_mask=padding,
            batch_size=self.batch_size,
            generator=example_generators([request_key(ctx, cont) for ctx, cont in pairs], self.seed),
        )
        logits = logits_at_positions(self.model, ids.masked_fill(response, self.special.mask), padding, response, shift)
        misses = (logits.argmax(dim=-1) != ids[response]).long()
        per_row = torch.zeros(len(pairs), dtype=torch.long, device=misses.device)
        per_row.index_add_(0, response.nonzero()[:, 0], misses)
        return [(float(v), m == 0) for v, m in zip(values.tolist(), per_row.tolist(), strict=True)]

    # ---------------------------------------------------------------- generation
    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> tuple[tuple[str, ...], SamplerSettings]:
        until = gen_kwargs.get("until") or []
        until = (until,) if isinstance(until, str) else tuple(until)
        asked = int(gen_kwargs.get("max_gen_toks") or self.sampler.max_new_tokens)
        settings = settings_for_length(self.sampler, asked, self.family)
        if (settings.max_new_tokens, settings.steps) != (self.sampler.max_new_tokens, self.sampler.steps):
            rounded = (
                f", rounded up to a multiple of block_length={self.sampler.block_length}"
                if settings.max_new_tokens != asked
                else ""
            )
            self._note_once(
                f"generation: the task asks up to {asked} new tokens: generating {settings.max_new_tokens}{rounded} "
                f"in {settings.steps} steps (the sampler settings' {self.sampler.max_new_tokens} tokens in "
                f"{self.sampler.steps} steps, same tokens per step)"
            )
        ignored = {k: v for k, v in gen_kwargs.items() if k not in ("until", "max_gen_toks")}
        if ignored:
            self._note_once(
                f"generation: the task's generation settings {ignored} are not used; the sampler settings are "
                f"{dataclasses.asdict(settings)}"
            )
        return until, settings

    def _prompt_text(self, context: str) -> str:
        """The context, starting with BOS when asked for, or made of BOS/EOS alone when empty (as token text:
        tokenizers read special tokens in text)."""
        if not context:
            return self.tokenizer.convert_ids_to_tokens(self.prefix_token_id)
        if not self.add_bos_token or self.special.bos is None:
            return context
        token = self.tokenizer.convert_ids_to_tokens(self.special.bos)
        return context if context.startswith(token) else token + context

    def generate_until(self, requests: list[Any], disable_tqdm: bool = True) -> list[str]:
        """Answers cut at the task's stop strings (and at EOS / end of turn), without surrounding whitespace.
        Batches of requests with the same stop strings and length, in request order; one generator seeded with
        `seed` for the whole call, so a run is reproducible."""
        groups: dict[tuple[tuple[str, ...], SamplerSettings], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(self._generation_settings(dict(request.args[1])), []).append(index)
        outputs = [""] * len(requests)
        generator = torch.Generator().manual_seed(self.seed)
        done = 0
        for (until, settings), indices in groups.items():
            keep = self.max_length - settings.max_new_tokens
            if keep < 1:
                raise LmEvalError(
                    f"generating {settings.max_new_tokens} tokens leaves no room for the prompt in the model's "
                    f"context length of {self.max_length} tokens; lower the task's max_gen_toks"
                )
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                prompts = [[{"role": "user", "content": self._prompt_text(requests[i].args[0])}] for i in chunk]
                ids, mask = encode_prompts(self.tokenizer, prompts, self.special.pad, apply_chat_template=False)
                ids, mask = ids[:, -keep:], mask[:, -keep:]  # left-padded: drops the oldest prompt tokens
                began = time.perf_counter()
                out = generate(self.model, self.family, self.special, ids, mask, settings, generator)
                self.generation_stats["seconds"] += time.perf_counter() - began
                self.generation_stats["sequences"] += len(chunk)
                self.generation_stats["generated_tokens"] += int(out.generated_tokens.sum())
                self.generation_stats["forward_passes"] += out.nfe
                answers = decode_answers(self.tokenizer, self.special, out.sequences.cpu(), ids.shape[1])
                for index, text in zip(chunk, answers, strict=True):
                    outputs[index] = _cut_at_stops(text, until).strip()
                done += len(chunk)
                self._report("generate_until", done, len(requests))
        return outputs
