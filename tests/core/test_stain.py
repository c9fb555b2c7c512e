"""Stain normalizers (Reinhard, Macenko, Vahadane, DCGMM) on real H&E tiles and bad inputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import NON_ASCII_NAME

from napari_histo.core import color
from napari_histo.core.errors import HistoError, ImageReadError, InputWarning
from napari_histo.core.io import read_image
from napari_histo.core.stain import METHODS, get_normalizer, load_normalizer
from napari_histo.core.stain.consistency import coefficient_of_variation, nmi, nmi_summary

CLASSICAL = ("macenko", "reinhard", "vahadane")
CROP = (slice(372, 628), slice(372, 628))  # 256 x 256 from the centre of a 1000 x 1000 tile


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiles(monuseg) -> dict[str, np.ndarray]:
    """Centre crops of MoNuSeg tiles from different hospitals."""
    paths = sorted((monuseg / "images").glob("*.png"))
    return {p.stem[:12]: read_image(p)[CROP] for p in paths}


@pytest.fixture(scope="module")
def template(stain_template) -> np.ndarray:
    return read_image(stain_template)[CROP]


@pytest.fixture(scope="module")
def pale(tiles) -> np.ndarray:
    """A lightly stained tile (lung, TCGA-21-5786), far from the template's colour."""
    return tiles["TCGA-21-5786"]


@pytest.fixture(scope="module")
def dcgmm(template):
    return get_normalizer("dcgmm", device="cpu").fit(template)


def _tissue_lab_mean(image: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(image))
    return color.rgb_to_lab(t[color.tissue_mask(t)]).mean(0).numpy()


def _angle(u, v) -> float:
    u, v = np.asarray(u), np.asarray(v)
    c = np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


# --------------------------------------------------------------------------- registry


def test_registry_names_and_errors():
    from napari_histo.core.stain import workflow as stain_workflow

    assert set(METHODS) == set(stain_workflow.METHODS)
    for name in CLASSICAL:
        norm = get_normalizer(name.upper(), device="cpu")
        assert norm.name == name and not norm.fitted
    with pytest.raises(HistoError, match="unknown method"):
        get_normalizer("histogram")
    with pytest.raises(HistoError, match="no template"):
        get_normalizer("macenko", device="cpu").transform(np.zeros((4, 4, 3), np.uint8))


# --------------------------------------------------------------------------- classical


