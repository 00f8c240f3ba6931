"""What the training-step benchmarks share: peak tensor memory of a step, alternating timed runs, a random LLaDA.

Peak memory of a step is the peak of live tensor bytes while it runs above what was live before it (activations,
logits, gradients). On CUDA it is `torch.cuda.max_memory_allocated`; on CPU, which has no allocator statistics, a
`TorchDispatchMode` adds the size of every tensor storage that an operator creates and subtracts it when the storage
is freed (a weakref finalizer), so it sees every tensor but not scratch memory inside one kernel. Measure memory in a
pass of its own: the mode would distort timings.
"""

from __future__ import annotations

import argparse
import time
import weakref
from collections.abc import Callable, Mapping, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from dlm.models import LLaDAConfig, LLaDAModelLM

Step = Callable[..., torch.Tensor]  # one training step on a batch's inputs, returning its (detached) loss


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created while active and still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage not in self._seen:
                    self._seen[storage] = True
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_bytes(run: Callable[[], object], device: str) -> int:
    """Peak bytes of the tensors `run()` allocates, above those allocated before it."""
    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated() - before
    with LiveTensorBytes() as tracker:
        run()
    return tracker.peak


def peak_step_bytes(model: torch.nn.Module, step: Step, inputs: tuple, device: str) -> int:
    """`peak_bytes` of one training step, starting without gradients."""
    model.zero_grad(set_to_none=True)
    return peak_bytes(lambda: step(*inputs), device)


def run_timed(model: torch.nn.Module, step: Step, inputs: tuple, device: str) -> tuple[float, torch.Tensor]:
    """(wall seconds, loss) of one training step, starting without gradients."""
    model.zero_grad(set_to_none=True)
    synchronize(device)
    start = time.perf_counter()
    loss = step(*inputs)
    synchronize(device)
    return time.perf_counter() - start, loss


def time_alternating(
    model: torch.nn.Module, steps: Mapping[str, Step], batches: Sequence[tuple], iters: int, device: str
) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Each step once on the first batch (warm-up), then `iters` rounds over the batches in turn, every round
    running all steps, in reverse order every other round so that drift hits all alike.
    Returns (seconds per step name, the losses of each round by step name)."""
    for step in steps.values():
        run_timed(model, step, batches[0], device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    losses: list[dict[str, float]] = []
    for i in range(iters):
        inputs = batches[i % len(batches)]
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        round_losses = {}
        for name in order:
            seconds, loss = run_timed(model, steps[name], inputs, device)
            times[name].append(seconds)
            round_losses[name] = loss.item()
        losses.append(round_losses)
    return times, losses


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """`--threads`: torch intra-op threads on the CPU, the same for both sides of a comparison."""
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for both sides (default 1: tiny one-sequence forwards slow down several-fold "
        "with 2 threads on a busy 2-core machine, which would flatter the batched side)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `random_llada` reads (`--d-model` None: the caller's default for the device)."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--d-model", type=int, default=None, help="default: 128 on CPU, 1024 on CUDA")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def random_llada(args: argparse.Namespace, max_sequence_length: int, **token_ids: int) -> LLaDAModelLM:
    """A LLaDA with random weights (seed `args.seed`) of `args.d_model` (64-dimensional heads, MLP twice as wide),
    `args.layers` and a vocabulary of `args.vocab`, on `args.device`."""
    torch.manual_seed(args.seed)
    config = LLaDAConfig(
        d_model=args.d_model,
        n_heads=args.d_model // 64,
        n_layers=args.layers,
        mlp_hidden_size=args.d_model * 2,
        vocab_size=args.vocab,
        embedding_size=args.vocab,
        max_sequence_length=max_sequence_length,
        **token_ids,
    )
    return LLaDAModelLM(config).to(args.device)
