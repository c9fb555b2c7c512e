"""`napari-histo translate`, `quality` and `train-translator` on real and broken inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_histo.cli import main
from napari_histo.core.io import read_image, write_image

BROKEN = {
    "empty.png",
    "five_channel.tif",
    "huge_header.png",
    "not_an_image.png",
    "truncated.png",
}


@pytest.fixture(scope="module")
def ihc_files(tmp_path_factory):
    from skimage.data import immunohistochemistry

    d = tmp_path_factory.mktemp("ihc")
    img = immunohistochemistry()
    for i, (y, x) in enumerate([(0, 0), (200, 300)]):
        write_image(d / f"ihc_{i}.png", img[y : y + 96, x : x + 120])
    return d


def test_translate_writes_one_png_per_input(ihc_files, tmp_path, capsys):
    out = tmp_path / "out"
    files = sorted(ihc_files.glob("*.png"))
    rc = main(["translate", *map(str, files), "--out", str(out), "--device", "cpu", "--quiet"])
    assert rc == 0
    for f in files:
        res = read_image(out / f"{f.stem}.png")
        assert res.shape == (96, 120, 3) and res.dtype == np.uint8


def test_translate_bad_inputs_one_line_each(bad_inputs, tmp_path, capsys):
    files = sorted(p for p in bad_inputs.iterdir() if p.suffix != ".md")
    out = tmp_path / "out"
    rc = main(["translate", *map(str, files), "--out", str(out), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    error_lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(error_lines) == len(BROKEN)
    for name in BROKEN:
        assert sum(name in ln for ln in error_lines) == 1, name
    written = {p.stem for p in out.glob("*.png")}
    expected = {p.stem for p in files if p.name not in BROKEN}
    assert written == expected
    for stem in ("tiny_1x1", "thin_3x1000", "rgb_float32_nan"):
        src = next(p for p in files if p.stem == stem)
        assert read_image(out / f"{stem}.png").shape == read_image(src).shape


def test_translate_refuses_a_foreign_model(ihc_files, bad_inputs, tmp_path, capsys):
    rc = main(
        [
            "translate",
            str(next(ihc_files.glob("*.png"))),
            "--model",
            str(bad_inputs / "rgba.png"),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "rgba.png" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_quality_prints_metrics_with_direction(ihc_files, tmp_path, capsys):
    a, b = sorted(ihc_files.glob("*.png"))
    js = tmp_path / "q.json"
    assert main(["quality", str(a), str(b), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    for name in ("PSNR", "SSIM", "MS-GMSD", "MDSI", "HaarPSI"):
        assert name in out
    assert "lower is better" in out and "higher is better" in out
    doc = json.loads(js.read_text())
    assert doc["better"]["ms_gmsd"] == "lower" and set(doc["scores"]) == set(doc["better"])


def test_quality_mismatch_and_bad_file(ihc_files, bad_inputs, capsys):
    a = next(ihc_files.glob("*.png"))
    assert main(["quality", str(a), str(bad_inputs / "tiny_1x1.png")]) == 2
    assert main(["quality", str(a), str(bad_inputs / "truncated.png")]) == 2
    err = capsys.readouterr().err
    assert "same size" in err and "truncated.png" in err and "Traceback" not in err


def test_train_translator_cli(ihc_files, stain_template, tmp_path, capsys):
    he = tmp_path / "he"
    target = read_image(stain_template)
    write_image(he / "he.png", target[:128, :128])
    (he / "broken.png").write_bytes(b"nope")  # skipped, not fatal
    out = tmp_path / "model"
    args = ["train-translator", "--a", str(ihc_files), "--b", str(he), "--out", str(out)]
    args += ["--steps", "2", "--crop", "32", "--ngf", "4", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    assert (out / "weights.safetensors").is_file()
    assert json.loads((out / "card.json").read_text())["training"]["steps_done"] == 2
    assert (
        main(["train-translator", "--a", str(tmp_path / "nope"), "--b", str(he), "--out", str(out)])
        == 2
    )
    assert "nope" in capsys.readouterr().err
