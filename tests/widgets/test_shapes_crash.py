"""napari 0.9 under software OpenGL segfaults when a drawn Shapes layer is removed and a layer is
added next (bench/napari_shapes_crash.py). The 'cut lines' layer must not take napari down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui]

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    """bench/napari_shapes_crash.py in its own process (a segfault would end the test run)."""
    env = {**os.environ, "NAPARI_HISTO_NO_WARM_UP": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(ROOT / "bench" / "napari_shapes_crash.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_removing_the_cut_lines_layer_does_not_crash_napari():
    if not os.environ.get("DISPLAY"):
        pytest.fail("needs a display: run the suite under xvfb-run")
    bare = _run()
    ours = _run("--plugin")
    # where bare napari crashes (rc -11), this shows that the guard is what saves ours
    print(f"bare napari: rc {bare.returncode}; with the guard: rc {ours.returncode}")
    assert ours.returncode == 0 and "survived" in ours.stdout, ours.stderr[-3000:]
