"""Our LLaDA sampler against NVIDIA's Fast-dLLM (https://github.com/NVlabs/Fast-dLLM, `llada/generate.py`) on the
same weights and prompts: token ids, which must be identical, and speed, side by side.

Modes (ours: `dlm.samplers.llada.generate_llada`; Fast-dLLM: its `generate.py` functions), all at temperature 0
with low-confidence remasking and one token per step (steps = gen_length), in blocks of the largest divisor of
each length not above `--block-length`:

    exact          cache="none"                               generate
    prefix         cache="prefix"                             generate_with_prefix_cache
    dual           cache="dual"                               generate_with_dual_cache
    dual_parallel  cache="dual", parallel_threshold=0.9       generate_with_dual_cache(threshold=0.9)

Fast-dLLM is imported unchanged from the checkout that `--fast-dllm-dir` (default: env `FAST_DLLM_DIR`) names; get
one with ``git clone https://github.com/NVlabs/Fast-dLLM`` (not part of this project; written against its commit
24cc59e of June 2025). Its `llada/model` package is
registered as `model`, the name its `generate.py` imports it by. Two things are bridged so that it imports under
transformers 5 beside `dlm`: its modeling file registers ``"llada"`` with transformers' Auto classes, which `dlm`
has already done (those two registrations are skipped while it imports; nothing here loads through the Auto
classes); and it imports `einops`, which only a block type that LLaDA checkpoints do not use calls (when einops is
not installed, a stand-in that raises if called takes its place).

The model is a random tiny LLaDA (ours, `dlm.models.LLaDAModelLM`; `--d-model`, `--layers`, `--heads`, `--vocab`,
mask id vocab - 1) whose output head is scaled by `--head-scale`, so that chosen tokens are often confident enough
for the 0.9 threshold to reveal several at once (with the plain random head it never does, and dual_parallel would
be dual again). Its state dict loads into Fast-dLLM's `LLaDAModelLM` built from the same config values (our model
keeps the official checkpoint layout); the largest logit difference between the two is printed.

Fast-dLLM's functions decode one prompt: their canvas has batch size 1, the dual cache's `replace_position` indexes
a single row, and no attention mask is taken. So batch 1 is compared directly, and batch `--batch` (prompts of one
length, no padding) compares our batched run with Fast-dLLM's run on each prompt alone. Speed is timed at batch 1
only (like for like): after one warm-up run each, `--rounds` rounds alternate the two sides (order flipped every
round); times are medians of this process's CPU time on `--threads` torch threads (wall time on CUDA). Every timed
output is checked too. Forward passes may differ by one per block where a block's first pass reveals all of it:
Fast-dLLM's cached loops then run one more pass, which reveals nothing.

The last line printed is a JSON object: ``ids_identical_<mode>`` (every length, batch 1 and batch `--batch`),
``speed_ratio_<mode>`` (Fast-dLLM's time over ours at the longest length, batch 1; above 1: ours is faster),
``speed_ratio_<mode>_<length>`` at each length, ``nfe_<mode>`` and ``nfe_fast_dllm_<mode>`` (forward passes of
ours and of Fast-dLLM at the longest length, batch 1) and ``max_logit_diff``.

    FAST_DLLM_DIR=/path/to/Fast-dLLM python bench/fast_dllm_reference.py       # a few minutes on one CPU thread
    FAST_DLLM_DIR=... python bench/fast_dllm_reference.py --gen-lengths 6 256 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from transformers import AutoConfig, AutoModel

import dlm  # noqa: F401  (registers LLaDA with the Auto classes before Fast-dLLM's modeling file tries to)
from dlm.models import LLaDAConfig, LLaDAModelLM
from dlm.samplers.llada import generate_llada

THRESHOLD = 0.9


@dataclass(frozen=True)
class Mode:
    """One decoding mode: our sampler's options and the Fast-dLLM function (and threshold) that does the same."""

    ours: dict[str, object]
    reference: str
    threshold: float | None = None


MODES = {
    "exact": Mode({"cache": "none"}, "generate"),
    "prefix": Mode({"cache": "prefix"}, "generate_with_prefix_cache"),
    "dual": Mode({"cache": "dual"}, "generate_with_dual_cache"),
    "dual_parallel": Mode({"cache": "dual", "parallel_threshold": THRESHOLD}, "generate_with_dual_cache", THRESHOLD),
}


@dataclass(frozen=True)
class FastDllm:
    """Fast-dLLM's LLaDA code: its `generate.py` module and its modeling and configuration modules."""

    generate: types.ModuleType
    modeling: types.ModuleType
    configuration: types.ModuleType


def _exec_module(name: str, path: Path, package_dir: Path | None = None) -> types.ModuleType:
    search = [str(package_dir)] if package_dir is not None else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=search)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _einops_stand_in() -> types.ModuleType:
    def rearrange(*args, **kwargs):
        raise NotImplementedError("einops is not installed (pip install einops); Fast-dLLM called einops.rearrange")

    module = types.ModuleType("einops")
    module.rearrange = rearrange
    return module


