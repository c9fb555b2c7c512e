#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent and quick when done.
# Torch comes first, pinned: torch==2.14.1 torchvision==0.29.1 lie on this machine's disk for
# Python 3.11; an unpinned torch would drag in another multi-GB build.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
EXTRAS=${NAPARI_HISTO_EXTRAS:-testing,qt}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.napari-histo-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)-$EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing torch, then napari-histo[$EXTRAS] (first time: several minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi
# An editable install leaves our modules uncompiled (a wheel's install compiles them), and where
# PYTHONDONTWRITEBYTECODE is set every process compiles them again: compile them now, as pip
# would (the four widget modules: 25 ms of compiling at a dock's first opening, 4 ms with the
# bytecode). Quick when nothing changed.
"$VENV/bin/python" -m compileall -q src/napari_histo >/dev/null
