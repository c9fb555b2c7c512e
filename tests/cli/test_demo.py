"""`napari-histo demo --screenshot` renders the real window with the sample and widgets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_histo.cli import build_parser, main

pytestmark = pytest.mark.gui


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "demo" in sub.choices
    for name in sub.choices:
        with pytest.raises(SystemExit) as ex:
            main([name, "--help"])
        assert ex.value.code == 0
        assert "usage: napari-histo" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_screenshot(tmp_path):
    out = tmp_path / "demo.png"
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "napari_histo.cli", "demo", "--screenshot", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    shot = np.asarray(Image.open(out).convert("RGB"))
    assert shot.shape[0] >= 600 and shot.shape[1] >= 1000
    # The H&E sample is drawn in the middle of the canvas: pink/purple pixels (red and blue above
    # green) and tissue texture there; an empty (black) or unrendered canvas has neither.
    h, w = shot.shape[:2]
    middle = shot[int(h * 0.3) : int(h * 0.7), int(w * 0.3) : int(w * 0.6)].astype(int)
    r, g, b = (middle[..., i] for i in range(3))
    he = (r - g > 30) & (b - g > 20)
    assert he.mean() > 0.2
    assert middle.std() > 20
    # The command reports the file it wrote (which widgets are docked: the test below).
    assert proc.stdout.strip().splitlines()[-1] == f"screenshot written to {out}"


def test_demo_docks_every_widget_of_the_manifest(make_napari_viewer, monkeypatch):
    import napari
    import yaml
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget

    import napari_histo
    from napari_histo.cli.demo import build_demo_viewer

    # What should be docked, read from the manifest file itself: display name -> class.
    manifest = yaml.safe_load(
        (Path(napari_histo.__file__).parent / "napari.yaml").read_text(encoding="utf-8")
    )
    python_name = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    expected = {
        f"{w['display_name']} (napari-histo)": python_name[w["command"]]
        for w in manifest["contributions"]["widgets"]
    }
    assert len(expected) == 5
    # The demo's viewer, made by the fixture so that it is closed and checked afterwards.
    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))
    viewer = build_demo_viewer(show=False)
    docked = {
        name: f"{type(w).__module__}:{type(w).__qualname__}"
        for name, w in viewer.window.dock_widgets.items()
    }
    assert docked == expected
    # ... all in one group of tabs on the right of the canvas.
    qt_window = viewer.window._qt_window
    docks = {d.windowTitle(): d for d in qt_window.findChildren(QDockWidget)}
    for name in expected:
        dock = docks[name]
        assert qt_window.dockWidgetArea(dock) == Qt.DockWidgetArea.RightDockWidgetArea, name
        assert not dock.isFloating() and not dock.isHidden(), name
        tabs = {d.windowTitle() for d in qt_window.tabifiedDockWidgets(dock)}
        assert tabs == set(expected) - {name}, name
