"""The manifest napari reads: valid, every python_name importable, start-up stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _manifest() -> dict:
    return yaml.safe_load((ROOT / "napari.yaml").read_text())


def test_npe2_validate_passes():
    exe = Path(sys.executable).parent / "npe2"
    out = subprocess.run([str(exe), "validate", "napari-histo"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


def test_installed_manifest_is_the_root_file():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-histo")
    assert mf.display_name == _manifest()["display_name"]
    ids = {c.id for c in mf.contributions.commands}
    assert ids == {c["id"] for c in _manifest()["contributions"]["commands"]}


@pytest.mark.parametrize("cmd", _manifest()["contributions"]["commands"], ids=lambda c: c["id"])
def test_every_python_name_imports(cmd):
    module, _, attr = cmd["python_name"].partition(":")
    obj = getattr(importlib.import_module(module), attr)
    assert callable(obj)


def test_import_and_manifest_do_not_import_torch():
    code = (
        "import sys, napari_histo, napari_histo._reader, napari_histo._sample_data, napari_histo.cli;"
        "from npe2 import PluginManager; pm = PluginManager.instance(); pm.discover();"
        "mf = pm.get_manifest('napari-histo');"
        "napari_histo.cli.build_parser();"
        "import importlib;"
        "[importlib.import_module(c.python_name.split(':')[0]) for c in mf.contributions.commands];"
        "heavy = [m for m in ('torch', 'torchvision', 'qtpy', 'PyQt6') if m in sys.modules];"
        "print(heavy); sys.exit(1 if 'torch' in heavy else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, (
        f"heavy modules imported at start-up: {out.stdout} {out.stderr[-2000:]}"
    )


@pytest.mark.slow
def test_wheel_carries_manifest_and_resources(tmp_path):
    pytest.importorskip("hatchling")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = next(tmp_path.glob("napari_histo-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_histo/napari.yaml" in names
    assert (
        zipfile.ZipFile(wheel).read("napari_histo/napari.yaml")
        == (ROOT / "napari.yaml").read_bytes()
    )
    assert "napari_histo/resources/samples/he_tiatoolbox_target.png" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "napari_histo:napari.yaml" in zipfile.ZipFile(wheel).read(entry).decode()
