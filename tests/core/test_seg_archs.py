"""Every architecture fulfils the ArchSpec contract on real H&E crops and learns on one batch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_histo.core.io import read_image, read_labels  # noqa: E402
from napari_histo.core.seg import spec  # noqa: E402
from napari_histo.core.seg.targets import hv_maps  # noqa: E402

CROP = 96


@pytest.fixture(scope="module")
def crops(monuseg):
    """Two real 96x96 crops (RGB uint8, instance labels) from two MoNuSeg tiles."""
    names = sorted(p.stem for p in (monuseg / "images").glob("*.png"))[:2]
    rgb, lab = [], []
    for name, (y, x) in zip(names, [(200, 300), (500, 100)], strict=True):
        rgb.append(read_image(monuseg / "images" / f"{name}.png")[y : y + CROP, x : x + CROP])
        lab.append(read_labels(monuseg / "masks" / f"{name}.tif")[y : y + CROP, x : x + CROP])
    assert all(la.max() > 5 for la in lab)
    return np.stack(rgb), np.stack(lab)


def batch(arch, crops):
    rgb, lab = crops
    per_image = [arch.make_targets(la) for la in lab]
    targets = {k: torch.from_numpy(np.stack([t[k] for t in per_image])) for k in per_image[0]}
    return spec.to_input(rgb), targets


def check_contract(name, crops, steps=4, lr=2e-3, **build):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    arch = spec.get_arch(name)
    assert arch.name == name
    model = arch.build(**build)
    x, targets = batch(arch, crops)
    assert x.shape[-1] % arch.size_multiple == 0
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps + 1):
        loss = arch.train_loss(model, x, targets)
        assert loss.ndim == 0 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    maps = arch.predict(model, x)
    assert not model.training
    for m in maps.values():
        assert m.shape[0] == 2 and m.shape[-2:] == x.shape[-2:] and torch.isfinite(m).all()
    labels, conf = arch.instances({k: v[0].numpy() for k, v in maps.items()})
    assert labels.shape == (CROP, CROP) and labels.dtype == np.uint32
    assert conf.dtype == np.float32 and conf.min() >= 0 and conf.max() <= 1
    return arch, model, maps


def check_ternary(maps):
    t = maps["ternary"]
    assert t.shape[1] == 3 and t.min() >= 0 and t.max() <= 1
    torch.testing.assert_close(t.sum(1), torch.ones_like(t[:, 0]))


def test_unet(crops):
    arch, model, maps = check_contract("unet", crops)
    check_ternary(maps)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n_params < 2_500_000
    assert arch.size_multiple == 16
    targets = arch.make_targets(crops[1][0])
    assert set(targets) >= {"ternary", "weight"}
    assert targets["ternary"].dtype == np.int64 and targets["weight"].dtype == np.float32


def test_ternary_tta_is_spatial(crops):
    arch = spec.get_arch("unet")
    t = torch.from_numpy(arch.make_targets(crops[1][0])["ternary"])[None, None].float()
    for k in range(4):
        for flip in (False, True):
            tx = torch.rot90(torch.flip(t, dims=(3,)) if flip else t, k, dims=(2, 3))
            assert torch.equal(arch.invert_tta({"ternary": tx}, k, flip)["ternary"], t)


def test_unknown_arch():
    from napari_histo.core.errors import HistoError

    with pytest.raises(HistoError, match="unknown architecture"):
        spec.get_arch("segformer")


def rot_flip(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """The input transform of the TTA contract, on (..., H, W) numpy arrays."""
    return np.rot90(np.flip(a, -1) if flip else a, k, axes=(-2, -1))


def test_hover_tta_inverts_hv_vectors():
    arch = spec.get_arch("hovernet")
    yy, xx = np.mgrid[:64, :64]
    lab = np.zeros((64, 64), np.int32)
    lab[((yy - 30) / 14) ** 2 + ((xx - 24) / 8) ** 2 <= 1] = 1  # an ellipse
    lab[((yy - 45) ** 2 + (xx - 48) ** 2) <= 81] = 2  # a disc
    lab[5:12, 40:60] = 3  # a rectangle
    want = torch.from_numpy(hv_maps(lab))[None]
    for k in range(4):
        for flip in (False, True):
            seen = torch.from_numpy(hv_maps(np.ascontiguousarray(rot_flip(lab, k, flip))))[None]
            back = arch.invert_tta({"hv": seen, "np": seen[:, :1]}, k, flip)
            torch.testing.assert_close(back["hv"], want, atol=1e-5, rtol=0)
            assert back["np"].shape == (1, 1, 64, 64)


def test_fullnet(crops):
    arch, model, maps = check_contract("fullnet", crops)
    check_ternary(maps)
    assert arch.size_multiple == 1
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    # Full resolution: an odd-sized input comes back at its own size.
    assert model(torch.zeros(1, 3, 37, 41)).shape == (1, 3, 37, 41)
    targets = arch.make_targets(crops[1][0])
    assert set(targets) == {"ternary", "weight", "groups"}
    assert ((targets["groups"] > 0) == (targets["ternary"] == 1)).all()


def receptive_field(model) -> int:
    """Receptive field of a chain of stride-1 convolutions (a dense block's longest path runs
    through every layer)."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return 1 + sum((m.kernel_size[0] - 1) * m.dilation[0] for m in convs)