def load_fast_dllm(checkout: str | Path) -> FastDllm:
    """Fast-dLLM's LLaDA code from a checkout of https://github.com/NVlabs/Fast-dLLM (see the module docstring)."""
    llada = Path(checkout).expanduser() / "llada"
    if not (llada / "generate.py").is_file() or not (llada / "model" / "modeling_llada.py").is_file():
        raise FileNotFoundError(
            f"FAST_DLLM_DIR={checkout} is not a Fast-dLLM checkout: expected llada/generate.py and "
            "llada/model/modeling_llada.py in it"
        )
    loaded = sys.modules.get("model")
    if loaded is not None and Path(loaded.__file__).resolve().parent != (llada / "model").resolve():
        raise RuntimeError(f"a module named 'model' is already imported from {loaded.__file__}; Fast-dLLM needs it")
    if importlib.util.find_spec("einops") is None:
        sys.modules["einops"] = _einops_stand_in()
    if loaded is None:
        with mock.patch.object(AutoConfig, "register"), mock.patch.object(AutoModel, "register"):
            _exec_module("model", llada / "model" / "__init__.py", package_dir=llada / "model")
    generate = sys.modules.get("fast_dllm_generate") or _exec_module("fast_dllm_generate", llada / "generate.py")
    return FastDllm(generate, sys.modules["model.modeling_llada"], sys.modules["model.configuration_llada"])


