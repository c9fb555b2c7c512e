"""CycleGAN translation: training moves the losses, tiled inference, model files, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_histo.core.errors import HistoError
from napari_histo.core.progress import drain
from napari_histo.core.translate import (
    load_translator,
    train_translator,
    train_translator_iter,
    translate,
    translate_iter,
)

HE_TARGET = (
    Path(__file__).resolve().parents[2] / "resources" / "samples" / "he_tiatoolbox_target.png"
)

TINY = {"crop": 32, "ngf": 4, "n_blocks": 6, "ndf": 8, "batch_size": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def images():
    from skimage.data import immunohistochemistry

    from napari_histo.core.io import read_image

    return immunohistochemistry()[:160, :160], read_image(HE_TARGET)[:160, :160]


@pytest.fixture(scope="module")
def model_dir(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    train_translator(*images, steps=4, out=out, save_every=2, seed=1, **TINY)
    return out


def test_training_moves_losses_and_yields_samples(images, tmp_path):
    events = []
    gen = train_translator_iter(
        *images, steps=12, out=tmp_path / "m", sample_every=6, save_every=0, seed=0, **TINY
    )
    out = drain(gen, events.append)
    assert out == tmp_path / "m"
    assert [e.step for e in events] == list(range(1, 13))
    assert all(e.stage == "train" and e.total == 12 for e in events)
    first, last = events[0].metrics, events[-1].metrics
    assert set(first) >= {"loss_G", "cycle_a", "cycle_b", "loss_D_a", "loss_D_b", "lr"}
    assert np.isfinite(list(last.values())).all()
    assert last["loss_G"] != first["loss_G"]
    assert last["cycle_a"] + last["cycle_b"] < first["cycle_a"] + first["cycle_b"]
    assert last["lr"] < first["lr"]  # linear decay in the second half
    samples = [e.payload for e in events if e.payload is not None]
    assert len(samples) == 2
    assert samples[0].dtype == np.uint8 and samples[0].shape == (32, 96, 3)
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["steps_done"] == 12
    assert (out / "card.md").read_text().startswith("#")


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 1000, 3), (37, 53, 3), (70, 131), (45, 40, 4)])
def test_translation_keeps_shape_and_dtype(model_dir, shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    if len(shape) == 3 and shape[2] == 4:
        img[..., 3] = 255
    tr = load_translator(model_dir, device="cpu")
    out = translate(img, tr, tile=32, overlap=8)
    assert out.shape == (*shape[:2], 3)
    assert out.dtype == np.uint8


def test_translate_iter_yields_one_event_per_tile(model_dir, images):
    tr = load_translator(model_dir, device="cpu")
    events = []
    out = drain(translate_iter(images[0][:100, :100], tr, tile=48, overlap=16), events.append)
    assert out.shape == (100, 100, 3)
    assert events and events[-1].step == events[-1].total == len(events) > 1


def test_blended_tiles_leave_no_seam():
    # Instance norm is per tile, so tiles differ from one whole-image pass; what must not show
    # is where the tiles meet. Tiles without overlap make a seam the same measure sees.
    from skimage.data import immunohistochemistry

    tr = load_translator("ihc2he_default", device="cpu")
    crop = immunohistochemistry()[:512, :512]

    def seam_ratio(out: np.ndarray) -> float:
        gray = out.astype(float).mean(-1)
        cols = np.abs(np.diff(gray, axis=1)).mean(0)
        rows = np.abs(np.diff(gray, axis=0)).mean(1)
        return max(cols.max() / np.median(cols), rows.max() / np.median(rows))

    assert seam_ratio(translate(crop, tr, tile=256, overlap=32)) < 2.5  # measured 1.5
    assert seam_ratio(translate(crop, tr, tile=256, overlap=0)) > 2.5  # measured 8.3


def test_save_load_round_trip_identical(model_dir, images):
    import torch

    a = load_translator(model_dir, "ihc2he", device="cpu")
    b = load_translator(model_dir / "weights.safetensors", "ihc2he", device="cpu")
    for (ka, va), (kb, vb) in zip(
        a.net.state_dict().items(), b.net.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    crop = images[0][:40, :40]
    assert np.array_equal(translate(crop, a, tile=64), translate(crop, b, tile=64))
    back = load_translator(model_dir, "he2ihc", device="cpu")
    assert back.direction == "he2ihc"
    assert a.card["training"]["steps_done"] == 4


def test_resume_continues_step_count(model_dir, images, tmp_path, monkeypatch):
    import torch

    # Snapshot what the optimizers are handed: the generators' weights before the first step.
    real_adam, handed = torch.optim.Adam, []

    def spy_adam(params, *args, **kwargs):
        params = list(params)
        handed.append([p.detach().clone() for p in params])
        return real_adam(params, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", spy_adam)
    events = []
    gen = train_translator_iter(*images, steps=6, out=tmp_path / "r", resume=model_dir, **TINY)
    out = drain(gen, events.append)
    # model_dir was saved after 4 steps: training goes on with steps 5 and 6, not from 1.
    assert [(e.step, e.total) for e in events] == [(5, 6), (6, 6)]
    assert json.loads((out / "card.json").read_text())["training"]["steps_done"] == 6
    # ... and from the checkpoint's weights, not from a fresh initialisation.
    saved = [
        p
        for direction in ("ihc2he", "he2ihc")
        for p in load_translator(model_dir, direction, device="cpu").net.parameters()
    ]
    start = handed[0]
    assert len(start) == len(saved)
    assert all(torch.equal(a, b) for a, b in zip(start, saved, strict=True))
    # Training then moved them on.
    after = load_translator(out, "ihc2he", device="cpu").net.parameters()
    assert not all(torch.equal(a, b) for a, b in zip(after, saved, strict=False))


def test_closing_training_keeps_previous_checkpoint(images, tmp_path):
    out = tmp_path / "m"
    gen = train_translator_iter(*images, steps=50, out=out, save_every=2, seed=0, **TINY)
    for ev in gen:
        if ev.step == 3:
            break
    saved = (out / "weights.safetensors").read_bytes()
    gen.close()
    assert (out / "weights.safetensors").read_bytes() == saved
    assert json.loads((out / "card.json").read_text())["training"]["steps_done"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    load_translator(out, device="cpu")


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.numpy import save_file

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(HistoError, match=r"junk\.safetensors"):
        load_translator(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(other))
    with pytest.raises(HistoError, match="not a napari-histo translation model"):
        load_translator(other)
    with pytest.raises(HistoError, match="no such"):
        load_translator(tmp_path / "missing")
    with pytest.raises(HistoError, match="direction"):
        load_translator("ihc2he_default", direction="sideways")


def test_shipped_model_loads_and_translates():
    from skimage.data import immunohistochemistry

    tr = load_translator("ihc2he_default", device="cpu")
    assert tr.card["license"].startswith("NON-COMMERCIAL")  # BCI terms + MoNuSeg
    out = translate(immunohistochemistry()[:64, :80], tr)
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8


def test_bfloat16_translation_matches_float32(monkeypatch):
    """Mixed precision (the default on CPUs with native bfloat16) changes outputs by a grey level."""
    from skimage.data import immunohistochemistry

    tr = load_translator("ihc2he_default", device="cpu")
    image = immunohistochemistry()[:192, :256]
    outs = {}
    for precision in ("float32", "bfloat16"):
        monkeypatch.setenv("NAPARI_HISTO_PRECISION", precision)
        outs[precision] = translate(image, tr).astype(np.int16)
    diff = np.abs(outs["bfloat16"] - outs["float32"])
    assert diff.any()  # the bfloat16 path ran
    assert diff.mean() < 0.5 and diff.max() <= 2, (diff.mean(), diff.max())  # measured 0.11, 1


def test_import_stays_torch_free():
    import subprocess
    import sys

    code = (
        "import sys, napari_histo, napari_histo.core.translate, napari_histo.core.translate.quality;"
        "print('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
