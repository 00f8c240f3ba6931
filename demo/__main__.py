"""Command line: `python -m demo [--workspace DIR] [--size full|small] [--seed N] [--block-diffusion] [--rl] [--verbose]`."""

from __future__ import annotations

import argparse
import sys

from demo.run import run_demo
from plugin_sdk.errors import PluginError
from plugin_sdk.workspace import Workspace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Train, align and evaluate a tiny diffusion LM on a generated task, end to end, offline. Runs "
        "every stage as a job of the plugins and writes results.json, a chart and an HTML report into "
        "<workspace>/demo. Exit code 1 when a learning check fails.",
    )
    parser.add_argument("--workspace", help="local workspace folder (default: $DLM_WORKSPACE or ./workspace)")
    parser.add_argument("--size", choices=("full", "small"), default="full", help="full (default) or small (faster)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated task (default: 0)")
    parser.add_argument(
        "--block-diffusion",
        action="store_true",
        help="also SFT a block-diffusion model (tiny-bd3lm, blocks of 4) with the same data and budget, and "
        "evaluate it beside the others",
    )
    parser.add_argument(
        "--rl",
        action="store_true",
        help="also train an under-trained SFT of tiny-llada further with GRPO (reward: the exact answer) and "
        "evaluate both",
    )
    parser.add_argument("--verbose", action="store_true", help="show every job's log lines")
    args = parser.parse_args(argv)
    try:
        outcome = run_demo(
            Workspace(args.workspace),
            args.size,
            seed=args.seed,
            verbose=args.verbose,
            block_diffusion=args.block_diffusion,
            rl_stage=args.rl,
        )
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if all(check["passed"] for check in outcome["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
