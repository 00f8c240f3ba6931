"""lm-evaluation-harness on diffusion LMs: the `dlm_diffusion` lm-eval model and `run_lm_eval`.

Likelihood requests are scored with the count-form ELBO (`dlm.elbo`), a Monte-Carlo lower bound of
log p(continuation | context): multiple-choice accuracies compare bounds, and the perplexities of rolling-likelihood
tasks (wikitext) are upper bounds. `is_greedy` is a one-step check: every continuation token is the argmax when all of
them are masked at once (not LLaDA's token-by-token greedy decoding, which costs one forward pass per token).
Generation requests go through the family's sampler (`dlm.generation`) with the caller's sampler settings, cut at the
task's stop strings. Causal LMs (family `ar`) are evaluated by lm-eval's own `HFLM` (exact log-likelihoods).

From lm-eval's own command line: `python -m dlm.lm_eval_cli` (or `dlm-lm-eval`) takes every `lm_eval` option,
registers `dlm_diffusion` and runs lm-eval (`main`); lm-eval 0.4.13 loads no plugins, so `lm_eval --model
dlm_diffusion` alone cannot find it. The model runs on the CPU when no GPU is present, whatever `--device` says.
Task YAMLs given as files or folders (`--tasks`, `--include_path`) whose `!function` entries import Python run only
with `--trust_remote_code`.

Each ELBO draws its masks from a generator seeded by (seed, the request's token ids), so a request gets the same value
whatever its batch or its position in the run, and equals `dlm.elbo.elbo` on that request alone with
`example_generators([request_key(context_ids, continuation_ids)], seed)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import logging
import math
import numbers
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, handle_non_serializable, make_disjoint_window

from dlm.elbo import elbo, example_generators
from dlm.errors import DlmError
from dlm.families import get_family
from dlm.families.base import Family
from dlm.forward import logits_at_positions
from dlm.generation import SamplerSettings, check_decoding_settings, decode_answers, encode_prompts, generate, in_blocks
from dlm.loading import LoadedModel, load_model_and_tokenizer
from dlm.samplers.common import SamplingError

LM_NAME = "dlm_diffusion"
DEFAULT_MAX_LENGTH = 4096  # when the config names no context length
NETWORK_ERRORS = ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "ReadTimeout")

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


class LmEvalError(DlmError):
    """An lm-eval task or setting that cannot run here; the message names the task and why."""


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


def _positive_int(name: str, value: Any) -> int:
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
                "the ELBO. Evaluate causal LMs with lm-eval's HFLM (dlm.lm_eval_adapter.hf_lm), as run_lm_eval does."
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
        self.mc_num = _positive_int("mc_num", mc_num)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.sampler = sampler if sampler is not None else _sampler_from_args(sampler_fields)
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
        self.max_length = _positive_int("max_length", length or DEFAULT_MAX_LENGTH)
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


def hf_lm(loaded: LoadedModel, *, batch_size: int = 8, max_length: int | None = None) -> Any:
    """lm-eval's HFLM around an already loaded causal LM (family `ar`): exact log-likelihoods, HF generation."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=loaded.model,
        tokenizer=loaded.tokenizer,
        batch_size=_positive_int("batch_size", batch_size),
        max_length=max_length,
    )


# -------------------------------------------------------------------- tasks
@lru_cache(maxsize=4)
def _task_manager(folders: tuple[str, ...], include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(folders) or None, include_defaults=include_defaults)


def _looks_like_path(spec: str) -> bool:
    """lm-eval task names hold no slashes: anything else that names a file or folder is one."""
    return "/" in spec or "\\" in spec or spec.startswith((".", "~")) or spec.lower().endswith((".yaml", ".yml"))


def _classify(specs: Sequence[str]) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """[(kind, spec)] with kind name/file/folder, and the folders to index."""
    kinds, folders = [], []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            kinds.append(("folder", str(path.resolve())))
            folders.append(str(path.resolve()))
        elif path.is_file():
            if path.suffix.lower() not in (".yaml", ".yml"):
                raise LmEvalError(f"task file {spec} is not an lm-eval task YAML (.yaml)")
            kinds.append(("file", str(path.resolve())))
        elif _looks_like_path(spec):
            raise LmEvalError(f"task file or folder {spec} does not exist")
        else:
            kinds.append(("name", spec))
    return kinds, tuple(dict.fromkeys(folders))