@pytest.mark.parametrize("method", CLASSICAL)
@pytest.mark.parametrize("source", ("TCGA-21-5786", "TCGA-A7-A13E"))
def test_classical_moves_colour_towards_template(method, source, tiles, template):
    norm = get_normalizer(method, device="cpu").fit(template)
    image = tiles[source]
    out = norm.transform(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    target = _tissue_lab_mean(template)
    before = np.linalg.norm(_tissue_lab_mean(image) - target)
    after = np.linalg.norm(_tissue_lab_mean(out) - target)
    assert before > 15  # really far from the template (CIE Lab units)
    # Reinhard matches Lab means by construction; Macenko and Vahadane match stain vectors
    # and concentration percentiles, which moves the mean colour about half way.
    assert after < (0.25 if method == "reinhard" else 0.6) * before, (before, after)


@pytest.mark.parametrize("method", ("macenko", "vahadane"))
def test_stain_vectors_and_concentrations_move_to_the_template(method, pale, template):
    norm = get_normalizer(method, device="cpu").fit(template)
    tgt = norm.target.values
    src = norm.source_stats(pale).values
    out = norm.source_stats(norm.transform(pale)).values
    # Haematoxylin first: the larger red optical density.
    assert tgt["stains"][0, 0] > tgt["stains"][1, 0]
    for k in range(2):
        assert (
            _angle(out["stains"][k], tgt["stains"][k])
            < 0.5 * _angle(src["stains"][k], tgt["stains"][k]) + 1.0
        )
    ratio_before = np.abs(np.log(src["max_conc"] / tgt["max_conc"]))
    ratio_after = np.abs(np.log(out["max_conc"] / tgt["max_conc"]))
    assert ratio_after.max() < 0.25 and ratio_after.sum() < 0.5 * ratio_before.sum(), (
        ratio_before,
        ratio_after,
    )


def test_reinhard_matches_lab_statistics(pale, template):
    norm = get_normalizer("reinhard", device="cpu").fit(template)
    src = norm.source_stats(pale).values
    out = norm.source_stats(norm.transform(pale)).values
    tgt = norm.target.values
    before = np.linalg.norm(src["mean"] - tgt["mean"])
    after = np.linalg.norm(out["mean"] - tgt["mean"])
    assert before > 15 and after < 0.2 * before, (before, after)
    # Lightness contrast moves towards the template's too (chroma spreads are blurred by the
    # tissue pixels that the glass-preserving blend lets in).
    assert abs(out["std"][0] - tgt["std"][0]) < abs(src["std"][0] - tgt["std"][0])


def test_vahadane_differs_from_macenko_and_is_sparse(template):
    mac = get_normalizer("macenko", device="cpu").fit(template).target.values["stains"]
    vah = get_normalizer("vahadane", device="cpu").fit(template).target.values["stains"]
    assert (vah >= 0).all()
    assert np.allclose(np.linalg.norm(vah, axis=1), 1.0, atol=1e-6)
    # Same haematoxylin direction within a few degrees; eosin found by another route.
    assert _angle(vah[0], mac[0]) < 8
    assert 0.5 < _angle(vah[1], mac[1]) < 20


@pytest.mark.parametrize("method", (*CLASSICAL, "dcgmm"))
def test_template_regions_are_pooled(method, template, request):
    norm = (
        request.getfixturevalue("dcgmm")
        if method == "dcgmm"
        else get_normalizer(method, device="cpu")
    )
    halves = [template[:128], template[128:]]
    pooled = norm.fit(halves).target.values
    whole = norm.fit(template).target.values
    for key, value in whole.items():
        if key == "weight":
            # DCGMM: gamma near the cut between the halves sees less context.
            assert np.allclose(pooled[key], value, rtol=0.02)
        else:
            assert np.allclose(pooled[key], value, atol=0.05 * np.abs(value).max()), key


@pytest.mark.parametrize("method", CLASSICAL)
def test_batches_and_fixed_source_stats(method, tiles, template):
    norm = get_normalizer(method, device="cpu").fit(template)
    a, b = tiles["TCGA-A7-A13E"], tiles["TCGA-B0-5698"]
    batch = norm.transform(np.stack([a, b]))
    assert batch.shape == (2, *a.shape)
    assert np.array_equal(batch[1], norm.transform(b))
    # Chunk by chunk with the whole image's statistics = the whole image at once.
    stats = norm.source_stats(a)
    chunks = [
        norm.transform(a[:, :100], source_stats=stats),
        norm.transform(a[:, 100:], source_stats=stats),
    ]
    assert np.array_equal(np.concatenate(chunks, axis=1), norm.transform(a))


@pytest.mark.parametrize("method", METHODS)
def test_lazy_transform_of_a_dask_image(method, tiles, template, request):
    import dask.array as da

    from napari_histo.core.stain.workflow import lazy_transform

    if method == "dcgmm":
        norm = request.getfixturevalue("dcgmm")
    else:
        norm = get_normalizer(method, device="cpu").fit(template)
    image = np.concatenate([tiles["TCGA-A7-A13E"], tiles["TCGA-50-5931"]], axis=1)  # 256 x 512
    stats = norm.source_stats(image[::2, ::2])  # a coarse level
    lazy = lazy_transform(da.from_array(image, chunks=(128, 256, 3)), norm, stats)
    out = lazy.compute()
    assert out.shape == image.shape and out.dtype == np.uint8
    whole = norm.transform(image, source_stats=stats)
    diff = np.abs(out.astype(int) - whole.astype(int))
    if method == "dcgmm":  # each chunk has its own gamma: only chunk borders may differ
        assert diff.mean() < 1.0 and np.percentile(diff, 90) <= 2
    else:
        assert np.array_equal(out, whole)
    # ...and the coarse-level statistics give nearly the full-resolution result.
    assert np.abs(whole.astype(int) - norm.transform(image).astype(int)).mean() < 4


def test_pen_mark_does_not_wreck_the_stain_estimate(bad_inputs):
    clean = read_image(bad_inputs / "rgba.png")  # the same crop without the marker
    pen = read_image(bad_inputs / "pen_mark_green.png")
    for method in ("macenko", "vahadane"):
        norm = get_normalizer(method, device="cpu")
        a, b = norm.source_stats(clean).values, norm.source_stats(pen).values
        for k in range(2):
            assert _angle(a["stains"][k], b["stains"][k]) < 3.0, method
    norm = get_normalizer("reinhard", device="cpu")
    assert (
        np.abs(
            norm.source_stats(clean).values["mean"] - norm.source_stats(pen).values["mean"]
        ).max()
        < 3
    )


# --------------------------------------------------------------------------- bad inputs

NO_TISSUE = ("blank_white.png", "all_black.png", "tiny_1x1.png")
PROCESSED = (
    "pen_mark_green.png",
    "rgba.png",
    "rgb_uint16.tif",
    "rgb_float32.tif",
    "rgb_float32_nan.tif",
    "cmyk.jpg",
    "thin_3x1000.png",
    "exif_rotated.jpg",
    "palette.png",
    "planar.tif",
    NON_ASCII_NAME,
)
BROKEN = ("empty.png", "truncated.png", "not_an_image.png", "huge_header.png", "five_channel.tif")


def test_every_bad_input_is_listed(bad_inputs):
    names = {p.name for p in bad_inputs.iterdir() if p.suffix != ".md"}
    assert names == set(NO_TISSUE) | set(PROCESSED) | set(BROKEN) | {"grayscale.png"}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", NO_TISSUE)
def test_no_tissue_is_returned_unchanged_with_a_warning(
    method, name, bad_inputs, template, request
):
    norm = (
        request.getfixturevalue("dcgmm")
        if method == "dcgmm"
        else get_normalizer(method, device="cpu").fit(template)
    )
    image = read_image(bad_inputs / name)
    with pytest.warns(InputWarning, match="no tissue found"):
        out = norm.transform(image)
    assert np.array_equal(out, image)


@pytest.mark.parametrize("method", METHODS)
def test_grayscale_is_converted_and_left_unchanged(method, bad_inputs, template, request):
    norm = (
        request.getfixturevalue("dcgmm")
        if method == "dcgmm"
        else get_normalizer(method, device="cpu").fit(template)
    )
    gray = read_image(bad_inputs / "grayscale.png")
    with pytest.warns(InputWarning, match="no stain colour"):
        out = norm.transform(gray[..., 0])  # a 2-D array is fine too
    assert out.shape == (256, 256, 3) and np.array_equal(out, gray)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", PROCESSED)
def test_odd_but_valid_inputs_are_processed(method, name, bad_inputs, template, request):
    norm = (
        request.getfixturevalue("dcgmm")
        if method == "dcgmm"
        else get_normalizer(method, device="cpu").fit(template)
    )
    with warnings.catch_warnings(record=True):  # the reader's NaN note is not ours to test
        image = read_image(bad_inputs / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # real tissue: no "no tissue" note
        out = norm.transform(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)  # really normalized


def test_raw_arrays_of_other_types(bad_inputs, template):
    import tifffile

    norm = get_normalizer("macenko", device="cpu").fit(template)
    ref = norm.transform(read_image(bad_inputs / "rgba.png"))
    for name in ("rgb_uint16.tif", "rgb_float32.tif"):
        assert (
            np.abs(norm.transform(tifffile.imread(bad_inputs / name)).astype(int) - ref).max() <= 1
        )
    nan = tifffile.imread(bad_inputs / "rgb_float32_nan.tif")
    assert np.isnan(nan).any()
    with pytest.warns(InputWarning, match="NaN"):
        out = norm.transform(nan)
    assert out.dtype == np.uint8 and out.shape == nan.shape
    from PIL import Image

    rgba = np.asarray(Image.open(bad_inputs / "rgba.png"))
    assert rgba.shape[-1] == 4 and np.array_equal(norm.transform(rgba), ref)


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_are_refused_clearly(name, bad_inputs):
    with pytest.raises(ImageReadError, match=name.split(".")[0]) as info:
        read_image(bad_inputs / name)
    assert "\n" not in str(info.value)


def test_five_channel_array_is_refused(template):
    norm = get_normalizer("reinhard", device="cpu").fit(template)
    with pytest.raises(HistoError, match="5 channels"):
        norm.transform(np.zeros((8, 8, 5), np.uint8))


def test_template_without_tissue_is_refused(bad_inputs):
    blank = read_image(bad_inputs / "blank_white.png")
    for method in CLASSICAL:
        with pytest.raises(HistoError, match="template: no tissue"):
            get_normalizer(method, device="cpu").fit(blank)
    with pytest.raises(HistoError, match="template: no tissue"):
        get_normalizer("dcgmm", device="cpu").fit([blank, blank[:10]])


# --------------------------------------------------------------------------- DCGMM


def test_shipped_dcgmm_has_a_card_and_named_classes():
    norm = get_normalizer("dcgmm", device="cpu")
    assert norm.class_names == ("background", "surrounding tissue", "nuclei")
    assert not norm.fitted
    assert "CC BY-NC-SA" in norm.card["license"]
    assert norm.card["training"]["final_loss"] < -1.5
    arch = [
        (m.in_channels, m.out_channels)
        for m in norm.model.net.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    assert arch == [
        (1, 32),
        (32, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 128),
        (128, 64),
        (64, 32),
        (32, 3),
    ]


def test_dcgmm_classes_are_ordered_by_density(dcgmm, tiles):
    image = tiles["TCGA-A7-A13E"]
    probs = dcgmm.class_probabilities(image)
    assert probs.shape == (256, 256, 3) and probs.dtype == np.float32
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-4)
    classes = probs.argmax(-1)
    d = color.rgb_to_od(torch.from_numpy(image.copy())).mean(-1).numpy()
    density = [d[classes == k].mean() for k in range(3)]
    assert density[0] < density[1] < density[2], density
    assert (classes == 2).mean() > 0.03  # nuclei are found...
    assert (classes == 0).mean() > 0.01  # ...and so is the background
    # The class map agrees with the colour: nuclei are the darkest, bluest pixels.
    lab = color.rgb_to_lab(torch.from_numpy(image.copy())).numpy()
    assert lab[classes == 2, 0].mean() < lab[classes == 1, 0].mean() - 10


def test_dcgmm_transform_maps_class_statistics_to_the_template(dcgmm, pale):
    out = dcgmm.transform(pale)
    assert out.shape == pale.shape and out.dtype == np.uint8
    tgt = dcgmm.target.values
    before = dcgmm.source_stats(pale).values
    after = dcgmm.source_stats(out).values
    err_before = np.abs(before["mean"] - tgt["mean"])[1:].sum()  # tissue and nuclei
    err_after = np.abs(after["mean"] - tgt["mean"])[1:].sum()
    assert err_after < 0.4 * err_before, (err_before, err_after)


def test_dcgmm_transform_handles_tiny_and_odd_sizes(dcgmm, tiles):
    image = tiles["TCGA-A7-A13E"]
    for shape in ((1, 1), (3, 256), (37, 53), (255, 129)):
        crop = image[: shape[0], : shape[1]]
        probs = dcgmm.class_probabilities(crop)
        assert probs.shape == (*shape, 3) and np.isfinite(probs).all()
        stats = dcgmm.source_stats(image)
        out = dcgmm.transform(crop, source_stats=stats)
        assert out.shape == crop.shape and out.dtype == np.uint8


def test_dcgmm_large_image_is_tiled_like_the_whole(dcgmm, monuseg, monkeypatch):
    from napari_histo.core.stain.dcgmm import normalizer as mod

    image = read_image(sorted((monuseg / "images").glob("*.png"))[3])[:400, :600]
    whole = dcgmm.class_probabilities(image)
    monkeypatch.setattr(mod, "NET_TILE", 64)
    monkeypatch.setattr(mod, "BAND_PIXELS", 5000)
    tiled = dcgmm.class_probabilities(image)
    assert np.abs(tiled - whole).max() < 0.02


def test_dcgmm_network_tiles_see_all_the_context_they_need(dcgmm, monuseg, monkeypatch):
    """In float32, logits tiled with NET_HALO of context equal the one-pass logits; a smaller
    halo does not (so NET_HALO is no larger than the network's reach needs)."""
    import torch

    from napari_histo.core.stain.dcgmm import normalizer as mod

    monkeypatch.setattr(dcgmm.model, "amp_dtype", None)
    image = read_image(sorted((monuseg / "images").glob("*.png"))[3])[:480, :640]
    rgb = torch.from_numpy(np.ascontiguousarray(image))
    whole = dcgmm._low_logits(rgb)
    monkeypatch.setattr(mod, "NET_TILE", 96)
    assert float((dcgmm._low_logits(rgb) - whole).abs().max()) < 1e-3
    monkeypatch.setattr(mod, "NET_HALO", mod.NET_HALO - 4)
    assert float((dcgmm._low_logits(rgb) - whole).abs().max()) > 0.1


def test_dcgmm_large_image_statistics_from_every_other_pixel(dcgmm, monuseg, monkeypatch):
    """Above BAND_PIXELS the class statistics come from a strided quarter of the pixels: the
    normalized image moves by at most one grey level."""
    from napari_histo.core.stain.dcgmm import normalizer as mod

    image = read_image(sorted((monuseg / "images").glob("*.png"))[3])[:720, :960]
    monkeypatch.setattr(mod, "BAND_PIXELS", 200_000)  # this image counts as large
    strided = dcgmm.transform(image).astype(int)
    monkeypatch.setattr(mod, "STATS_STRIDE", 1)
    full = dcgmm.transform(image).astype(int)
    diff = np.abs(strided - full)
    assert diff.any() and diff.max() <= 1


def test_dcgmm_fit_lowers_the_loss_and_orders_classes(tiles):
    from napari_histo.core.progress import Progress
    from napari_histo.core.stain import fit_dcgmm
    from napari_histo.core.stain.dcgmm import DCGMM, DCGMMNormalizer

    images = [tiles["TCGA-A7-A13E"], tiles["TCGA-B0-5698"][:200], tiles["TCGA-50-5931"][:, :100]]
    untrained = DCGMMNormalizer(DCGMM(3, 2), device="cpu")
    gen = fit_dcgmm(
        images, steps=12, device="cpu", seed=1, start=None, batch_size=2, crop=96, lr=3e-3
    )
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            norm = stop.value
            break
    assert all(isinstance(e, Progress) and e.stage == "fit" for e in events)
    assert [e.step for e in events] == list(range(13)) and events[-1].total == 12
    assert all(np.isfinite(e.metrics["loss"]) for e in events[1:])
    before, after = untrained.loss(images), norm.loss(images)
    assert after < before - 0.05, (before, after)
    dens = norm.card["training"]["class_mean_density"]
    assert dens == sorted(dens)
    assert (
        norm.card["training"]["steps"] == 12 and "random" in norm.card["training"]["started_from"]
    )


def test_dcgmm_refit_from_shipped_keeps_the_licence(tiles):
    from napari_histo.core.stain import fit_dcgmm_blocking

    seen = []
    norm = fit_dcgmm_blocking(
        [tiles["TCGA-A7-A13E"]], steps=2, device="cpu", crop=64, callback=seen.append
    )
    assert len(seen) == 3
    assert "CC BY-NC-SA" in norm.card["license"]
    assert norm.card["training"]["started_from"] == "dcgmm_default"


def test_dcgmm_cancel_by_closing_the_generator(tiles, template):
    from napari_histo.core.stain import fit_dcgmm

    shipped = get_normalizer("dcgmm", device="cpu")
    before = {k: v.clone() for k, v in shipped.model.state_dict().items()}
    gen = fit_dcgmm([tiles["TCGA-A7-A13E"]], steps=100_000, device="cpu", crop=64, batch_size=1)
    for _ in range(3):
        next(gen)
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)
    again = get_normalizer("dcgmm", device="cpu")
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert again.fit(template).transform(template).shape == template.shape


def test_dcgmm_paper_loss_is_the_clipped_batch_likelihood():
    from napari_histo.core.stain.dcgmm import mixture_stats, paper_nll

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=gen)
    log_gamma = torch.log_softmax(torch.randn(2, 3, 8, 8, generator=gen), dim=1)
    gamma = log_gamma.exp()
    # One image: the batch M-step is the per-image one; without clipping, the same likelihood.
    one = mixture_stats(x[:1], gamma[:1])
    pooled = mixture_stats(x[:1], gamma[:1], pooled=True)
    for a, b in zip(one, pooled, strict=True):
        assert torch.allclose(a, b)
    # Two images: the pooled statistics are those of the images side by side.
    _, mean, var = mixture_stats(x, gamma, pooled=True)
    side = mixture_stats(torch.cat([x[0], x[1]], 2)[None], torch.cat([gamma[0], gamma[1]], 2)[None])
    assert torch.allclose(mean[0], side[1][0], atol=1e-6) and torch.allclose(mean[1], mean[0])
    assert torch.allclose(var[1], side[2][0], atol=1e-6)
    # -log min(p + eps, 1), computed directly.
    diff = x[:, None] - mean[..., None, None]
    dens = (
        torch.exp(-0.5 * (diff * diff / var[..., None, None]).sum(2))
        / torch.sqrt((2 * torch.pi) ** 3 * var.prod(2))[..., None, None]
    )
    p = (gamma * dens).sum(1)
    expected = -torch.log(torch.clamp(p + 1e-7, max=1.0)).mean()
    assert torch.allclose(paper_nll(x, log_gamma, mean, var), expected, atol=1e-5)
    assert paper_nll(x, log_gamma, mean, var) >= 0


