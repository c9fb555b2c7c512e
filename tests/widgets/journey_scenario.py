"""The new user's journey in a real napari window, with a GUI-thread heartbeat on every action.

Run in a fresh process (``test_journey.py`` starts it under the Xvfb display of the test run), so
every first click is a cold start: PyTorch and the models are not loaded yet. Writes
``journey.json`` (steps done, heartbeat per action) and screenshots into the output folder.

    python journey_scenario.py OUT_DIR [--screenshots DOCS_DIR]
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: The plugin docks the journey opens first, in this order.
DOCKS = ("Stain normalization", "Segment nuclei", "Fine-tune")
sys.path.insert(0, str(HERE))


def main(out: Path, shots: Path | None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"steps": [], "beats": [], "error": None, "torch_at_start": None}
    os.environ.setdefault("NAPARI_HISTO_MODELS", str(out / "models"))
    try:
        _journey(out, shots, report)
    except Exception:
        report["error"] = traceback.format_exc()
    stalls = getattr(report.pop("_hb", None), "stalls", [])
    report["stalls"] = [
        "\n".join(
            ln for ln in st.splitlines() if not ln.startswith("  thr") or "napari_histo" in ln
        )
        for st in stalls
    ]
    (out / "journey.json").write_text(json.dumps(report, indent=1))
    return 0 if report["error"] is None else 1


def _journey(out: Path, shots: Path | None, report: dict) -> None:
    import napari
    from heartbeat import Heartbeat

    report["torch_at_start"] = "torch" in sys.modules
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    hb = Heartbeat()
    report["_hb"] = hb
    beats = report["beats"]

    def step(name: str) -> None:
        report["steps"].append(name)

    def shot(name: str) -> None:
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(str(shots / f"journey_{name}.png"), canvas_only=False, flash=False)

    profiled = os.environ.get("JOURNEY_PROFILE")  # a beat's name: cProfile of the GUI thread

    def measure(name, action, done, idle_ms=None, timeout=900):
        hb.stalls.append(f"=== {name}")
        prof = None
        if name == profiled:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        beat = hb.measure(name, action, done, timeout=timeout, idle_ms=idle_ms)
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(out / "profile.pstats"))
        beats.append(beat.as_dict())
        return beat

    hb.idle(1.0)  # the window settles
    # 1. Open the sample tile and the stain template (napari's own sample-data path).
    viewer.open_sample("napari-histo", "he_tile")
    viewer.open_sample("napari-histo", "he_target")
    from napari_histo._sample_data import TARGET_LAYER, TILE_LAYER

    viewer.layers["ground-truth nuclei (MoNuSeg)"].visible = False
    step("open sample")
    docks = {}

    def open_dock(name):
        docks[name] = viewer.window.add_plugin_dock_widget("napari-histo", name)[1]

    # One menu click per dock, as a user opens them; each beat lasts until the dock's first
    # paint is done. Opening the first (it needs torch) starts importing torch in the background
    # a second later (warm_up_torch); the import's start holds the GIL for a moment: its own beat
    # waits for it, so that the stall is counted there and not in another beat's idle baseline.
    settled = hb.idle(1.0)
    for i, name in enumerate(DOCKS):
        # the first dock's idle window would catch the import starting: the settled viewer's
        # gap is its baseline
        baseline = settled if i == 0 else None
        measure(f"open the {name} dock", lambda n=name: open_dock(n), _after(0.3), baseline)
        if i == 0:
            measure("torch warm-up (background)", lambda: None, _torch_warm)
    stain, seg, ft = (docks[n] for n in DOCKS)
    seg.project_dir.value = str(out / "project")
    seg.device.value = "cpu"
    ft.device.value = "cpu"
    stain.device.value = "cpu"
    hb.idle(0.5)

    # 2. Pick the template by its thumbnail (the gallery decodes thumbnails in a worker).
    row = next(i for i, c in enumerate(stain.candidates) if c.name == TARGET_LAYER)
    measure(
        "pick template thumbnail",
        lambda: stain.gallery.setCurrentRow(row),
        lambda: not stain.thumbnails_loading,
    )
    assert stain.current_template().name == TARGET_LAYER
    stain.target.value = TILE_LAYER
    stain.method.value = "DCGMM (deep GMM)"
    step("pick template")

    # 3. Fit & normalize (DCGMM, shipped network: fits the template's statistics).
    measure(
        "fit & normalize (DCGMM)",
        lambda: stain.run_btn.native.click(),
        lambda: not stain.runner.running,
    )
    assert stain.normalizer is not None, stain.status.value
    assert f"{TILE_LAYER} normalized" in viewer.layers
    step("fit & normalize")
    viewer.layers[f"{TILE_LAYER} classes"].visible = False
    viewer.layers[TARGET_LAYER].visible = False
    shot("1_normalized")

    # 4. Segment nuclei (first click: torch and the model load in the worker).
    seg.image.value = f"{TILE_LAYER} normalized"
    image_name = seg.image.value
    measure(
        "segment (first click)", lambda: seg.run_btn.native.click(), lambda: not seg.runner.running
    )
    lab = seg.labels_layer
    assert lab is not None, seg.status.value
    n0 = len(np.unique(np.asarray(lab.data))) - 1
    assert n0 > 50, n0
    step("segment")
    shot("2_segmented")

    # 5. Correct: paint, delete, merge and split a nucleus (the widget's keys' actions).
    data = np.asarray(lab.data)
    free = next(
        (y, x)
        for y in range(20, 980, 10)
        for x in range(20, 980, 10)
        if not data[y - 8 : y + 8, x - 8 : x + 8].any()
    )
    new_id = seg.next_label()
    lab.brush_size = 9
    measure(
        "paint a nucleus",
        lambda: lab.paint(free, new_id),
        lambda: True,
    )
    ids, counts = np.unique(data[data > 0], return_counts=True)
    victim = int(ids[np.argmax(counts)])
    ya, xa = np.argwhere(data == victim)[0]
    measure("delete a nucleus", lambda: seg.delete_at((ya, xa)), lambda: True)
    assert not (np.asarray(lab.data) == victim).any()
    data = np.asarray(lab.data)
    a, b = _touching_pair(data)
    pa, pb = np.argwhere(data == a)[0], np.argwhere(data == b)[0]
    seg.merge_at(pa)
    measure("merge two nuclei", lambda: seg.merge_at(pb), lambda: True)
    assert not (np.asarray(lab.data) == b).any()
    data = np.asarray(lab.data)
    target, line = _split_line(data)
    # The first S press makes the 'cut lines' layer (and says to draw a line there); the user
    # then draws the line, which takes seconds, and presses S again.
    measure("make the cut-lines layer (first S)", lambda: seg.split_last_line(), _after(0.5))
    seg.cut_lines_layer().add_lines(np.array(line, float))
    hb.idle(0.5)
    before_split = len(np.unique(data)) - 1
    measure("split a nucleus", lambda: seg.split_last_line(), lambda: True)
    assert len(np.unique(np.asarray(lab.data))) - 1 > before_split
    step("paint, delete, merge, split")

    # 6. Autosave (debounced timer; decode/compare/write in a worker).
    measure(
        "autosave",
        lambda: seg.save_now(),
        lambda: seg._save_worker is None and seg.last_saved is not None,
    )
    assert seg.project().find(image_name) is not None
    step("autosave")
    shot("3_corrected")

    # 7. Fine-tune on the corrected pair (1 epoch on the CPU).
    ft.refresh()
    ft.epochs.value = 1
    measure("fine-tune (1 epoch)", lambda: ft.run_btn.native.click(), lambda: not ft.runner.running)
    assert ft.result is not None, ft.status.value
    new_ref = str(ft.result.model_dir)
    assert seg.model.value == new_ref, (seg.model.value, new_ref)
    step("fine-tune")
    shot("4_finetuned")

    # 8. Re-segment with the new version.
    measure(
        "segment (new version)", lambda: seg.run_btn.native.click(), lambda: not seg.runner.running
    )
    assert seg.labels_layer is not None and "nuclei found" in seg.status.value, seg.status.value
    step("re-segment")

    # 9. Export CSV and GeoJSON (measurements and outlines in a worker).
    csv, geojson = out / "nuclei.csv", out / "nuclei.geojson"
    measure(
        "export CSV + GeoJSON",
        lambda: seg.export(csv=csv, geojson=geojson),
        lambda: not seg.runner.running,
    )
    assert csv.is_file() and geojson.is_file(), seg.status.value
    n_csv = sum(1 for _ in csv.open()) - 1
    features = json.loads(geojson.read_text())["features"]
    assert n_csv == len(features) > 50, (n_csv, len(features))
    step("export")
    shot("5_exported")

    # 10. Whole slide: the tile as a one-block "slide"; export its nuclei (slide export).
    docks.clear()
    measure(
        "open the Whole slide dock",
        lambda: docks.update(
            slide=viewer.window.add_plugin_dock_widget("napari-histo", "Whole slide")[1]
        ),
        _after(0.5),  # until its first paint is done: a user reads the form before clicking
    )
    slide = docks["slide"]
    slide.slide.value = TILE_LAYER
    slide.device.value = "cpu"
    slide.out_dir.value = str(out / "slide")
    measure("slide segment", lambda: slide.run_btn.native.click(), lambda: not slide.runner.running)
    assert slide.zarr_path is not None, slide.status.value
    measure(
        "slide export",
        lambda: slide.export(out / "slide.geojson", out / "slide.csv"),
        lambda: not slide.runner.running,
    )
    assert slide.last_export and (out / "slide.csv").is_file(), slide.status.value
    step("slide export")
    viewer.close()


def _after(seconds: float):
    """A ``done`` condition: true ``seconds`` after it is first asked (once the action ran)."""
    first: list[float] = []

    def done() -> bool:
        first[:] = first or [time.perf_counter()]
        return time.perf_counter() - first[0] >= seconds

    return done


def _torch_warm() -> bool:
    """The warm-up import is done (at once where NAPARI_HISTO_NO_WARM_UP turns it off)."""
    import threading

    from napari_histo.widgets._common import NO_WARM_UP_ENV, WARM_UP_THREAD

    if os.environ.get(NO_WARM_UP_ENV):
        return True
    warming = any(t.name == WARM_UP_THREAD for t in threading.enumerate())
    return "torchvision" in sys.modules and not warming


def _touching_pair(data: np.ndarray) -> tuple[int, int]:
    """Two different nuclei that touch (or the two largest when none do)."""
    right = (data[:, :-1] > 0) & (data[:, 1:] > 0) & (data[:, :-1] != data[:, 1:])
    ys, xs = np.nonzero(right)
    if len(ys):
        return int(data[ys[0], xs[0]]), int(data[ys[0], xs[0] + 1])
    ids, counts = np.unique(data[data > 0], return_counts=True)
    big = ids[np.argsort(counts)[-2:]]
    return int(big[0]), int(big[1])


def _split_line(data: np.ndarray):
    """A nucleus and a horizontal line through its middle that meets only it and background."""
    ids, counts = np.unique(data[data > 0], return_counts=True)
    for lab in ids[np.argsort(counts)[::-1]]:
        ys, xs = np.nonzero(data == lab)
        cy = int(np.median(ys))
        x0, x1 = int(xs.min()) - 3, int(xs.max()) + 3
        if x0 < 0 or x1 >= data.shape[1]:
            continue
        values = set(np.unique(data[cy, x0 : x1 + 1]).tolist())
        if values == {0, int(lab)}:
            return int(lab), [[cy, x0], [cy, x1]]
    raise AssertionError("no nucleus to split")


if __name__ == "__main__":
    args = sys.argv[1:]
    shots = Path(args[args.index("--screenshots") + 1]) if "--screenshots" in args else None
    sys.exit(main(Path(args[0]), shots))
