"""napari's own floor: how long does napari itself stall the GUI thread to add one layer?

The GUI issue bounds every action of our widgets to 100 ms beyond idle. Segment, DCGMM's class
map and slide segment end by adding a Labels layer (the result must be editable), the first
split by adding a Shapes layer. This bench measures, in a bare napari viewer of the journey's size
(1500 x 950, one 1000 x 1000 RGB tile shown, no plugin code unless ``--docks``; each case starts
from that viewer, the layers it added removed), the same
heartbeat as the journey test around napari's own ``add_labels`` / ``add_image`` /
``add_shapes``: the floor under any plugin that shows such a result.

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/gui_floor.py --repeats 4 --json bench/results/gui_floor.json

``--docks`` opens our four docks first (their layer-list callbacks then run on every insert).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "widgets"))


def _tile() -> tuple[np.ndarray, np.ndarray]:
    """A 1000 x 1000 RGB tile and ~400 round 'nuclei' labels over it (derived, no data files)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    seeds = np.zeros((1000, 1000), np.int32)
    pts = rng.integers(10, 990, (400, 2))
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, 401)
    dist = ndi.distance_transform_edt(seeds == 0)
    _, (ir, ic) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    labels = np.where(dist < 9, seeds[ir, ic], 0).astype(np.int32)
    rgb = np.full((1000, 1000, 3), (235, 200, 225), np.uint8)
    rgb[labels > 0] = (90, 60, 150)
    return rgb, labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--docks", action="store_true", help="open napari-histo's four docks first")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import napari
    from heartbeat import Heartbeat
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    rgb, labels = _tile()
    viewer.add_image(rgb, name="tile", rgb=True)
    hb = Heartbeat()
    hb.idle(1.5)
    if args.docks:
        for dock in ("Stain normalization", "Segment nuclei", "Fine-tune", "Whole slide"):
            viewer.window.add_plugin_dock_widget("napari-histo", dock)
            hb.idle(1.0)

    def settled(after: float = 0.4):
        # done once the layer exists and the viewer had time to paint it
        t = [None]

        def done() -> bool:
            if t[0] is None:
                t[0] = time.perf_counter()
            return time.perf_counter() - t[0] > after

        return done

    def hidden_then_shown(add):
        state = {}

        def action():
            state["layer"] = add(visible=False)
            QTimer.singleShot(10, lambda: setattr(state["layer"], "visible", True))

        def done() -> bool:
            return "layer" in state and state["layer"].visible

        return action, done

    rows = []
    for rep in range(args.repeats):
        k = f"{rep}"
        cases = [
            ("nothing (heartbeat noise)", lambda: None, settled()),
            (
                "add_labels (visible)",
                lambda k=k: viewer.add_labels(labels, name=f"labels {k}", opacity=0.5),
                settled(),
            ),
            (
                "add_image RGB (visible)",
                lambda k=k: viewer.add_image(rgb, name=f"image {k}", rgb=True, opacity=0.5),
                settled(),
            ),
            (
                "add_image gray float (hidden)",
                lambda k=k: viewer.add_image(
                    labels / 400.0, name=f"gray {k}", visible=False, contrast_limits=(0, 1)
                ),
                settled(),
            ),
            (
                "add_shapes (empty, visible)",
                lambda k=k: viewer.add_shapes(name=f"shapes {k}", edge_color="yellow"),
                settled(),
            ),
        ]
        act, done = hidden_then_shown(
            lambda visible, k=k: viewer.add_labels(
                labels, name=f"labels2 {k}", opacity=0.5, visible=visible
            )
        )
        cases.append(("add_labels hidden, shown a turn later", act, done))
        for name, action, done in cases:
            beat = hb.measure(name, action, done)
            rows.append({"repeat": rep, **beat.as_dict()})
            print(
                f"{rep} {name:40s} gap {beat.max_gap_ms:6.1f} idle {beat.idle_max_gap_ms:6.1f} "
                f"beyond {beat.beyond_idle_ms:6.1f} ms",
                flush=True,
            )
            hb.idle(0.5)
            for layer in [lyr for lyr in viewer.layers if lyr.name != "tile"]:
                # every case starts from the viewer showing one tile. Shapes layers are hidden,
                # not removed: removing a drawn Shapes layer and then adding any layer crashes
                # napari 0.9.2 under Mesa llvmpipe (bench/napari_shapes_crash.py)
                if layer.__class__.__name__ == "Shapes":
                    layer.visible = False
                else:
                    viewer.layers.remove(layer)
                hb.idle(0.3)
    viewer.close()
    if args.json:
        info = {
            "napari": napari.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "docks": args.docks,
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
