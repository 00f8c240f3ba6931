"""Forward+backward speed and peak memory: native LLaDA vs transformers' bidirectional Llama of the same shape, and vs
LLaDA's own modeling code (the hub's `modeling_llada.py`) when a copy of it is at hand.

All models are built at random with identical dimensions (LLaDA's ``llama`` block is Llama without the causal mask),
run in one process on the same batches, and alternated every iteration (order flipped each round) after warm-up, so
drift on a shared machine hits them alike. Speed is tokens per second of a full forward+backward (cross-entropy on
every position), from the fastest iteration (as ``timeit`` advises: slower ones measure other processes); the
median is printed too. On CPU the clock is this process's CPU time and torch runs one thread by default
(``--threads``): on a machine shared with other jobs, wall time and multi-thread barriers mostly measure the
neighbours, while single-thread CPU time measures the work. On CUDA the clock is wall time after synchronising.

LLaDA's own code: set ``LLADA_MODELING_DIR`` to a folder holding the hub's ``modeling_llada.py`` and
``configuration_llada.py`` (from a LLaDA checkpoint on the hub; not part of this project). It is built from the
same config, given our model's weights (its logits must then equal ours) and timed beside the others; its config
gets ``use_cache = False``, an attribute transformers 5 no longer sets and the official code reads. Without the
variable that comparison is skipped, said so.

Memory is the peak of bytes allocated during one forward+backward beyond what was allocated before it (parameters and
inputs excluded), so it is dominated by activations and gradients; it is measured as bench/common.py describes
(forward and backward ops alike; scratch memory that kernels allocate internally is not seen, for either model).
Everything runs at a vocabulary of 32k (``--vocab``) and at a small one (``--small-vocab``).

The last line printed is a JSON object: ``speed_ratio`` and ``memory_ratio`` (ours / stock Llama at ``--vocab``),
the same per vocabulary (``speed_ratio_v{vocab}``, ``memory_ratio_v{vocab}``) and, with LLaDA's code,
``speed_ratio_official_v{vocab}``, ``memory_ratio_official_v{vocab}`` (ours / official) and
``max_logit_diff_official``.
Run: ``python bench/models.py`` (a few minutes on 2 CPU cores; ``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import peak_bytes
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from dlm.models import LLaDAConfig, LLaDAModelLM

LABELS = {
    "ours": "dlm LLaDAModelLM",
    "stock": "transformers Llama(is_causal=False)",
    "official": "LLaDA's modeling_llada.py",
}


def our_config(args: argparse.Namespace) -> LLaDAConfig:
    return LLaDAConfig(
        d_model=args.d_model,
        n_heads=args.heads,
        n_kv_heads=args.heads,
        n_layers=args.layers,
        mlp_hidden_size=args.mlp,
        vocab_size=args.vocab,
        embedding_size=args.vocab,
        max_sequence_length=max(args.seq_len, 64),
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        mask_token_id=None,
    )


def stock_llama(args: argparse.Namespace) -> LlamaForCausalLM:
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=args.vocab,
            hidden_size=args.d_model,
            intermediate_size=args.mlp,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.heads,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            is_causal=False,
        )
    )


def official_llada(folder: Path, config: LLaDAConfig, weights: dict) -> PreTrainedModel:
    """LLaDA's own model class from `folder` (imported as a package, so its relative imports work), built from the
    same config and given `weights`."""
    sys.path.insert(0, str(folder))  # copies that import `configuration_llada` absolutely
    spec = importlib.util.spec_from_file_location(
        "llada_official", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["llada_official"] = package
    configuration = importlib.import_module("llada_official.configuration_llada")
    modeling = importlib.import_module("llada_official.modeling_llada")
    values = {k: v for k, v in config.to_dict().items() if k != "model_type"}
    official_config = configuration.LLaDAConfig(**values)
    official_config.use_cache = False  # read by the official code, no longer a default attribute in transformers 5
    model = modeling.LLaDAModelLM(official_config, init_params=False)
    model.load_state_dict(weights)
    return model


def build_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, PreTrainedModel]:
    torch.manual_seed(0)
    config = our_config(args)
    models = {"ours": LLaDAModelLM(config), "stock": stock_llama(args)}
    folder = os.environ.get("LLADA_MODELING_DIR")
    if folder:
        models["official"] = official_llada(Path(folder).expanduser(), config, models["ours"].state_dict())
    return {name: model.to(device=device, dtype=dtype).train() for name, model in models.items()}


def train_step(model: PreTrainedModel, ids: torch.Tensor) -> None:
    logits = model(input_ids=ids).logits
    F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten()).backward()
    model.zero_grad(set_to_none=True)


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type != "cuda":
        start = time.process_time()
        step()
        return time.process_time() - start
    torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """The ratios at `args.vocab`, after printing each model's figures."""
    models = build_models(args, device, dtype)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device)
    steps = {name: (lambda model=model: train_step(model, ids)) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for i in range(args.warmup + args.iters):
        for name in order:
            elapsed = timed(steps[name], device)
            if i >= args.warmup:
                times[name].append(elapsed)
        order.reverse()
    peaks = {name: peak_bytes(step, str(device)) for name, step in steps.items()}
    speed = {name: args.batch * args.seq_len / min(values) for name, values in times.items()}
    params = sum(p.numel() for p in models["ours"].parameters())
    print(
        f"device={device} dtype={dtype} batch={args.batch} seq_len={args.seq_len} d_model={args.d_model} "
        f"layers={args.layers} heads={args.heads} mlp={args.mlp} vocab={args.vocab} params={params / 1e6:.2f}M "
        f"iters={args.iters} clock={'wall' if device.type == 'cuda' else f'process CPU, {args.threads} thread(s)'}"
    )
    print(f"{'model':<36}{'tokens/s':>10}{'best s/iter':>13}{'median s/iter':>15}{'peak step MiB':>15}")
    for name in steps:
        print(
            f"{LABELS[name]:<36}{speed[name]:>10.0f}{min(times[name]):>13.4f}{statistics.median(times[name]):>15.4f}"
            f"{peaks[name] / 2**20:>15.1f}"
        )
    v = args.vocab
    ratios = {
        f"speed_ratio_v{v}": round(speed["ours"] / speed["stock"], 4),
        f"memory_ratio_v{v}": round(peaks["ours"] / peaks["stock"], 4),
    }
    if "official" in models:
        with torch.no_grad():
            diff = (models["ours"](input_ids=ids).logits - models["official"](ids).logits).abs().max().item()
        ratios[f"speed_ratio_official_v{v}"] = round(speed["ours"] / speed["official"], 4)
        ratios[f"memory_ratio_official_v{v}"] = round(peaks["ours"] / peaks["official"], 4)
        ratios["max_logit_diff_official"] = diff
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mlp", type=int, default=704)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--small-vocab", type=int, default=512, help="the small vocabulary, beside --vocab")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs only)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if not os.environ.get("LLADA_MODELING_DIR"):
        print("LLaDA's own modeling code: skipped (set LLADA_MODELING_DIR to a folder with modeling_llada.py)")
    result: dict[str, float] = {}
    main_vocab = args.vocab
    for vocab in (main_vocab, args.small_vocab):
        args.vocab = vocab
        ratios = measure(args, device, dtype)
        worst = max(ratios.pop("max_logit_diff_official", 0.0), result.get("max_logit_diff_official", 0.0))
        result.update(ratios)
        if any(k.startswith("speed_ratio_official") for k in ratios):
            result["max_logit_diff_official"] = worst
    result["speed_ratio"] = result[f"speed_ratio_v{main_vocab}"]
    result["memory_ratio"] = result[f"memory_ratio_v{main_vocab}"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