def random_llada(vocab: int, d_model: int, layers: int, heads: int, head_scale: float, seed: int) -> LLaDAModelLM:
    """Random weights, MLP twice `d_model`, mask id `vocab` - 1, the output head scaled by `head_scale` (its mask
    row zeroed)."""
    torch.manual_seed(seed)
    config = LLaDAConfig(
        d_model=d_model,
        n_heads=heads,
        n_layers=layers,
        mlp_hidden_size=2 * d_model,
        vocab_size=vocab,
        embedding_size=vocab,
        max_sequence_length=4096,
        mask_token_id=vocab - 1,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LLaDAModelLM(config).eval()
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.mul_(head_scale)
        # a trained LLaDA never predicts [MASK]; a random one could, and Fast-dLLM's loops would then outrun their
        # schedule: a zero row gives it logit 0, below the best of the other (random, scaled) logits
        head[vocab - 1] = 0.0
    return model


def reference_model(fast_dllm: FastDllm, ours: LLaDAModelLM) -> torch.nn.Module:
    """Fast-dLLM's `LLaDAModelLM` built from our config's values and given our weights."""
    values = {k: v for k, v in ours.config.to_dict().items() if k != "model_type"}
    config = fast_dllm.configuration.LLaDAConfig(**values)
    config.use_cache = False  # its default, which transformers 5 no longer keeps; its forward reads it
    model = fast_dllm.modeling.LLaDAModelLM(config, init_params=False)
    model.load_state_dict(ours.state_dict())
    return model.to(ours.device).eval()


def random_prompts(count: int, length: int, mask_id: int, seed: int) -> torch.Tensor:
    return torch.randint(0, mask_id, (count, length), generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class Decoders:
    """Both sides' decoding of `prompts` [B, P] in a mode at one length: (sequences [B, P + gen], forward passes)."""

    ours_model: LLaDAModelLM
    reference_model: torch.nn.Module
    fast_dllm: FastDllm

    def ours(self, mode: str, prompts: torch.Tensor, gen_length: int, block_length: int) -> tuple[torch.Tensor, int]:
        mask_id = self.ours_model.config.mask_token_id
        shape = {"steps": gen_length, "gen_length": gen_length, "block_length": block_length}
        out = generate_llada(self.ours_model, prompts, mask_id=mask_id, **shape, **MODES[mode].ours)
        return out.sequences, out.nfe

    def reference(
        self, mode: str, prompts: torch.Tensor, gen_length: int, block_length: int
    ) -> tuple[torch.Tensor, int]:
        """Fast-dLLM's function for `mode`, one prompt at a time (all it takes), rows stacked; passes summed."""
        decode = getattr(self.fast_dllm.generate, MODES[mode].reference)
        shape = {"steps": gen_length, "gen_length": gen_length, "block_length": block_length}
        mask_id = self.ours_model.config.mask_token_id
        rows = [
            decode(self.reference_model, prompts[i : i + 1], **shape, mask_id=mask_id, threshold=MODES[mode].threshold)
            for i in range(prompts.shape[0])
        ]
        return torch.cat([x for x, _ in rows]), sum(nfe for _, nfe in rows)


def block_for(gen_length: int, block_length: int) -> int:
    """The largest block not longer than `block_length` that divides `gen_length` (both sides need whole blocks)."""
    return max(d for d in range(1, min(block_length, gen_length) + 1) if gen_length % d == 0)


def clock(device: torch.device) -> Callable[[], float]:
    if device.type != "cuda":
        return time.process_time

    def synchronized() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    return synchronized


def time_alternating(
    runs: dict[str, Callable[[], tuple[torch.Tensor, int]]], rounds: int, now: Callable[[], float]
) -> tuple[dict[str, float], dict[str, list[tuple[torch.Tensor, int]]]]:
    """Median seconds of each run and all its outputs; a warm-up run each, then `rounds` rounds, order flipped."""
    outputs: dict[str, list[tuple[torch.Tensor, int]]] = {name: [run()] for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(rounds):
        for name in list(runs) if round_ % 2 == 0 else list(reversed(runs)):
            start = now()
            outputs[name].append(runs[name]())
            times[name].append(now() - start)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


@dataclass(frozen=True)
class Comparison:
    """One mode at one length."""

    identical_batch1: bool
    identical_batched: bool
    seconds_ours: float
    seconds_reference: float
    nfe_ours: int
    nfe_reference: int


def compare(
    decoders: Decoders,
    mode: str,
    prompts: torch.Tensor,
    gen_length: int,
    block_length: int,
    rounds: int,
    now: Callable[[], float],
) -> Comparison:
    """Ids at batch 1 (every timed run) and at the batch of `prompts`; batch-1 times and passes."""
    first = prompts[:1]
    runs = {
        "ours": lambda: decoders.ours(mode, first, gen_length, block_length),
        "reference": lambda: decoders.reference(mode, first, gen_length, block_length),
    }
    seconds, outputs = time_alternating(runs, rounds, now)
    expected = outputs["reference"][0][0]
    identical_batch1 = all(torch.equal(ids, expected) for name in runs for ids, _ in outputs[name])
    identical_batched = identical_batch1
    if prompts.shape[0] > 1:
        batched, _ = decoders.ours(mode, prompts, gen_length, block_length)
        identical_batched = torch.equal(batched, decoders.reference(mode, prompts, gen_length, block_length)[0])
    return Comparison(
        identical_batch1=identical_batch1,
        identical_batched=identical_batched,
        seconds_ours=seconds["ours"],
        seconds_reference=seconds["reference"],
        nfe_ours=outputs["ours"][-1][1],
        nfe_reference=outputs["reference"][-1][1],
    )


def max_logit_diff(decoders: Decoders, prompts: torch.Tensor) -> float:
    with torch.no_grad():
        ours = decoders.ours_model(input_ids=prompts).logits
        reference = decoders.reference_model(prompts).logits
    return (ours - reference).abs().max().item()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast-dllm-dir", default=os.environ.get("FAST_DLLM_DIR"), help="default: $FAST_DLLM_DIR")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gen-lengths", type=int, nargs="+", default=[6, 64, 256])
    parser.add_argument("--block-length", type=int, default=32, help="at most; the largest divisor of each length")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-scale", type=float, default=64.0, help="output head multiplier (confident choices)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same for both sides")
    args = parser.parse_args()
    if not args.fast_dllm_dir:
        parser.error("needs a Fast-dLLM checkout: set FAST_DLLM_DIR or pass --fast-dllm-dir")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    fast_dllm = load_fast_dllm(args.fast_dllm_dir)
    ours = random_llada(args.vocab, args.d_model, args.layers, args.heads, args.head_scale, args.seed).to(device)
    decoders = Decoders(ours, reference_model(fast_dllm, ours), fast_dllm)
    prompts = random_prompts(args.batch, args.prompt_length, ours.config.mask_token_id, args.seed).to(device)
    diff = max_logit_diff(decoders, prompts)
    print(
        f"device={device} threads={args.threads} d_model={args.d_model} layers={args.layers} heads={args.heads} "
        f"vocab={args.vocab} head_scale={args.head_scale} prompt_length={args.prompt_length} batch={args.batch} "
        f"rounds={args.rounds}; max |logit difference| ours vs Fast-dLLM's model: {diff:.2e}"
    )
    print(
        f"{'mode':<15}{'tokens':>7}{'block':>6}{'ours s':>10}{'F-dLLM s':>10}{'speed':>7}{'NFE':>11}  identical b1/b{args.batch}"
    )
    results: dict[str, dict[int, Comparison]] = {mode: {} for mode in args.modes}
    for gen_length in args.gen_lengths:
        block = block_for(gen_length, args.block_length)
        for mode in args.modes:
            c = compare(decoders, mode, prompts, gen_length, block, args.rounds, clock(device))
            results[mode][gen_length] = c
            print(
                f"{mode:<15}{gen_length:>7}{block:>6}{c.seconds_ours:>10.4f}{c.seconds_reference:>10.4f}"
                f"{c.seconds_reference / c.seconds_ours:>6.2f}x{c.nfe_ours:>5}/{c.nfe_reference:<5}"
                f"  {c.identical_batch1}/{c.identical_batched}"
            )
    longest = max(args.gen_lengths)
    summary: dict[str, object] = {"max_logit_diff": diff}
    for mode, by_length in results.items():
        summary[f"ids_identical_{mode}"] = all(c.identical_batch1 and c.identical_batched for c in by_length.values())
        for gen_length, c in by_length.items():
            summary[f"speed_ratio_{mode}_{gen_length}"] = round(c.seconds_reference / c.seconds_ours, 4)
        summary[f"speed_ratio_{mode}"] = summary[f"speed_ratio_{mode}_{longest}"]
        summary[f"nfe_{mode}"] = by_length[longest].nfe_ours
        summary[f"nfe_fast_dllm_{mode}"] = by_length[longest].nfe_reference
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
