#!/usr/bin/env bash
# One-command set-up: creates .venv with the pinned stack and this project (editable), then optionally runs
# something in it.
#
#   ./setup.sh            set up (or check) the environment
#   ./setup.sh demo [...] set up if needed, then run the offline end-to-end demo (python -m demo ...)
#   ./setup.sh test [...] set up if needed, then run the test suite (extra arguments go to pytest)
#
# Idempotent: a second run only checks that the installed stack still matches pyproject.toml.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.dlm-installed"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

find_python() {
    for candidate in "${PYTHON:-}" python3.11 python3 python; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else 1)' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

setup_env() {
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
        && "$VENV/bin/python" -c 'import torch, transformers, dlm, plugin_sdk' 2>/dev/null; then
        say "environment up to date ($VENV)"
        return 0
    fi
    local py
    py=$(find_python) || die "Python 3.11 or 3.12 is required (set PYTHON=/path/to/python3.11)."
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtual environment $VENV with $($py --version)"
        "$py" -m venv "$VENV" || die "could not create $VENV (is the venv module installed? apt-get install python3-venv)"
    fi
    say "upgrading pip"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip || die "pip upgrade failed (is a package index reachable?)"
    say "installing the pinned stack and this project (editable); torch 2.13.0 is a large download the first time"
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]" \
        || die "pip install failed; see the messages above (network, disk space, or an unsupported platform)"
    "$VENV/bin/python" -c 'import torch, transformers, peft, accelerate, datasets, dlm, plugin_sdk' \
        || die "the installed stack does not import; see the error above"
    echo "$want" > "$STAMP"
    say "ready: $("$VENV/bin/python" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}, cuda available: {torch.cuda.is_available()}")')"
}

action="${1:-setup}"
[ $# -gt 0 ] && shift
case "$action" in
    setup) setup_env ;;
    demo)
        setup_env
        # Everything the demo needs is built locally: keep the hubs and W&B from being tried at all.
        export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
        say "running the demo"
        exec "$VENV/bin/python" -m demo "$@"
        ;;
    test)
        setup_env
        export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
        say "running the test suite"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *) die "unknown action '$action' (use: ./setup.sh [setup|demo|test])" ;;
esac
