"""Forward+backward speed and peak memory: native LLaDA vs transformers' bidirectional Llama of the same shape.

Both models are built at random with identical dimensions (LLaDA's ``llama`` block is Llama without the causal mask),
run in one process on the same batches, and alternated every iteration (order flipped each round) after warm-up, so
drift on a shared machine hits both alike. Speed is tokens per second of a full forward+backward (cross-entropy on
every position), from the fastest iteration (as ``timeit`` advises: slower ones measure other processes); the
median is printed too. On CPU the clock is this process's CPU time and torch runs one thread by default
(``--threads``): on a machine shared with other jobs, wall time and multi-thread barriers mostly measure the
neighbours, while single-thread CPU time measures the work. On CUDA the clock is wall time after synchronising.

Memory is the peak of bytes allocated during one forward+backward beyond what was allocated before it (parameters and
inputs excluded), so it is dominated by activations and gradients; it is measured as bench/common.py describes
(forward and backward ops alike; scratch memory that kernels allocate internally is not seen, for either model).

The last line printed is ``{"speed_ratio": ours / stock, "memory_ratio": ours / stock}``.
Run: ``python bench/models.py`` (about half a minute on 2 CPU cores; ``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import peak_bytes
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from dlm.models import LLaDAConfig, LLaDAModelLM


def build_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, PreTrainedModel]:
    torch.manual_seed(0)
    ours = LLaDAModelLM(
        LLaDAConfig(
            d_model=args.d_model,
            n_heads=args.heads,
            n_kv_heads=args.heads,
            n_layers=args.layers,
            mlp_hidden_size=args.mlp,
            vocab_size=args.vocab,
            embedding_size=args.vocab,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            mask_token_id=None,
        )
    )
    stock = LlamaForCausalLM(
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
    return {name: model.to(device=device, dtype=dtype).train() for name, model in (("ours", ours), ("stock", stock))}


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
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs only)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
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

    tokens = args.batch * args.seq_len
    speed = {name: tokens / min(values) for name, values in times.items()}
    params = sum(p.numel() for p in models["ours"].parameters())
    print(
        f"device={device} dtype={dtype} batch={args.batch} seq_len={args.seq_len} d_model={args.d_model} "
        f"layers={args.layers} heads={args.heads} mlp={args.mlp} vocab={args.vocab} params={params / 1e6:.2f}M "
        f"iters={args.iters} clock={'wall' if device.type == 'cuda' else f'process CPU, {args.threads} thread(s)'}"
    )
    print(f"{'model':<36}{'tokens/s':>10}{'best s/iter':>13}{'median s/iter':>15}{'peak step MiB':>15}")
    labels = {"ours": "dlm LLaDAModelLM", "stock": "transformers Llama(is_causal=False)"}
    for name in steps:
        print(
            f"{labels[name]:<36}{speed[name]:>10.0f}{min(times[name]):>13.4f}{statistics.median(times[name]):>15.4f}"
            f"{peaks[name] / 2**20:>15.1f}"
        )
    print(
        json.dumps(
            {
                "speed_ratio": round(speed["ours"] / speed["stock"], 4),
                "memory_ratio": round(peaks["ours"] / peaks["stock"], 4),
            }
        )
    )


if __name__ == "__main__":
    main()
