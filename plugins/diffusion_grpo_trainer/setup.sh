#!/usr/bin/env bash
# Run by the host inside this plugin's venv with the plugin folder as working directory: installs the project
# (dlm + plugin_sdk and the pinned stack) from the checkout named by $DLM_SOURCE, by .dlm_source, or two levels up.
set -euo pipefail
exec bash "$(cat .dlm_source 2>/dev/null || echo "${DLM_SOURCE:-../..}")/plugin_sdk/install_plugin.sh"
