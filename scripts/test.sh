#!/usr/bin/env bash
# Quick start, command 2: set up and run the whole test suite under a virtual display.
# Extra arguments go to pytest (e.g. -k stain, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
bash scripts/setup.sh
# Tests never touch the user's napari settings.
mkdir -p .napari_config
export NAPARI_CONFIG="$PWD/.napari_config/settings.yaml"
.venv/bin/ruff check src tests bench scripts
# -rs prints the reason of any skip; tests/conftest.py fails the run on any skip but "needs a CUDA GPU".
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -p no:xvfb -rs "$@"
