"""The new user's journey in a real napari window, from a cold start, with a GUI-thread heartbeat.

``journey_scenario.py`` runs in a fresh Python process (PyTorch not imported, no model loaded),
on the display of this test run (Xvfb under ``xvfb-run``): open the sample -> pick the template by
its thumbnail -> Fit & normalize (DCGMM) -> Segment -> paint, delete, merge and split a nucleus ->
autosave -> Fine-tune on the corrected pair -> re-segment with the new version -> export CSV and
GeoJSON -> whole-slide export. Every action is timed with a 20 ms heartbeat on the GUI thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]

SCENARIO = Path(__file__).with_name("journey_scenario.py")
#: The issue's aim: the GUI thread stalls at most this much longer than the same viewer idle (ms).
#: Not met where an action ends by adding a layer (bench/results/gui.md): on 2 quiet cores under
#: software OpenGL, DCGMM 112-263 ms, the cut-lines layer 88-370, slide segment 84-527, the first
#: Segment click 62-255 (two machines); napari alone takes 118-533 ms to add one layer there, up
#: to 809 with our docks open (bench/results/gui_floor*.json).
AIM_MS = 100
#: What the test asserts: no return of the multi-second freezes (6.3 s and 1.6 s before the
#: work moved to threads). napari alone took 809 ms to add a first Labels layer on a slow
#: 2-core software-GL machine (bench/results/gui_floor_docks.json), where slide segment took 458-527.
GUARD_MS = 1000
#: Actions whose stall the issue bounds (the edit keys' own work is napari redrawing the layer).
BOUNDED = (
    "open the Stain normalization dock",
    "torch warm-up (background)",
    "open the Segment nuclei dock",
    "open the Fine-tune dock",
    "pick template thumbnail",
    "fit & normalize (DCGMM)",
    "segment (first click)",
    "autosave",
    "fine-tune (1 epoch)",
    "segment (new version)",
    "export CSV + GeoJSON",
    "open the Whole slide dock",
    "slide segment",
    "slide export",
)


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    if not os.environ.get("DISPLAY"):
        pytest.fail("the journey needs a display: run the suite under xvfb-run")
    out = tmp_path_factory.mktemp("journey")
    env = {**os.environ, "NAPARI_HISTO_MODELS": str(out / "models")}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    shots = os.environ.get("NAPARI_HISTO_SCREENSHOTS")  # e.g. docs/, to refresh the README's
    cmd = [sys.executable, str(SCENARIO), str(out)] + (["--screenshots", shots] if shots else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    report_file = out / "journey.json"
    assert report_file.is_file(), proc.stderr[-4000:]
    report = json.loads(report_file.read_text())
    report["stderr"] = proc.stderr[-4000:]
    return report


def test_journey_completes(journey):
    assert journey["error"] is None, journey["error"] + journey["stderr"]
    assert journey["torch_at_start"] is False  # a cold start
    assert journey["steps"] == [
        "open sample",
        "pick template",
        "fit & normalize",
        "segment",
        "paint, delete, merge, split",
        "autosave",
        "fine-tune",
        "re-segment",
        "export",
        "slide export",
    ]


def _beat(journey: dict, action: str) -> dict:
    beats = {b["action"]: b for b in journey["beats"]}
    assert action in beats, f"{action} did not run: {journey['error']}"
    return beats[action]


@pytest.mark.parametrize("action", BOUNDED)
def test_gui_thread_never_stalls(journey, action):
    beat = _beat(journey, action)
    if beat["beyond_idle_ms"] >= AIM_MS:
        print(f"{action}: {beat['beyond_idle_ms']:.0f} ms beyond idle (aim {AIM_MS} ms)")
    assert beat["beyond_idle_ms"] < GUARD_MS, beat


#: Jobs long enough to see what drawing costs while they run (seconds, on 2 cores).
JOBS = (
    "fit & normalize (DCGMM)",
    "segment (first click)",
    "fine-tune (1 epoch)",
    "segment (new version)",
    "export CSV + GeoJSON",
)


@pytest.mark.parametrize("action", JOBS)
def test_jobs_keep_the_cpu(journey, action):
    """While a job runs nothing animates: under software OpenGL, napari's progress GIF had
    llvmpipe drawing on 1.1-1.3 of 2 cores through every job (bench/results/gui.md); now
    0.2-0.6, the rest being the result layers drawn once. 0 under hardware OpenGL."""
    beat = _beat(journey, action)
    assert beat["render_cores"] < 0.8, beat
