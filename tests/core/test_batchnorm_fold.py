"""BatchNorms folded into their convolutions for float32 inference: same maps, original untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histo.core.io import read_image
from napari_histo.core.progress import drain
from napari_histo.core.seg import spec as seg_spec
from napari_histo.core.seg.batchnorm_fold import fold_batchnorm

TILE = "TCGA-A7-A13E-01Z-00-DX1"


def _bn_count(net) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


@pytest.fixture(scope="module")
def crops(monuseg) -> torch.Tensor:
    img = read_image(monuseg / "images" / f"{TILE}.png")
    return seg_spec.to_input(np.stack([img[100:228, 200:328], img[600:728, 500:628]]))


@pytest.mark.parametrize(
    ("arch", "build"),
    [("unet", {"base": 4}), ("fullnet", {}), ("hovernet", {"shared_decoder": True})],
)
def test_folded_network_gives_the_same_maps_and_leaves_the_original_alone(arch, build, crops):
    spec = seg_spec.get_arch(arch)
    torch.manual_seed(0)
    net = spec.build(**build)
    # Running statistics of real H&E crops (not the initial 0/1, which would make folding trivial).
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(crops)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    n_bn = _bn_count(net)
    assert n_bn > 0

    folded = fold_batchnorm(net)
    assert folded is not net
    assert _bn_count(folded) == 0  # every BatchNorm of these networks follows a convolution
    assert _bn_count(net) == n_bn
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.inference_mode():
        want, got = spec.predict(net, crops), spec.predict(folded, crops)
    assert want.keys() == got.keys()
    for k in want:
        assert want[k].std() > 1e-3  # the maps are not flat
        torch.testing.assert_close(got[k], want[k], atol=2e-4, rtol=1e-3)


def test_a_training_network_is_not_folded():
    net = seg_spec.get_arch("unet").build(base=4).train()
    assert fold_batchnorm(net) is net


def test_float32_inference_runs_the_folded_network_with_the_same_labels(monuseg, monkeypatch):
    """The shipped default segments a real crop through the folded copy (the spy sees it) and
    its labels are those of the network as trained."""
    from napari_histo.core.seg import batchnorm_fold
    from napari_histo.core.seg.inference import segment_iter
    from napari_histo.core.seg.registry import load_model

    monkeypatch.setenv("NAPARI_HISTO_PRECISION", "float32")
    model = load_model("default", "cpu")
    img = read_image(monuseg / "images" / f"{TILE}.png")[300:684, 200:584]
    seen = []
    real = batchnorm_fold.fold_batchnorm

    def spy(net):
        out = real(net)
        seen.append(_bn_count(out))
        return out

    monkeypatch.setattr(batchnorm_fold, "fold_batchnorm", spy)
    folded = drain(segment_iter(img, model, tta=False)).labels
    assert seen == [0] and _bn_count(model.net) > 0
    monkeypatch.setattr(batchnorm_fold, "fold_batchnorm", lambda net: net)
    plain = drain(segment_iter(img, model, tta=False)).labels
    assert plain.max() > 20
    np.testing.assert_array_equal(folded, plain)
