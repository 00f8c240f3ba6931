"""Start the diffusion chat: `python -m interactive.diffusion_chat --model tiny-llada`, or as the interactive
task runs it, `python diffusion_chat/main.py` with MODEL_NAME (and ADAPTER, PORT) in the environment. Prints
"Running on local URL: http://...", the line the task's gallery entry reads the URL from."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if not __package__:  # run as a script (the task's `run`): import this folder as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = Path(__file__).resolve().parent.name

from .engine import ChatModel  # noqa: E402  (after the script-mode path above)
from .server import ChatServer  # noqa: E402


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="diffusion_chat", description="A web chat that shows a diffusion LM's answer being denoised."
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("MODEL_NAME") or "tiny-llada",
        help="a tiny preset (tiny-llada, tiny-dream, ...), a model folder, a hub id or an adapter folder (MODEL_NAME)",
    )
    parser.add_argument(
        "--adapter", default=os.environ.get("ADAPTER") or None, help="a LoRA adapter folder to apply (ADAPTER)"
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("HOST") or "127.0.0.1",
        help="the address to serve on (HOST); 0.0.0.0 serves every interface, which anyone on the network can reach",
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT") or 7860), help="0 picks a free port (PORT)"
    )
    parser.add_argument("--workspace", default=None, help="where tiny presets are built (default: the usual one)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    print(f"loading {args.model}" + (f" with adapter {args.adapter}" if args.adapter else ""), flush=True)
    chat = ChatModel.load(args.model, args.adapter, args.workspace)
    server = ChatServer((args.host, args.port), chat, args.verbose)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    print(f"Running on local URL: http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