def _unknown_task(spec: str, manager: Any) -> LmEvalError:
    import lm_eval

    names = manager.all_tasks
    lowered = {name.lower(): name for name in names}
    close = [lowered[m] for m in difflib.get_close_matches(spec.lower(), list(lowered), n=5, cutoff=0.6)]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    what = "matches the pattern" if any(c in spec for c in "*?[") else "has that name"
    return LmEvalError(
        f"lm-eval task {spec!r} is not installed: no task, group or tag {what} among the {len(names)} that "
        f"lm-eval {lm_eval.__version__} knows{hint}. Give an installed task name (`lm-eval ls tasks` lists them), "
        "or the path of a task YAML file or of a folder of task YAMLs"
    )


def _network_error(error: BaseException) -> BaseException | None:
    """The link of the exception chain that says the network (or the hub) could not be reached, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).lower()
        if (
            isinstance(error, ConnectionError | TimeoutError)
            or type(error).__name__ in NETWORK_ERRORS
            or "offline" in text
            or "couldn't reach" in text
        ):
            return error
        error = error.__cause__ or error.__context__
    return None


def _load_error(what: str, name: str, error: Exception, manager: Any) -> LmEvalError:
    """The error for task `name` (`what`: how to name it to the user) that failed to load with `error`."""
    network = _network_error(error)
    if network is not None:
        named = re.search(r"'([^']+)' on the hub", str(network), re.IGNORECASE)
        entry = manager.task_index.get(name)
        dataset = named.group(1) if named else (entry.cfg or {}).get("dataset_path") if entry else None
        return LmEvalError(
            f"{what} needs the network to download its dataset{f' {dataset!r}' if dataset else ''}, and the dataset "
            f"hub cannot be reached here (HF_DATASETS_OFFLINE=1 or no network: {network}). Download the dataset once "
            "where the hub is reachable (lm-eval then reads it from the datasets cache), or use a local task YAML "
            "with dataset_path: json and data_files on this machine"
        )
    if isinstance(error, FileNotFoundError):
        return LmEvalError(f"{what} cannot read its data: {error}")
    return LmEvalError(f"{what} cannot be loaded: {type(error).__name__}: {error}")


def _top_level(loaded: dict[str, Any]) -> list[Any]:
    """The items a TaskManager.load result was built from: its outermost groups, else its tasks."""
    groups = loaded.get("groups") or {}
    if not groups:
        return list(loaded["tasks"].values())
    children = {child for names in (loaded.get("group_map") or {}).values() for child in names}
    return [group for name, group in groups.items() if name not in children]


def task_code(paths: Sequence[str | Path]) -> list[str]:
    """`file:line` of every `!function` entry (Python imported and run by lm-eval) in the task YAML files and
    folders of `paths`."""
    found = []
    for path in map(Path, paths):
        files = sorted([*path.rglob("*.yaml"), *path.rglob("*.yml")]) if path.is_dir() else [path]
        for file in files:
            if not file.is_file():
                continue
            for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if "!function" in line.split("#", 1)[0]:
                    found.append(f"{file}:{number}")
    return found


def refuse_task_code(paths: Sequence[str | Path], trust_remote_code: bool) -> None:
    """Raise naming the task YAML lines that would run Python code, unless `trust_remote_code`."""
    found = [] if trust_remote_code else task_code(paths)
    if found:
        raise LmEvalError(
            f"task YAML runs Python code (!function) at {', '.join(found[:5])}"
            + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            + "; it runs only with trust_remote_code (--trust_remote_code on the command line)"
        )


def load_tasks(
    specs: Sequence[str], log: Log | None = None, *, trust_remote_code: bool = False
) -> tuple[Any, list[Any]]:
    """(TaskManager, lm-eval Task/Group objects) for task names, glob patterns (`mmlu_*`), task YAML files and
    folders of task YAMLs (every task defined in the folder). Datasets are loaded here, so a task that cannot get
    its data fails here, named. Local YAMLs that import Python (`!function`) load only with `trust_remote_code`.

    lm-eval's own task index (about 10 s to build) is read only when a name is asked for, or when local YAMLs do not
    load without it (a local group of installed tasks).
    """
    kinds, folders = _classify(specs)
    refuse_task_code([spec for kind, spec in kinds if kind != "name"], trust_remote_code)
    with_defaults = any(kind == "name" for kind, _ in kinds)
    try:
        return _load_with(_task_manager(folders, with_defaults), kinds, log)
    except LmEvalError as e:
        cause = e.__cause__
        if with_defaults or cause is None or isinstance(cause, FileNotFoundError) or _network_error(cause):
            raise
        return _load_with(_task_manager(folders, True), kinds, log)


def _load_with(manager: Any, kinds: list[tuple[str, str]], log: Log | None) -> tuple[Any, list[Any]]:
    from lm_eval.api.group import Group

    items: list[Any] = []
    for kind, spec in kinds:
        if kind == "folder":
            names = [
                name
                for name in manager.all_subtasks
                if (path := manager.task_index[name].yaml_path) is not None and Path(path).is_relative_to(spec)
            ]
            if not names:
                raise LmEvalError(f"task folder {spec} defines no lm-eval task (no YAML with a `task:` key)")
        elif kind == "name" and any(c in spec for c in "*?["):
            names = manager.match_tasks([spec])
            if not names:
                raise _unknown_task(spec, manager)
        elif kind == "name" and spec not in manager.task_index:
            raise _unknown_task(spec, manager)
        else:
            names = [spec]
        for name in names:
            try:
                loaded = manager.load([name])
            except Exception as e:  # a task's own loading code can raise anything; the message names the task
                what = f"lm-eval task file {name}" if kind == "file" else f"lm-eval task {name!r}"
                raise _load_error(what, name, e, manager) from e
            items.extend(_top_level(loaded))
    seen: dict[str, str] = {}
    for item in items:
        source = item.name if isinstance(item, Group) else item.task_name
        for task in item.get_all_tasks() if isinstance(item, Group) else [item]:
            if task.task_name in seen:
                raise LmEvalError(
                    f"lm-eval task {task.task_name!r} is asked for twice: in {seen[task.task_name]!r} and in {source!r}"
                )
            seen[task.task_name] = source
            if getattr(task, "UNSAFE_CODE", False):
                raise LmEvalError(
                    f"lm-eval task {task.task_name!r} runs code written by the model (marked unsafe); this evaluator "
                    "does not run it"
                )
    if log is not None:
        log(f"lm-eval tasks: {', '.join(seen)}")
    return manager, items


# -------------------------------------------------------------------- running
class _LogHandler(logging.Handler):
    def __init__(self, log: Log) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        self._log(f"lm-eval: {record.getMessage()}")


@contextmanager
def _forward_lm_eval_warnings(log: Log) -> Iterator[None]:
    logger = logging.getLogger("lm_eval")
    handler = _LogHandler(log)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _number(value: Any) -> float | None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
        return float(value)
    return None


def summarize(results: dict[str, Any]) -> dict[str, dict[str, tuple[float, float | None]]]:
    """{task or group: {metric: (value, stderr or None)}} from lm-eval's results. A metric under a filter other
    than `none` is named `metric_filter` (gsm8k: `exact_match_strict-match`)."""
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    for task, values in results.get("results", {}).items():
        metrics = {}
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or _number(value) is None:
                continue
            name = metric if filt == "none" else f"{metric}_{filt}"
            metrics[name] = (_number(value), _number(values.get(f"{metric}_stderr,{filt}")))
        out[task] = metrics
    return out


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=handle_non_serializable))


def run_lm_eval(
    loaded: LoadedModel,
    tasks: str | Sequence[str],
    *,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    mc_num: int = 128,
    sampler: SamplerSettings | None = None,
    seed: int = 0,
    apply_chat_template: bool = False,
    log: Log | None = None,
    progress: Progress | None = None,
    bootstrap_iters: int = 1000,
    max_length: int | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Run lm-eval tasks on a loaded model.

    `tasks`: task names, glob patterns, task YAML files or folders (a list, or one comma-separated string).
    `num_fewshot`: None keeps each task's own. `limit`: documents per task (a fraction when < 1; None or 0: all).
    `batch_size`: sequences per forward pass. `mc_num`: ELBO samples per likelihood (diffusion families).
    `sampler`: generation settings (diffusion families; causal LMs use the task's generation settings).
    `seed`: lm-eval's seeds (few-shot choice, ...) and the ELBO masks and sampler noise.
    `progress(kind, done, total)`: called as requests of a kind (loglikelihood, generate_until, ...) complete.
    `trust_remote_code`: local task YAMLs may use `!function` (Python code beside the YAML); refused otherwise.

    Returns {"metrics": {task: {metric: (value, stderr)}}, "results": lm-eval's results (JSON-safe, without the
    samples), "samples": {task: per-document records (arguments, responses, metrics)}, "generation": tokens,
    forward passes and seconds spent generating (diffusion families)}.
    """
    log = log or logging.getLogger(__name__).info
    specs = _task_specs(tasks, num_fewshot, limit)
    from lm_eval import simple_evaluate

    with _forward_lm_eval_warnings(log):
        manager, items = load_tasks(specs, log, trust_remote_code=trust_remote_code)
        if loaded.family.is_diffusion:
            sampler = sampler or SamplerSettings()
            lm = DiffusionLM(
                loaded, mc_num=mc_num, batch_size=batch_size, sampler=sampler, seed=seed, max_length=max_length,
                log=log, progress=progress,
            )  # fmt: skip
        else:
            log(
                f"{loaded.path} is a causal LM: lm-eval's HFLM scores it with exact log-likelihoods and generates "
                "with the tasks' generation settings (mc_num and the sampler settings do not apply)"
            )
            lm = hf_lm(loaded, batch_size=batch_size, max_length=max_length)
        results = simple_evaluate(
            model=lm,
            tasks=items,
            num_fewshot=num_fewshot,
            limit=limit or None,
            batch_size=batch_size,
            task_manager=manager,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=apply_chat_template,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            bootstrap_iters=bootstrap_iters,
            log_samples=True,
        )
    return _outcome(results, lm)


