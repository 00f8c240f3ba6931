#!/usr/bin/env bash
# Test plugin: nothing to install beyond the project itself.
set -euo pipefail