def test_dcgmm_fit_paper_loss_and_time_cap(tiles):
    from napari_histo.core.stain import fit_dcgmm_blocking

    norm = fit_dcgmm_blocking(
        [tiles["TCGA-A7-A13E"]],
        steps=100_000,
        device="cpu",
        crop=64,
        batch_size=2,
        start=None,
        loss="paper",
        max_seconds=0.5,
    )
    tr = norm.card["training"]
    assert tr["loss"] == "paper" and 1 <= tr["steps"] < 100_000 == tr["steps_planned"]
    assert np.isfinite(tr["final_loss"]) and tr["final_loss"] >= 0
    with pytest.raises(HistoError, match="unknown DCGMM loss"):
        fit_dcgmm_blocking([tiles["TCGA-A7-A13E"]], steps=1, device="cpu", loss="nope")


def test_dcgmm_fit_refuses_images_without_tissue(bad_inputs):
    from napari_histo.core.stain import fit_dcgmm_blocking

    blank = read_image(bad_inputs / "blank_white.png")
    with pytest.raises(HistoError, match="no tissue"):
        fit_dcgmm_blocking([blank], steps=2, device="cpu")
    with pytest.raises(HistoError, match="no images"):
        fit_dcgmm_blocking([], steps=2, device="cpu")


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("method", CLASSICAL)
def test_classical_save_load_roundtrip(method, tmp_path, template, pale):
    norm = get_normalizer(method, device="cpu").fit(template)
    path = norm.save(tmp_path / "lab.json")
    data = json.loads(path.read_text())
    assert data["format"] == "napari-histo-stain-normalizer" and data["method"] == method
    again = load_normalizer(path, device="cpu")
    assert again.name == method and again.params() == norm.params()
    assert np.array_equal(again.transform(pale), norm.transform(pale))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


