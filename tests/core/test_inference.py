"""Segmentation inference: tiled vs untiled maps, multiple inference (TTA), cancel, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histo.core.errors import HistoError, InputWarning
from napari_histo.core.io import read_image, read_labels
from napari_histo.core.progress import drain
from napari_histo.core.seg import spec as seg_spec
from napari_histo.core.seg.inference import (
    DIHEDRAL_4,
    DIHEDRAL_8,
    SPREAD_MAP,
    SegResult,
    segment_iter,
    tta_transforms,
)
from napari_histo.core.seg.registry import LoadedModel
from napari_histo.core.tiling import TileSpec

TILE = "TCGA-A7-A13E-01Z-00-DX1"


class PointwiseSpec:
    """A 1x1-convolution 'architecture': every pixel is predicted from itself only."""

    name = "test_pointwise"
    size_multiple = 1

    def build(self, **kwargs):
        torch.manual_seed(0)
        return torch.nn.Conv2d(3, 3, 1)

    def make_targets(self, labels):
        from napari_histo.core.seg.targets import ternary_labels

        return {"ternary": ternary_labels(labels)}

    def train_loss(self, model, x, targets):
        return torch.nn.functional.cross_entropy(model(x), targets["ternary"])

    def predict(self, model, x):
        return {"ternary": torch.softmax(model(x), dim=1)}

    def invert_tta(self, maps, k, flip):
        return seg_spec.invert_spatial(maps, k, flip)

    def instances(self, maps):
        from napari_histo.core.seg.postprocess import instances_from_ternary

        return instances_from_ternary(maps["ternary"])


seg_spec.register(PointwiseSpec())


def _model(arch: str, **kwargs) -> LoadedModel:
    spec = seg_spec.get_arch(arch)
    torch.manual_seed(0)
    net = spec.build(**kwargs).eval()
    return LoadedModel(net=net, spec=spec, card={}, device=torch.device("cpu"), name=arch)


@pytest.fixture(scope="module")
def tiny_unet() -> LoadedModel:
    return _model("unet", base=4)


@pytest.fixture(scope="module")
def pointwise() -> LoadedModel:
    return _model("test_pointwise")


@pytest.fixture(scope="module")
def crop(monuseg) -> np.ndarray:
    return read_image(monuseg / "images" / f"{TILE}.png")[100:300, 200:440]


def test_pointwise_tiled_equals_untiled_exactly(pointwise, crop):
    whole = drain(segment_iter(crop, pointwise, tile=TileSpec(512, 0, 1)))
    tiled = drain(segment_iter(crop, pointwise, tile=TileSpec(64, 16, 3)))
    np.testing.assert_allclose(tiled.maps["ternary"], whole.maps["ternary"], atol=1e-5)
    np.testing.assert_array_equal(tiled.labels, whole.labels)


def test_unet_tiled_matches_untiled_within_tolerance(crop):
    model = _model("unet", base=4)
    with torch.no_grad():  # a livelier untrained net (gain 2) so that context matters
        for mod in model.net.modules():
            if isinstance(mod, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                mod.weight.mul_(2.0)
    whole = drain(segment_iter(crop, model, tile=TileSpec(512, 0, 1))).maps["ternary"]
    tiled = drain(segment_iter(crop, model, tile=TileSpec(128, 48, 2))).maps["ternary"]
    assert tiled.shape == whole.shape == (3, *crop.shape[:2])
    assert whole.std(axis=(1, 2)).max() > 0.01  # the maps are not flat
    err = np.abs(tiled - whole)
    # Measured: mean 0.0005, max 0.15 (tile borders lose context; the ramp weighs them little).
    assert err.mean() < 0.005 and err.max() < 0.3


def test_shipped_model_tiled_matches_untiled(monuseg):
    from napari_histo.core.seg.registry import default_model_name, load_model

    assert default_model_name() is not None, "the package ships a default segmentation model"
    model = load_model("default", "cpu")
    img = read_image(monuseg / "images" / "TCGA-CH-5767-01Z-00-DX1.png")[300:684, 200:648]
    key = "ternary" if "ternary" in model.spec.blank_maps(1, 1, 1) else "np"

    def maps(tile):
        return drain(segment_iter(img, model, tile=tile)).maps[key]

    whole, tiled, seams = (
        maps(TileSpec(512, 0, 1)),
        maps(TileSpec(128, 32, 2)),
        maps(TileSpec(128, 0, 2)),
    )
    # Measured on unet_monuseg_v2 (ternary maps): mean |difference| 0.016 with 32 px of overlap,
    # 0.020 without; on hovernet_shared_v7_avg (nucleus probability; v10 has its weights) 0.010
    # and 0.013.
    err = np.abs(tiled - whole).mean()
    assert err < 0.03
    assert err < np.abs(seams - whole).mean()


def test_tta_keeps_shapes_and_adds_a_spread_map(tiny_unet, crop):
    plain = drain(segment_iter(crop, tiny_unet))
    for tta in (True, 4):
        res = drain(segment_iter(crop, tiny_unet, tta=tta))
        assert isinstance(res, SegResult)
        assert res.labels.shape == crop.shape[:2] and res.labels.dtype == np.uint32
        assert res.confidence.dtype == np.float32
        assert res.confidence.min() >= 0.0 and res.confidence.max() <= 1.0
        assert res.maps["ternary"].shape == plain.maps["ternary"].shape
        assert res.maps[SPREAD_MAP].shape == (1, *crop.shape[:2])
        assert res.maps[SPREAD_MAP].max() > 0  # an untrained U-Net is not rotation invariant
        np.testing.assert_allclose(res.maps["ternary"].sum(axis=0), 1.0, atol=1e-4)


def test_tta_of_an_equivariant_model_changes_nothing(pointwise, crop):
    plain = drain(segment_iter(crop, pointwise))
    res = drain(segment_iter(crop, pointwise, tta=True))
    np.testing.assert_allclose(res.maps["ternary"], plain.maps["ternary"], atol=1e-5)
    assert res.maps[SPREAD_MAP].max() < 1e-3
    np.testing.assert_array_equal(res.labels, plain.labels)


class CountingSpec(PointwiseSpec):
    """The pointwise 'architecture' with multiple inference (4 flips) as its own default."""

    name = "test_pointwise_tta4"
    tta = 4
    calls = 0

    def predict(self, model, x):
        type(self).calls += 1
        return super().predict(model, x)


seg_spec.register(CountingSpec())


def test_architecture_default_tta_unless_the_caller_chooses(pointwise, crop):
    model = _model("test_pointwise_tta4")
    small = crop[:64, :64]
    for tta, calls in ((None, 4), (False, 1), (True, 8)):
        CountingSpec.calls = 0
        res = drain(segment_iter(small, model, tta=tta, tile=TileSpec(64, 0, 1)))
        assert CountingSpec.calls == calls
        assert (SPREAD_MAP in res.maps) == (calls > 1)
    # A spec without a ``tta`` attribute: none by default.
    assert SPREAD_MAP not in drain(segment_iter(small, pointwise)).maps


def test_tta_settings():
    assert tta_transforms(False) == ((0, False),)
    assert tta_transforms(True) == DIHEDRAL_8 and len(set(DIHEDRAL_8)) == 8
    assert tta_transforms(4) == DIHEDRAL_4
    with pytest.raises(HistoError):
        tta_transforms(3)


def test_cancel_by_closing(tiny_unet, monuseg):
    img = read_image(monuseg / "images" / f"{TILE}.png")[:600, :600]
    gen = segment_iter(img, tiny_unet, tile=TileSpec(128, 32, 1))
    ev = next(gen)
    assert ev.stage == "tile" and ev.step == 1 and ev.total > 10
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)


def test_normalizer_is_applied_first(pointwise, crop):
    class Invert:
        called = 0

        def transform(self, rgb):
            Invert.called += 1
            return 255 - rgb

    a = drain(segment_iter(crop, pointwise, normalizer=Invert()))
    b = drain(segment_iter(255 - crop, pointwise))
    assert Invert.called == 1
    np.testing.assert_allclose(a.maps["ternary"], b.maps["ternary"], atol=1e-6)


@pytest.mark.parametrize("name", ["blank_white.png", "all_black.png"])
def test_blank_image_gives_no_nuclei_and_a_note(tiny_unet, bad_inputs, name):
    img = read_image(bad_inputs / name)
    with pytest.warns(InputWarning, match="no tissue"):
        res = drain(segment_iter(img, tiny_unet))
    assert res.labels.shape == img.shape[:2] and res.labels.max() == 0
    assert res.notes and np.isfinite(res.confidence).all()


@pytest.mark.parametrize(
    "name", ["tiny_1x1.png", "thin_3x1000.png", "grayscale.png", "rgba.png", "rgb_uint16.tif",
             "rgb_float32_nan.tif", "cmyk.jpg", "pen_mark_green.png"],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore::napari_histo.core.errors.InputWarning")
def test_bad_but_readable_inputs_are_segmented(tiny_unet, bad_inputs, name):
    img = read_image(bad_inputs / name)  # (read_image re-enables InputWarning itself)
    res = drain(segment_iter(img, tiny_unet, tta=4))
    assert res.labels.shape == img.shape[:2]
    assert np.isfinite(res.confidence).all()
    assert res.confidence.min() >= 0.0 and res.confidence.max() <= 1.0


def test_nan_array_is_handled(tiny_unet, monuseg):
    img = read_image(monuseg / "images" / f"{TILE}.png")[:128, :128].astype(np.float32) / 255
    img[10:40, 10:40] = np.nan
    with pytest.warns(InputWarning, match="NaN"):
        res = drain(segment_iter(img, tiny_unet))
    assert np.isfinite(res.confidence).all() and res.labels.shape == (128, 128)


def test_five_channels_are_refused(tiny_unet):
    with pytest.raises(HistoError, match="5 channels"):
        drain(segment_iter(np.zeros((20, 20, 5), np.uint8), tiny_unet))


@pytest.fixture(scope="module")
def crop_labels(monuseg) -> np.ndarray:
    return read_labels(monuseg / "masks" / f"{TILE}.tif")[100:300, 200:440]


def test_metrics_of_the_real_crop_have_hand_computed_values(crop_labels):
    from napari_histo.core.seg.metrics import evaluate

    lab = crop_labels.astype(np.int64)
    ids = np.unique(lab[lab > 0])
    assert ids.size == 25
    # Perfect labels score 1 on every metric, whatever the ids are called.
    relabelled = np.where(lab > 0, lab * 7 + 1000, 0)
    assert (
        evaluate(lab, lab)
        == evaluate(lab, relabelled)
        == dict.fromkeys(("dice", "aji", "f1", "precision", "recall", "pq", "dq", "sq"), 1.0)
    )
    # Labels shifted 2 pixels to the right (what leaves on the right edge is lost). Each nucleus
    # keeps its id, so its own shifted copy is its match: IoU per id by plain numpy.
    pred = np.zeros_like(lab)
    pred[:, 2:] = lab[:, :-2]
    inter = np.array([((lab == g) & (pred == g)).sum() for g in ids])
    union = np.array([((lab == g) | (pred == g)).sum() for g in ids])
    iou = inter / union
    n_pred = len(np.unique(pred[pred > 0]))
    tp = int((iou > 0.5).sum())
    fp, fn = n_pred - tp, ids.size - tp
    fg_t, fg_p = lab > 0, pred > 0
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou[iou > 0.5].mean()
    expected = {
        "dice": 2 * (fg_t & fg_p).sum() / (fg_t.sum() + fg_p.sum()),
        # Every nucleus is 167+ px, so a 2-px shift keeps its own copy as its best match (AJI).
        "aji": inter.sum() / union.sum(),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "pq": dq * sq,
        "dq": dq,
        "sq": sq,
    }
    got = evaluate(lab, pred)
    assert got == pytest.approx(expected, rel=1e-12)
    # The case is not degenerate: a real loss of overlap, and every nucleus still matched.
    assert 0.7 < got["aji"] < got["dice"] < 0.95 and tp == ids.size == n_pred
    assert got["pq"] == pytest.approx(got["sq"]) and got["pq"] < 0.8


def _threshold_model() -> LoadedModel:
    """A hand-set 1x1 'net': a pixel is inside a nucleus when its (normalized) red is < -0.2."""
    net = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 0, 0, 0] = -20.0
        net.bias[1] = -4.0
        net.bias[2] = -100.0  # never boundary
    spec = seg_spec.get_arch("test_pointwise")
    return LoadedModel(net=net.eval(), spec=spec, card={}, device=torch.device("cpu"), name="thr")


def test_untrained_model_on_real_labels_is_scored(tiny_unet, crop, crop_labels):
    """The training loop's validation (segment, then score) gives the metrics of the labels."""
    from napari_histo.core.seg.train import validate

    lab = crop_labels
    # A crude but real prediction: the hand-set threshold net finds most nuclei.
    model = _threshold_model()
    pred = drain(segment_iter(crop, model)).labels
    scores = validate(model.net, model.spec, model.device, [("crop", crop, lab)])
    per = scores["per_image"]["crop"]
    assert {k: v for k, v in scores.items() if k != "per_image"} == {
        k: v for k, v in per.items() if not k.startswith("n_")
    }
    assert per["n_true"] == len(np.unique(lab)) - 1 and per["n_pred"] == pred.max()
    fg_t, fg_p = lab > 0, pred > 0
    assert per["dice"] == pytest.approx(2 * (fg_t & fg_p).sum() / (fg_t.sum() + fg_p.sum()))
    # One-to-one matches at IoU > 0.5, counted by hand.
    t_ids, p_ids = np.unique(lab[fg_t]), np.unique(pred[fg_p])
    tp = sum(
        ((lab == g) & (pred == s)).sum() / ((lab == g) | (pred == s)).sum() > 0.5
        for g in t_ids
        for s in np.unique(pred[(lab == g) & fg_p])
    )
    assert per["precision"] == pytest.approx(tp / p_ids.size)
    assert per["recall"] == pytest.approx(tp / t_ids.size)
    assert 0.7 < per["dice"] < 0.95 and 0 < tp < min(t_ids.size, p_ids.size)
    # The untrained U-Net finds nothing on this crop: the empty-prediction scores.
    untrained = validate(tiny_unet.net, tiny_unet.spec, tiny_unet.device, [("crop", crop, lab)])
    assert drain(segment_iter(crop, tiny_unet)).labels.max() == 0
    assert {k: untrained[k] for k in ("dice", "aji", "recall", "pq", "precision")} == {
        "dice": 0.0, "aji": 0.0, "recall": 0.0, "pq": 0.0, "precision": 1.0,
    }  # fmt: skip


