"""`napari-histo demo --screenshot` renders the real window with the sample and widgets."""

from __future__ import annotations

import os
import subprocess
import sys

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
    # Every dock widget of the manifest is docked (tabified on the right of the canvas).
    assert proc.stdout.count("screenshot written") == 1
