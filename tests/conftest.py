"""Shared test setup: isolated napari settings, the committed test data, GPU skipping.

Everything the suite reads lives in this repository (tests/data/, resources/); nothing outside it
is needed. The only accepted skip is "needs a CUDA GPU": any other skip fails the run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Before napari is imported anywhere: tests never read or write the user's napari settings.
os.environ["NAPARI_CONFIG"] = str(ROOT / ".napari_config" / "settings.yaml")

TEST_DATA = ROOT / "tests" / "data"
SAMPLES = ROOT / "resources" / "samples"
GPU_SKIP = "needs a CUDA GPU"
NON_ASCII_NAME = "gewebe_größe_組織.png"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason=GPU_SKIP)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Give torch back its thread count after each test.

    A test that sets it (one thread for a deterministic training step, a training run's
    ``threads``) would otherwise leave every later in-process test on one core.
    """
    import torch

    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


_BAD_SKIPS: list[str] = []


def pytest_runtest_logreport(report):
    """Remember every skip whose reason is not a missing GPU."""
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if GPU_SKIP not in reason:
            _BAD_SKIPS.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test skipped for any reason but a missing GPU."""
    if _BAD_SKIPS and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _BAD_SKIPS:
        terminalreporter.write_line(
            f"FAILED: {len(_BAD_SKIPS)} test(s) skipped for a reason other than '{GPU_SKIP}':",
            red=True,
        )
        for line in _BAD_SKIPS:
            terminalreporter.write_line(f"  {line}", red=True)


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The small real data committed with the tests (see tests/data/SOURCE.md)."""
    return TEST_DATA


@pytest.fixture(scope="session")
def stain_template() -> Path:
    """The tiatoolbox H&E stain target the package ships as a sample (1000 x 1000)."""
    return SAMPLES / "he_tiatoolbox_target.png"


@pytest.fixture(scope="session")
def monuseg(tmp_path_factory) -> Path:
    """Eight MoNuSeg 2018 training tiles (1000 x 1000, 40x) as ``images/*.png`` + ``masks/*.tif``.

    Seven are stored as JPEG (quality 90) in tests/data and decoded here once; TCGA-A7-A13E is the
    lossless sample the package ships.
    """
    from PIL import Image

    out = tmp_path_factory.mktemp("monuseg")
    (out / "images").mkdir()
    shutil.copytree(TEST_DATA / "monuseg" / "masks", out / "masks")
    for jpg in sorted((TEST_DATA / "monuseg" / "images").glob("*.jpg")):
        with Image.open(jpg) as im:
            im.convert("RGB").save(out / "images" / f"{jpg.stem}.png", compress_level=1)
    shutil.copyfile(
        SAMPLES / "he_monuseg_TCGA-A7-A13E.png", out / "images" / "TCGA-A7-A13E-01Z-00-DX1.png"
    )
    return out


@pytest.fixture(scope="session")
def tnbc() -> Path:
    """Two 256 x 256 TNBC crops (another hospital) with instance masks."""
    return TEST_DATA / "tnbc"


@pytest.fixture(scope="session")
def svs_path() -> Path:
    return TEST_DATA / "wsi" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> Path:
    """The bad-input corpus: the committed small files plus those derived from ``rgba.png``.

    Derived as the shared corpus was (same crop, same values): 16-bit and float32 TIFFs, a float
    TIFF with a 20 x 20 NaN patch, a 5-channel TIFF; and what users also send: an EXIF-rotated
    JPEG, a palette PNG, a planar (channel-first) TIFF and a file with a non-ASCII name.
    """
    import tifffile
    from PIL import Image

    out = tmp_path_factory.mktemp("bad_inputs")
    for f in (TEST_DATA / "bad_inputs").iterdir():
        shutil.copyfile(f, out / f.name)
    rgb = np.asarray(Image.open(out / "rgba.png"))[..., :3]
    tifffile.imwrite(out / "rgb_uint16.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    f32 = rgb.astype(np.float32) / 255
    tifffile.imwrite(out / "rgb_float32.tif", f32, photometric="rgb")
    nan = f32.copy()
    nan[100:120, 100:120] = np.nan
    tifffile.imwrite(out / "rgb_float32_nan.tif", nan, photometric="rgb")
    five = np.concatenate([rgb, rgb[..., :2]], axis=-1)
    tifffile.imwrite(
        out / "five_channel.tif", five, photometric="minisblack", planarconfig="contig"
    )
    tifffile.imwrite(
        out / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"
    )
    Image.fromarray(rgb).quantize(colors=64).save(out / "palette.png")
    # A portrait phone/scanner JPEG: stored landscape, EXIF orientation 6 (rotate 90 clockwise).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb[:, :192]).save(
        out / "exif_rotated.jpg", quality=95, subsampling=0, exif=exif
    )
    shutil.copyfile(out / "rgba.png", out / NON_ASCII_NAME)
    return out