def test_cpu_precision_policy_follows_the_environment(monkeypatch):
    from napari_histo.core.device import amp_dtype

    cpu = torch.device("cpu")
    monkeypatch.setenv("NAPARI_HISTO_PRECISION", "float32")
    assert amp_dtype(cpu) is None
    assert amp_dtype(cpu, "bfloat16") is torch.bfloat16  # an explicit choice wins
    monkeypatch.setenv("NAPARI_HISTO_PRECISION", "bfloat16")
    assert amp_dtype(cpu) is torch.bfloat16
    monkeypatch.setenv("NAPARI_HISTO_PRECISION", "fp64")
    with pytest.raises(HistoError, match="precision"):
        amp_dtype(cpu)


def test_cpu_bfloat16_keeps_the_first_level_in_float32_and_float32_labels(monuseg, monkeypatch):
    """On CPUs with native bfloat16 the shipped U-Net runs under autocast with its first encoder
    level in float32: its labels stay float32's (AJI >= 0.99, the bar for a faster path); every
    module in bfloat16 is an opt-in. Elsewhere the default is float32 itself."""
    from napari_histo.core import device
    from napari_histo.core.seg.metrics import aggregated_jaccard_index
    from napari_histo.core.seg.registry import load_model

    # The U-Net's agreement was measured (bench/bf16_agreement.py); HoVer-Net's was not, so it
    # runs in float32 everywhere.
    assert not getattr(load_model("default", "cpu").spec, "cpu_autocast", False)
    model = load_model("unet_histo80_v2", "cpu")
    assert model.spec.cpu_autocast and model.spec.cpu_float32_modules == ("encoder.levels.0",)
    img = read_image(monuseg / "images" / "TCGA-CH-5767-01Z-00-DX1.png")[:512, :512]

    def run():
        return drain(segment_iter(img, model, tta=False))

    monkeypatch.setenv("NAPARI_HISTO_PRECISION", "float32")
    ref = run()
    monkeypatch.setenv("NAPARI_HISTO_PRECISION", "bfloat16")
    full = run()
    monkeypatch.delenv("NAPARI_HISTO_PRECISION")
    if device.amp_dtype(torch.device("cpu")) is None:  # no native bfloat16: float32 itself
        assert np.array_equal(run().labels, ref.labels)
    # As on a CPU with native bfloat16 (this one may emulate it):
    monkeypatch.setattr(device, "amp_dtype", lambda dev, precision="auto": torch.bfloat16)
    mixed = run()
    diff = np.abs(mixed.maps["ternary"] - ref.maps["ternary"]).max()
    assert 0 < diff < np.abs(full.maps["ternary"] - ref.maps["ternary"]).max()
    assert aggregated_jaccard_index(ref.labels, mixed.labels) >= 0.99
    assert aggregated_jaccard_index(ref.labels, full.labels) >= 0.95


