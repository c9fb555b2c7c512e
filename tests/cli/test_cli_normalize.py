"""`napari-histo normalize` on real tiles, a pyramidal slide and broken inputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_histo.cli import main
from napari_histo.core.io import read_image, write_image

BROKEN = {"empty.png", "five_channel.tif", "huge_header.png", "not_an_image.png", "truncated.png"}
NO_TISSUE = {"blank_white.png", "all_black.png", "tiny_1x1.png"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def files(tmp_path_factory, monuseg, stain_template):
    """Two 192 x 256 H&E tiles from different hospitals and a template crop, as PNG files."""
    d = tmp_path_factory.mktemp("tiles")
    paths = sorted((monuseg / "images").glob("*.png"))
    for p in (paths[0], paths[6]):
        write_image(d / f"{p.stem[:12]}.png", read_image(p)[400:592, 400:656])
    target = read_image(stain_template)
    write_image(d / "template.png", target[300:556, 300:556])
    write_image(d / "template2.png", target[600:856, 600:856])
    return d


def _tiles(files):
    return sorted(p for p in files.glob("TCGA*.png"))


def test_macenko_writes_one_png_per_image(files, tmp_path, capsys):
    out = tmp_path / "out"
    tiles = _tiles(files)
    argv = ["normalize", *map(str, tiles), "--template", str(files / "template.png")]
    rc = main([*argv, "--method", "macenko", "--device", "cpu", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    for t in tiles:
        src, res = read_image(t), read_image(out / f"{t.stem}.png")
        assert res.shape == src.shape and res.dtype == np.uint8
        assert not np.array_equal(res, src)


@pytest.mark.parametrize("options_first", [True, False])
def test_options_and_images_in_either_order(files, tmp_path, capsys, options_first):
    """``--template T image`` and ``image --template T`` both work (the template never swallows
    the images); a repeated --template pools its images."""
    out = tmp_path / "out"
    tiles = [str(t) for t in _tiles(files)[:2]]
    opts = ["--method", "macenko", "--device", "cpu", "--out", str(out), "--quiet"]
    opts += ["--template", str(files / "template.png"), "--template", str(files / "template2.png")]
    argv = ["normalize", *opts, *tiles] if options_first else ["normalize", *tiles, *opts]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == sorted(Path(t).name for t in tiles)


def test_dcgmm_class_maps_and_pooled_templates(files, tmp_path, capsys):
    out = tmp_path / "out"
    tiles = _tiles(files)
    rc = main(
        [
            "normalize",
            *map(str, tiles),
            "--template",
            str(files / "template.png"),
            "--template",
            str(files / "template2.png"),
            "--method",
            "dcgmm",
            "--class-maps",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    import tifffile

    for t in tiles:
        assert read_image(out / f"{t.stem}.png").shape == (192, 256, 3)
        classes = tifffile.imread(out / f"{t.stem}_classes.tif")
        assert classes.shape == (192, 256) and classes.dtype == np.uint8
        assert set(np.unique(classes)) == {0, 1, 2}
        assert f"{t.name} -> " in err  # a note per written file without --quiet


def test_refit_and_saved_model(files, tmp_path, capsys):
    from napari_histo.core.stain import get_normalizer

    out = tmp_path / "out"
    tile = _tiles(files)[0]
    rc = main(
        [
            "normalize",
            str(tile),
            "--template",
            str(files / "template.png"),
            *[a for t in _tiles(files) for a in ("--fit-on", str(t))],
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert read_image(out / f"{tile.stem}.png").shape == (192, 256, 3)

    # A normalizer saved elsewhere carries its template: --template is not needed.
    saved = tmp_path / "lab.json"
    norm = get_normalizer("reinhard", device="cpu").fit(read_image(files / "template.png"))
    norm.save(saved)
    rc = main(
        ["normalize", str(tile), "--model", str(saved), "--out", str(tmp_path / "o2"), "--quiet"]
    )
    assert rc == 0, capsys.readouterr().err
    assert np.array_equal(
        read_image(tmp_path / "o2" / f"{tile.stem}.png"), norm.transform(read_image(tile))
    )


def test_bad_inputs_one_line_each_and_the_rest_processed(files, bad_inputs, tmp_path, capsys):
    bad = sorted(p for p in bad_inputs.iterdir() if p.suffix != ".md")
    out = tmp_path / "out"
    argv = ["normalize", *map(str, bad), "--template", str(files / "template.png")]
    rc = main([*argv, "--method", "vahadane", "--device", "cpu", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == len(BROKEN)
    for name in BROKEN:
        assert sum(name in ln for ln in errors) == 1, name
    written = {p.stem for p in out.glob("*.png")}
    assert written == {p.stem for p in bad if p.name not in BROKEN}
    notes = [ln for ln in err.splitlines() if "note:" in ln]
    for name in NO_TISSUE:
        assert any(name in ln and "no tissue found" in ln for ln in notes), name
        assert np.array_equal(read_image(out / f"{name[:-4]}.png"), read_image(bad_inputs / name))
    assert any("grayscale.png" in ln and "no stain colour" in ln for ln in notes)
    assert any("rgb_float32_nan.tif" in ln and "NaN" in ln for ln in notes)
    for stem in ("thin_3x1000", "rgb_float32_nan", "pen_mark_green"):
        src = next(p for p in bad if p.stem == stem)
        with warnings.catch_warnings(record=True):
            shape = read_image(src).shape
        assert read_image(out / f"{stem}.png").shape == shape


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no template"),
        (["--template", "MISSING.png"], "MISSING.png"),
        (["--template", "TEMPLATE", "--model", "RGBA"], "rgba.png"),
        (["--template", "TEMPLATE", "--method", "macenko", "--fit-on", "TEMPLATE"], "fit-on"),
        (["--template", "TEMPLATE", "--device", "quantum"], "unknown device"),
    ],
)
def test_usage_errors_are_one_line(extra, message, files, bad_inputs, tmp_path, capsys):
    subst = {"TEMPLATE": str(files / "template.png"), "RGBA": str(bad_inputs / "rgba.png")}
    extra = [subst.get(a, a) for a in extra]
    tile = str(_tiles(files)[0])
    rc = main(["normalize", tile, *extra, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_slide_is_normalized_lazily_to_a_pyramidal_tiff(monuseg, files, tmp_path, capsys):
    from napari_histo.core.io import is_slide, read_slide
    from napari_histo.core.progress import drain
    from napari_histo.core.slide.segment import write_pyramidal_tiff_iter

    tile = read_image(sorted((monuseg / "images").glob("*.png"))[3])
    slide = tmp_path / "slide.tif"
    drain(write_pyramidal_tiff_iter(tile, slide, tile=256, top_size=512))
    assert is_slide(slide)
    out = tmp_path / "out"
    argv = ["normalize", str(slide), "--template", str(files / "template.png")]
    rc = main([*argv, "--method", "macenko", "--device", "cpu", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert not (out / "slide.png").exists()
    levels = read_slide(out / "slide.tif")
    assert levels[0].shape == (1000, 1000, 3)
    res = np.asarray(levels[0])
    assert res.dtype == np.uint8 and not np.array_equal(res, tile)


def test_compare_prints_a_table_and_writes_each_method(files, tmp_path, capsys):
    from napari_histo.core.io import read_labels  # noqa: F401 (the CSV is checked below)

    out = tmp_path / "cmp"
    tile = _tiles(files)[0]
    argv = ["normalize", "--compare", str(tile), "--template", str(files / "template.png")]
    assert main([*argv, "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"{tile.name}: best = " in text and "agreement" in text
    for m in ("none", "dcgmm", "macenko", "reinhard", "vahadane"):
        assert (out / f"{tile.stem}_{m}.png").is_file()
        assert f" {m} " in text
    rows = (out / f"{tile.stem}_compare.csv").read_text().splitlines()
    assert len(rows) == 6 and rows[0].startswith("method,nuclei")