@pytest.mark.parametrize("suffix", (".safetensors", ".json"))
def test_dcgmm_save_load_roundtrip(suffix, dcgmm, tmp_path, pale):
    weights = dcgmm.save(tmp_path / f"lab{suffix}")
    assert weights == tmp_path / "lab.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.json", "lab.safetensors"]
    card = json.loads((tmp_path / "lab.json").read_text())
    assert card["weights"] == "lab.safetensors" and "CC BY-NC-SA" in card["license"]
    expected = dcgmm.transform(pale)
    for path in (tmp_path / "lab.json", tmp_path / "lab.safetensors"):
        again = load_normalizer(path, device="cpu")
        assert again.fitted and again.class_names == dcgmm.class_names
        assert np.array_equal(again.transform(pale), expected)


def test_shipped_model_loads_by_name_and_folder():
    from napari_histo.core.resources import resource_path

    by_name = load_normalizer("dcgmm_default", device="cpu")
    folder = load_normalizer(resource_path("stain", "dcgmm_default"), device="cpu")
    card = load_normalizer(resource_path("stain", "dcgmm_default", "card.json"), device="cpu")
    for n in (by_name, folder, card):
        assert n.name == "dcgmm" and n.card["name"] == "dcgmm_default"


def test_load_refuses_foreign_files_in_one_line(tmp_path, bad_inputs):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    (tmp_path / "broken.json").write_text("{ not json")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04\x95\x10\x00\x00")
    cases = [
        bad_inputs / "rgba.png",
        other,
        tmp_path / "other.json",
        tmp_path / "broken.json",
        tmp_path / "pickle.pt",
        tmp_path / "missing.json",
        tmp_path,
    ]
    for path in cases:
        with pytest.raises(HistoError) as info:
            load_normalizer(path)
        msg = str(info.value)
        assert "\n" not in msg and path.name in msg, msg