def test_float32_view_leaves_the_shared_network_alone(tiny_unet):
    """The autocast wrapper runs the named submodule in float32 through a view of the network:
    the same parameters, and the network other threads use is not modified."""
    from napari_histo.core.seg.inference import _CpuAutocast

    net = tiny_unet.net.eval()
    modules = [id(m) for m in net.modules()]
    wrapped = _CpuAutocast(net, torch.bfloat16, ("encoder.levels.0",))
    assert [id(m) for m in net.modules()] == modules
    assert type(net.encoder.levels[0]).__name__ == "Sequential"
    assert wrapped.net.encoder.levels[0].inner is net.encoder.levels[0]
    assert wrapped.net.decoder is net.decoder
    seen = {}
    hook = net.encoder.levels[0].register_forward_hook(lambda m, i, o: seen.update(first=o.dtype))
    hook2 = net.encoder.levels[1].register_forward_hook(lambda m, i, o: seen.update(second=o.dtype))
    with torch.inference_mode():
        out = wrapped(torch.rand(1, 3, 64, 64))
    hook.remove(), hook2.remove()
    assert seen == {"first": torch.float32, "second": torch.bfloat16}
    assert out.dtype == torch.float32


def test_bare_glass_tiles_skip_the_network_and_keep_the_labels(monuseg, monkeypatch):
    """Tiles with no tissue-like pixel get background maps without a forward pass; the labels
    of an image that is half glass stay those of the full computation."""
    from napari_histo.core.seg import inference
    from napari_histo.core.seg.metrics import aggregated_jaccard_index
    from napari_histo.core.seg.registry import load_model

    model = load_model("default", "cpu")
    tissue = read_image(monuseg / "images" / "TCGA-CH-5767-01Z-00-DX1.png")[:512, :384]
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal([236, 232, 238], 2.0, (512, 384, 3)), 0, 255).astype(np.uint8)
    img = np.concatenate([tissue, glass], axis=1)  # 512 x 768, the right half glass
    assert inference.tiles_with_tissue(
        np.stack([tissue[:256, :256], glass[:256, :256]])
    ).tolist() == [True, False]
    small = TileSpec(256, 32, 4)  # tiles that fall wholly on the glass half
    calls = []
    real = model.spec.predict
    monkeypatch.setattr(model.spec, "predict", lambda net, x: calls.append(len(x)) or real(net, x))
    fast = drain(segment_iter(img, model, tta=False, tile=small))
    n_fast = sum(calls)
    monkeypatch.setattr(type(model.spec), "blank_maps", None)
    calls.clear()
    full = drain(segment_iter(img, model, tta=False, tile=small))
    assert n_fast < 0.7 * sum(calls)
    assert aggregated_jaccard_index(full.labels, fast.labels) >= 0.99
    assert not fast.labels[:, 400:].any()  # nothing found on glass


def test_staged_pass_labels_its_events_returns_its_result_and_cancels_the_inner_pass():
    from napari_histo.core.progress import Progress, drain, staged

    closed = []

    def inner():
        try:
            yield Progress(1, 2, "tile")
            yield Progress(2, 2, "tile")
            return "labels"
        finally:
            closed.append(True)

    events = []
    assert drain(staged(inner(), "guessing:"), events.append) == "labels"
    assert [str(e) for e in events] == ["guessing: tile 1/2", "guessing: tile 2/2"]
    pass_ = inner()  # held here, so only an explicit close can end it
    cancelled = staged(pass_, "enlarged x2.00:")
    next(cancelled)
    cancelled.close()  # what a widget's cancel does to the job's generator
    assert closed == [True, True]