def _task_specs(tasks: str | Sequence[str], num_fewshot: int | None, limit: int | float | None) -> list[str]:
    """The task names, patterns and paths of `tasks`, once the settings that go with them are checked."""
    specs = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not specs:
        raise LmEvalError("no lm-eval task given: name at least one task, task YAML file or folder")
    if num_fewshot is not None and num_fewshot < 0:
        raise LmEvalError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if limit is not None and limit < 0:
        raise LmEvalError(f"limit must be >= 0 (0: every document), got {limit}")
    return specs


def _outcome(results: dict[str, Any], lm: Any) -> dict[str, Any]:
    """`run_lm_eval`'s answer from lm-eval's results: metrics, results, samples and generation statistics."""
    samples = results.pop("samples", None) or {}
    stats = dict(lm.generation_stats) if isinstance(lm, DiffusionLM) else {}
    if stats.get("seconds"):
        stats["tokens_per_second"] = stats["generated_tokens"] / stats["seconds"]
    return {
        "metrics": summarize(results),
        "results": _json_safe(results),
        "samples": _json_safe(samples),
        "generation": stats,
    }


# -------------------------------------------------------------------- command line
def _option_values(argv: Sequence[str], option: str) -> list[str]:
    """The values of `--option a,b c` or `--option=a,b` in an lm-eval argument list."""
    values: list[str] = []
    for index, arg in enumerate(argv):
        if arg.startswith(option + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == option:
            values += list(itertools.takewhile(lambda a: not a.startswith("--"), argv[index + 1 :]))
    return [part for value in values for part in value.split(",") if part]


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with `dlm_diffusion` registered: every argument goes to lm-eval unchanged, e.g.
    `python -m dlm.lm_eval_cli --model dlm_diffusion --model_args pretrained=tiny-llada,mc_num=32 --tasks
    arc_easy --batch_size 8`. Local task YAMLs that import Python are refused without `--trust_remote_code`."""
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    local = [t for t in _option_values(args, "--tasks") if _looks_like_path(t) or Path(t).exists()]
    try:
        refuse_task_code([*local, *_option_values(args, "--include_path")], "--trust_remote_code" in args)
    except LmEvalError as e:
        sys.exit(f"error: {e}")
    handler = logging.StreamHandler()  # the adapter's notes (device fallback, sampler lengths) beside lm-eval's
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [dlm] %(message)s"))
    logging.getLogger("dlm").addHandler(handler)
    logging.getLogger("dlm").setLevel(logging.INFO)
    sys.argv = ["lm_eval", *args]
    cli_evaluate()
