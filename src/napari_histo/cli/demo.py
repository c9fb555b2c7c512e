"""``napari-histo demo``: napari with a bundled H&E sample and every napari-histo widget docked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

NAME = "demo"
HELP = "open napari with a bundled H&E sample and the plugin's widgets docked"
DESCRIPTION = (
    "Open napari with the bundled H&E tile, the stain template and every napari-histo dock widget. "
    "With --screenshot the window is drawn once, saved as a PNG and napari exits; on a machine "
    "without a screen this runs under a virtual display (xvfb-run) by itself."
)
ORDER = 10

XVFB_SCREEN = "-screen 0 1600x1000x24"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--screenshot", metavar="PNG", help="save a screenshot of the whole window and exit"
    )
    parser.add_argument(
        "--sample",
        default="he_tile",
        choices=("he_tile", "he_target", "ihc", "none"),
        help="which bundled sample to open first (default: he_tile)",
    )
    parser.add_argument(
        "--no-template", action="store_true", help="do not also open the stain template sample"
    )


def _has_display() -> bool:
    return sys.platform != "linux" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def run(args) -> int:
    from ..core.errors import HistoError

    if not _has_display():
        if not args.screenshot:
            raise HistoError(
                "no screen found (DISPLAY is not set); use --screenshot PNG to render off-screen"
            )
        if os.environ.get("_NAPARI_HISTO_IN_XVFB"):
            raise HistoError(
                "started under xvfb-run but still no DISPLAY; is Xvfb installed correctly?"
            )
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            raise HistoError(
                "no screen and no xvfb-run; install it (apt-get install xvfb xauth) or run with a display"
            )
        env = dict(os.environ, _NAPARI_HISTO_IN_XVFB="1")
        cmd = [
            xvfb,
            "-a",
            "-s",
            XVFB_SCREEN,
            sys.executable,
            "-m",
            "napari_histo.cli",
            *sys.argv[1:],
        ]
        if not sys.argv[1:] or sys.argv[1] != "demo":
            cmd = [xvfb, "-a", "-s", XVFB_SCREEN, sys.executable, "-m", "napari_histo.cli", "demo"]
            cmd += ["--screenshot", str(args.screenshot), "--sample", args.sample]
            cmd += ["--no-template"] if args.no_template else []
        return subprocess.call(cmd, env=env)

    viewer = build_demo_viewer(
        sample=args.sample, template=not args.no_template, show=not args.screenshot
    )
    import napari

    if args.screenshot:
        out = save_window_screenshot(viewer, args.screenshot)
        viewer.close()
        print(f"screenshot written to {out}")
        return 0
    napari.run()
    return 0


def build_demo_viewer(sample: str = "he_tile", template: bool = True, show: bool = True):
    """A napari viewer with the sample(s) open and every widget of our manifest docked."""
    import napari

    from .. import __name__ as pkg
    from .._sample_data import TARGET_LAYER, TILE_LAYER

    viewer = napari.Viewer(title="napari-histo demo", show=show)
    plugin = pkg.replace("_", "-")
    if template and sample != "he_target":
        viewer.open_sample(plugin, "he_target")
    if sample != "none":
        viewer.open_sample(plugin, sample)
    widgets, docks = {}, []
    for display_name in widget_names():
        dock, widgets[display_name] = viewer.window.add_plugin_dock_widget(
            plugin, display_name, tabify=True
        )
        docks.append(dock)
    if docks:
        docks[0].raise_()  # the workflow starts with the first tab (stain normalization)
    stain = widgets.get("Stain normalization")
    if stain is not None and TARGET_LAYER in viewer.layers:
        # Ready to go: the bundled template is picked, the tile is the image to normalize.
        stain.select_template(TARGET_LAYER)
        if TILE_LAYER in viewer.layers:
            stain.target.value = TILE_LAYER
    viewer.reset_view()
    return viewer


def widget_names() -> list[str]:
    """Display names of the dock widgets in the napari-histo manifest, in manifest order."""
    from npe2 import PluginManager

    pm = PluginManager.instance()
    manifest = pm.get_manifest("napari-histo")
    return [w.display_name for w in (manifest.contributions.widgets or [])]


def save_window_screenshot(viewer, path: str | os.PathLike) -> Path:
    """Draw the window (widgets included) and save it as PNG; return the path."""
    from qtpy.QtWidgets import QApplication

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.window.show()
    viewer.window.resize(1600, 1000)
    for _ in range(30):
        QApplication.processEvents()
    viewer.window.screenshot(str(path), canvas_only=False, flash=False)
    return path
