"""Pre-training benchmark: our corpus pipeline and diffusion training step against a straightforward Trainer loop.

Ours: the corpus text tokenized once into a token file (`dlm.corpus.prepare_corpus`), windows read from it, trained
with `dlm.trainers.sft_trainer.run_sft` (masked-diffusion loss with logits at masked positions only). Straightforward: the whole corpus
tokenized into an in-memory list of token-id lists, `transformers.Trainer` with a loss on the full logits [B, L, V].
Both train the same random `--size` LLaDA (the size presets' shapes) with a `--vocab` word-level tokenizer, on the
same batch shape, on the CPU, each run in a process of its own so that peak resident memory is its own.

Tokens per second: batch x length / the fastest of the timed steps (the time between two optimizer step ends), the
better of a side's two runs: on a machine shared with other work, the least disturbed step is the best estimate of
the cost of a step, and the runs of the two sides cannot be interleaved. Peak memory: the process's peak RSS at a corpus of `--tokens-small` and of `--tokens-large` tokens;
the growth ratio is large / small (ours should stay near 1: memory does not grow with the corpus).

The last line printed is a JSON object: throughput_ratio (ours / straightforward), memory_growth_ratio (ours) and
baseline_memory_growth_ratio (straightforward).

    python bench/pretrain.py                                    # small preset, 1M and 50M tokens: minutes on 2 cores
    python bench/pretrain.py --tokens-large 10000000 --steps 4  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EPSILON = 1e-3
SPECIALS = ["<|endoftext|>", "<|mdm_mask|>", "<|startoftext|>", "<unk>"]


def word_tokenizer(vocab: int):
    """A word-level tokenizer of `vocab` ids (words `w0`, `w1`, ...; specials first): tokenizes at any corpus size
    in seconds, so the benchmark measures training, not BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + [f"w{i}" for i in range(vocab - len(SPECIALS))]
    model = models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        mask_token="<|mdm_mask|>",
        bos_token="<|startoftext|>",
        unk_token="<unk>",
    )


def write_corpus(path: Path, tokens: int, vocab: int, seed: int) -> Path:
    """Documents of 50-500 Zipf-distributed words, separated by blank lines, `tokens` words in all."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab - len(SPECIALS))])
    written = 0
    with open(path.with_suffix(".partial"), "w") as handle:
        while written < tokens:
            n = min(int(rng.integers(50, 500)), tokens - written)
            ids = np.minimum(rng.zipf(1.2, n) - 1, len(words) - 1)
            handle.write(" ".join(words[ids]) + "\n\n")
            written += n
    path.with_suffix(".partial").rename(path)
    return path


def build_model(folder: Path, size: str, vocab: int) -> Path:
    from dlm.presets.sizes import ensure_sized_preset

    return ensure_sized_preset(f"{size}-llada", folder, tokenizer=word_tokenizer(vocab), log=lambda _: None)


class StepClock:
    """Times between consecutive optimizer step ends."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def tick(self) -> None:
        self.ends.append(time.perf_counter())

    def step_seconds(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.ends[warmup:], self.ends[warmup + 1 :], strict=False)]


def run_ours(args: argparse.Namespace) -> StepClock:
    from transformers import AutoTokenizer

    from dlm.corpus import prepare_corpus
    from dlm.presets.bpe import tokenizer_fingerprint
    from dlm.trainers.sft_config import SFTConfig
    from dlm.trainers.sft_trainer import run_sft

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prepared = prepare_corpus(
        args.corpus,
        tokenizer,
        Path(args.workdir) / "cache",
        tokenizer_id=tokenizer_fingerprint(tokenizer),
        eos_id=tokenizer.eos_token_id,
        log=lambda _: None,
    )
    train, _ = prepared.windows(args.length)
    clock = StepClock()

    class Reporter:
        is_main_process = True

        def report_progress(self, percent: float) -> None:
            clock.tick()

        def stop_requested(self) -> bool:
            return False

        def log(self, message: str) -> None: ...

        def log_metrics(self, metrics, step: int) -> None: ...

        def log_text(self, tag: str, text: str, step: int) -> None: ...

        def report_status(self, phase: str, step: int | None = None, max_steps: int | None = None) -> None: ...

    config = SFTConfig(
        model_name=str(args.model),
        output_dir=str(Path(args.workdir) / f"ours_{os.getpid()}"),
        train_mode="pretrain",
        lora=False,
        batch_size=args.batch,
        max_length=args.length,
        num_train_epochs=0,
        train_steps=args.warmup + args.steps + 1,
        learning_rate=3e-4,
        warmup_ratio=0.0,
        logging_steps=1000,
        save_steps=100000,
        random_length_ratio=0.0,
        train_device="cpu",
        dtype="float32",
    )
    run_sft(config, train, None, Reporter())
    return clock


