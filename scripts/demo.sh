#!/usr/bin/env bash
# Quick start, command 1: set up and open napari with an H&E sample and the plugin's widgets.
# Without a screen: bash scripts/demo.sh --screenshot demo.png (renders under Xvfb, writes the PNG, exits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && ! command -v xvfb-run >/dev/null 2>&1; then
  bash scripts/system_deps.sh
fi
exec .venv/bin/napari-histo demo "$@"