def test_fullnet_hybrid_dilations_are_the_authors():
    from napari_histo.core.seg.fullnet import FullNet

    model = FullNet()
    convs = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    rates = [m.dilation[0] for m in convs if m.kernel_size[0] == 3]
    # FullNet-varCE's choose_hybrid_dilations for blocks (1, 2, 4, 8, 16, 4, 1) of 4 layers.
    assert rates == [
        *(1, 1, 1, 1), *(1, 2, 3, 2), *(1, 2, 5, 9), *(3, 7, 10, 13),
        *(13, 15, 17, 19), *(1, 2, 5, 9), *(1, 1, 1, 1),
    ]  # fmt: skip
    assert receptive_field(model) == 299
    assert receptive_field(FullNet(n_layers=6, growth_rate=4)) == 437
    with pytest.raises(ValueError, match="4 or 6 layers"):
        FullNet(n_layers=5)


def test_per_architecture_inference_defaults():
    fullnet = spec.get_arch("fullnet")
    # Qu et al.'s test.py/options.py: min_area 20, radius 2, tta on (8 flips and rotations).
    assert (fullnet.min_size, fullnet.radius, fullnet.tta) == (20, 2, True)
    assert not any(spec.get_arch(a).tta for a in ("unet", "hovernet", "maskrcnn"))
    # FullNet's post-processing restores its own perfect targets.
    truth = np.zeros((40, 40), np.int32)
    truth[5:20, 5:20] = 1
    truth[20:35, 8:30] = 2  # touching the first
    probs = np.eye(3, dtype=np.float32)[fullnet.make_targets(truth)["ternary"]]
    labels, _ = fullnet.instances({"ternary": probs.transpose(2, 0, 1)})
    # Only the corners are lost (3 px each: a disk of radius 2 does not reach them).
    assert labels.max() == 2 and (labels > 0).sum() == (truth > 0).sum() - 8 * 3


def test_hovernet(crops):
    arch, model, maps = check_contract("hovernet", crops, steps=3)
    assert maps["np"].shape[1] == 1 and maps["np"].min() >= 0 and maps["np"].max() <= 1
    assert maps["hv"].shape[1] == 2 and maps["hv"].abs().max() <= 1
    targets = arch.make_targets(crops[1][0])
    assert targets["hv"].shape == (2, CROP, CROP) and targets["np"].max() == 1


def test_maskrcnn(crops):
    arch, model, maps = check_contract("maskrcnn", crops, steps=3, lr=1e-4)
    check_ternary(maps)
    assert model.transform.image_mean == [0.0, 0.0, 0.0]
    # No resizing inside: the transform keeps a tile's pixel size.
    images, _ = model.transform([torch.zeros(3, CROP, CROP)])
    assert images.image_sizes == [(CROP, CROP)]
    # detect() filters at the spec's threshold and leaves the shared model's own as it was.
    own = model.roi_heads.score_thresh
    assert own != arch.score_threshold
    dets = arch.detect(model, spec.to_input(crops[0][:1]))
    assert len(dets) == 1 and (dets[0].scores >= arch.score_threshold).all()
    assert model.roi_heads.score_thresh == own


def test_maskrcnn_targets_and_rasterize(crops):
    from napari_histo.core.seg.maskrcnn import detection_targets, rasterize

    lab = torch.zeros(20, 30, dtype=torch.int64)
    lab[2:6, 3:9] = 4
    lab[10:19, 20:22] = 9
    det = detection_targets(lab)
    assert det["boxes"].tolist() == [[3, 2, 9, 6], [20, 10, 22, 19]]
    assert det["masks"].shape == (2, 20, 30) and det["masks"][1].sum() == 18
    empty = detection_targets(torch.zeros(8, 8, dtype=torch.int64))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 8, 8)

    # Perfect detections rasterize to the ternary targets, and back to the same instances.
    arch = spec.get_arch("maskrcnn")
    truth = crops[1][1]
    ids = np.unique(truth)[1:]
    probs = rasterize(
        (truth[None] == ids[:, None, None]).astype(np.float32), np.ones(len(ids)), truth.shape
    )
    from napari_histo.core.seg.targets import ternary_labels

    assert np.array_equal(probs.argmax(0), ternary_labels(truth))
    labels, _ = arch.instances({"ternary": probs})
    from napari_histo.core.seg.metrics import aggregated_jaccard_index

    assert aggregated_jaccard_index(truth, labels) > 0.97
    # A detection scored under 0.5 does not survive the argmax.
    weak = rasterize(
        (truth[None] == ids[:1, None, None]).astype(np.float32), np.array([0.4]), truth.shape
    )
    assert weak.argmax(0).max() == 0

    def train_loss_on_empty_batch():
        model = arch.build()
        x = spec.to_input(crops[0])
        loss = arch.train_loss(
            model, x, {"instances": torch.zeros(2, CROP, CROP, dtype=torch.int64)}
        )
        loss.backward()
        return float(loss.detach())

    assert np.isfinite(train_loss_on_empty_batch())


def test_hovernet_shared_decoder_starts_from_a_two_decoder_model(crops):
    from napari_histo.core.seg.hovernet import shared_decoder_from

    _, parent, parent_maps = check_contract("hovernet", crops, steps=2)
    net = shared_decoder_from(parent.state_dict())
    assert not hasattr(net, "hv_decoder")
    assert sum(p.numel() for p in net.parameters()) < 0.75 * sum(
        p.numel() for p in parent.parameters()
    )
    arch = spec.get_arch("hovernet")
    x, _ = batch(arch, crops)
    maps = arch.predict(net, x)
    torch.testing.assert_close(maps["np"], parent_maps["np"])  # the NP branch is the parent's
    assert not torch.allclose(maps["hv"], parent_maps["hv"], atol=1e-2)  # the HV head is new
    check_contract("hovernet", crops, steps=3, shared_decoder=True)
