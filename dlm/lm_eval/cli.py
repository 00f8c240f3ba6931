"""lm-eval's own command line with `dlm_diffusion` registered (`python -m dlm.lm_eval_cli`, `dlm-lm-eval`)."""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import dlm.lm_eval.model  # noqa: F401  (registers dlm_diffusion with lm-eval)
from dlm.lm_eval.errors import LmEvalError
from dlm.lm_eval.tasks import looks_like_path, refuse_task_code


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
    local = [t for t in _option_values(args, "--tasks") if looks_like_path(t) or Path(t).exists()]
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