def run_baseline(args: argparse.Namespace) -> StepClock:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    import dlm.models  # noqa: F401  (registers LLaDA)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    mask_id = tokenizer.mask_token_id
    stream: list[int] = []
    with open(args.corpus) as handle:  # the usual recipe: tokenize everything, join with EOS, cut into blocks
        for document in handle.read().split("\n\n"):
            if document.strip():
                stream.extend(tokenizer(document, add_special_tokens=False)["input_ids"])
                stream.append(tokenizer.eos_token_id)
    rows = [{"input_ids": stream[i : i + args.length]} for i in range(0, len(stream) - args.length + 1, args.length)]

    class FullLogits(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids = inputs["input_ids"]
            t = EPSILON + (1 - EPSILON) * torch.rand(ids.shape[0], 1)
            masked = torch.rand(ids.shape) < t
            logits = model(input_ids=ids.masked_fill(masked, mask_id)).logits
            nll = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
            return (nll * masked / t).sum() / ids.numel()

    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            clock.tick()

    arguments = TrainingArguments(
        output_dir=str(Path(args.workdir) / f"baseline_{os.getpid()}"),
        per_device_train_batch_size=args.batch,
        max_steps=args.warmup + args.steps + 1,
        learning_rate=3e-4,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32)
    trainer = FullLogits(
        model=model,
        args=arguments,
        train_dataset=rows,
        data_collator=lambda batch: {"input_ids": torch.tensor([r["input_ids"] for r in batch])},
        callbacks=[Clock()],
    )
    trainer.train()
    return clock


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    clock = (run_ours if args.worker == "ours" else run_baseline)(args)
    seconds = clock.step_seconds(args.warmup)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tokens_per_sec": args.batch * args.length / min(seconds), "peak_rss_mib": peak_kib / 1024}))


def spawn(args: argparse.Namespace, side: str, corpus: Path, model: Path) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--corpus", str(corpus), "--model", str(model)]
    for name in ("batch", "length", "steps", "warmup", "threads", "workdir"):
        command += [f"--{name}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if done.returncode != 0:
        raise SystemExit(f"{side} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", help="a size preset: small, medium, large, xl")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--tokens-small", type=int, default=1_000_000)
    parser.add_argument("--tokens-large", type=int, default=50_000_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same on both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where corpora, token files and the model go (default: temp)")
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="dlm-bench-pretrain-") as temporary:
        args.workdir = args.workdir or temporary
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        model = build_model(work, args.size, args.vocab)
        corpora = {
            n: write_corpus(work / f"corpus_{n}.txt", n, args.vocab, args.seed)
            for n in (args.tokens_small, args.tokens_large)
        }
        print(
            f"size={args.size} vocab={args.vocab} batch={args.batch} length={args.length} steps={args.steps}",
            flush=True,
        )
        results = {}
        for side in ("ours", "straightforward"):
            for n, corpus in corpora.items():
                results[side, n] = spawn(args, "ours" if side == "ours" else "baseline", corpus, model)
                r = results[side, n]
                print(
                    f"{side:>16} {n:>11,} tokens: {r['tokens_per_sec']:9.0f} tokens/s  peak RSS {r['peak_rss_mib']:8.0f} MiB",
                    flush=True,
                )
    small, large = args.tokens_small, args.tokens_large

    def best(side: str) -> float:
        return max(results[side, n]["tokens_per_sec"] for n in (small, large))

    result = {
        "throughput_ratio": round(best("ours") / best("straightforward"), 3),
        "memory_growth_ratio": round(
            results["ours", large]["peak_rss_mib"] / results["ours", small]["peak_rss_mib"], 3
        ),
        "baseline_memory_growth_ratio": round(
            results["straightforward", large]["peak_rss_mib"] / results["straightforward", small]["peak_rss_mib"], 3
        ),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
