#!/usr/bin/env bash
# Installs this project into the active virtual environment (a plugin's venv under the host).
set -euo pipefail
source_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
echo "[plugin setup] installing dlm-plugins from $source_dir into $(python -c 'import sys; print(sys.prefix)')"
python -m pip install --quiet "$source_dir" || { echo "[plugin setup] ERROR: pip install failed" >&2; exit 1; }
python -c "import dlm, plugin_sdk" || { echo "[plugin setup] ERROR: the installed package does not import" >&2; exit 1; }
echo "[plugin setup] done"