# --------------------------------------------------------------------------- consistency


def test_nmi_known_values():
    img = np.full((10, 10, 3), 100, np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    assert nmi(img, mask) == pytest.approx(1.0)
    ramp = np.repeat(np.arange(100, dtype=np.uint8).reshape(10, 10, 1), 3, axis=2)
    full = np.ones((10, 10), bool)
    assert nmi(ramp, full) == pytest.approx(49.5 / 94.05, rel=1e-6)
    assert coefficient_of_variation([1.0, 1.0, 1.0]) == 0.0
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(0.5)
    with pytest.raises(HistoError, match="no nuclei"):
        nmi(img, np.zeros((10, 10), bool))


def test_nmi_cv_drops_after_normalization(monuseg, dcgmm):
    import tifffile

    paths = sorted((monuseg / "images").glob("*.png"))[:6]
    images = [read_image(p)[:512, :512] for p in paths]
    masks = [tifffile.imread(monuseg / "masks" / f"{p.stem}.tif")[:512, :512] for p in paths]
    raw = nmi_summary(images, masks)
    assert len(raw["values"]) == 6 and 0.3 < raw["mean"] < 0.9
    after = nmi_summary([dcgmm.transform(im) for im in images], masks)
    assert after["cv"] < 0.75 * raw["cv"], (raw["cv"], after["cv"])


def test_slide_levels_normalized_with_one_set_of_statistics(svs_path, template):
    """Every chunk of a slide uses the same stain statistics: a tile equals the whole-slide map."""
    from napari_histo.core.io import read_slide
    from napari_histo.core.io.regions import pick_level
    from napari_histo.core.stain.workflow import normalize_levels

    levels = read_slide(svs_path)
    norm = get_normalizer("macenko").fit(template)
    out = normalize_levels(norm, levels)
    assert [o.shape for o in out] == [lv.shape for lv in levels]
    stats = norm.source_stats(np.asarray(levels[pick_level(levels)]))
    region = np.asarray(levels[0][1000:1300, 800:1200])
    expected = norm.transform(region, source_stats=stats)
    got = np.asarray(out[0][1000:1300, 800:1200])
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert np.abs(got.astype(int) - region).mean() > 5, "normalization changed nothing"


@pytest.mark.parametrize("method", METHODS)
def test_banded_transform_of_a_large_image_equals_the_one_piece_maths(method, monuseg, template):
    """Images above one band are transformed in bands of rows with the same pixels."""
    from napari_histo.core.stain import classical
    from napari_histo.core.stain.dcgmm import normalizer as dcgmm_normalizer

    module = dcgmm_normalizer if method == "dcgmm" else classical
    norm = get_normalizer(method, device="cpu").fit(template)
    image = read_image(next((monuseg / "images").glob("*.png")))[:301, :283]
    stats = norm.source_stats(image)
    whole, fixed = norm.transform(image), norm.transform(image, source_stats=stats)
    old = module.BAND_PIXELS
    try:
        module.BAND_PIXELS = 283 * 37  # bands of 37 rows (odd, not a multiple of the scale)
        banded, banded_fixed = norm.transform(image), norm.transform(image, source_stats=stats)
    finally:
        module.BAND_PIXELS = old
    assert np.array_equal(banded_fixed, fixed)
    # DCGMM sums its class statistics band by band: float rounding may move a pixel by 1.
    assert np.abs(banded.astype(int) - whole).max() <= (1 if method == "dcgmm" else 0)


@pytest.mark.parametrize("method", ["macenko", "dcgmm"])
def test_in_memory_images_are_normalized_whole_and_huge_ones_from_a_coarse_copy(
    method, tiles, template, request, monkeypatch
):
    """An in-memory image is one transform (one DCGMM network pass); a huge single level is
    normalized lazily with statistics of a 2x2-averaged copy, not of an extra full pass."""
    from napari_histo.core.progress import drain
    from napari_histo.core.stain import workflow

    norm = (
        request.getfixturevalue("dcgmm")
        if method == "dcgmm"
        else get_normalizer(method, device="cpu").fit(template)
    )
    image = np.concatenate([tiles["TCGA-A7-A13E"], tiles["TCGA-50-5931"]], axis=1)  # 256 x 512
    monkeypatch.setattr(workflow, "IN_MEMORY_PIXELS", 64 * 64)
    (res,) = drain(workflow.normalize_images(norm, [("a", image)]))
    assert isinstance(res.image, np.ndarray) and np.array_equal(res.image, norm.transform(image))

    monkeypatch.setattr(workflow, "DIRECT_PIXELS", 64 * 64)
    monkeypatch.setattr(workflow, "SAMPLE_SIDE", 128)
    seen = []
    real = norm.source_stats
    monkeypatch.setattr(norm, "source_stats", lambda im: seen.append(im.shape) or real(im))
    (res,) = drain(workflow.normalize_images(norm, [("a", image)], class_maps=True))
    assert seen == [(64, 128, 3)]
    out = np.asarray(res.image)
    assert out.shape == image.shape and out.dtype == np.uint8
    # DCGMM's classes depend on the magnification the network sees (4x coarser here).
    limit = 8 if method == "dcgmm" else 4
    assert np.abs(out.astype(int) - norm.transform(image)).mean() < limit
    if method == "dcgmm":
        assert res.class_level == 2 and res.class_map.shape == (64, 128)


def test_glass_chunks_of_a_slide_are_passed_through(tiles, template):
    """Chunks of a slide pyramid without tissue (coarsest level) are left as they are; tissue
    chunks are normalized as before."""
    import dask.array as da

    from napari_histo.core.stain.workflow import normalize_levels

    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal([236, 232, 238], 2.0, (512, 512, 3)), 0, 255).astype(np.uint8)
    tissue = np.concatenate([tiles["TCGA-A7-A13E"], tiles["TCGA-50-5931"]], axis=1)  # 256 x 512
    image = glass.copy()
    image[:256] = tissue  # top half tissue, bottom half glass
    level0 = da.from_array(image, chunks=(128, 128, 3))
    levels = [level0, level0[::2, ::2], level0[::4, ::4]]
    norm = get_normalizer("macenko", device="cpu").fit(template)
    out = np.asarray(normalize_levels(norm, levels)[0])
    kept = np.asarray(normalize_levels(norm, levels, skip_glass=False)[0])
    assert np.array_equal(out[:256], kept[:256])  # tissue: normalized as before
    assert np.array_equal(out[384:], image[384:])  # glass chunks: untouched
    assert not np.array_equal(kept[384:], image[384:])  # ...which the transform would change
