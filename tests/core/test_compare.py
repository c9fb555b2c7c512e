"""Which normalization helps here? Every method judged by the segmentation it leads to."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histo.core.io import read_image, read_labels
from napari_histo.core.progress import drain
from napari_histo.core.seg.compare import AS_SCANNED, compare_normalizations_iter
from napari_histo.core.seg.metrics import aggregated_jaccard_index

#: The frozen colon section (stained unlike the FFPE training tiles) and a breast template.
TILE, TEMPLATE = "TCGA-NH-A8F7-01A-01-TS1", "TCGA-A7-A13E-01Z-00-DX1"


@pytest.fixture(scope="module")
def case(monuseg):
    img = read_image(monuseg / "images" / f"{TILE}.png")[300:556, 200:456]
    lab = read_labels(monuseg / "masks" / f"{TILE}.tif")[300:556, 200:456]
    template = read_image(monuseg / "images" / f"{TEMPLATE}.png")[:256, :256]
    return img, lab, template


@pytest.fixture(scope="module")
def with_truth(case):
    img, lab, template = case
    methods = [AS_SCANNED, "macenko", "reinhard"]
    return drain(compare_normalizations_iter(img, [template], methods, device="cpu", truth=lab))


def test_every_method_is_segmented_and_scored_against_the_truth(case, with_truth):
    img, lab, _ = case
    comp = with_truth
    assert [o.method for o in comp.outcomes] == [AS_SCANNED, "macenko", "reinhard"]
    scanned = comp.outcomes[0]
    assert np.array_equal(scanned.image, img)  # "none" leaves the colours as scanned
    assert not np.array_equal(comp.outcomes[1].image, img)
    for o in comp.outcomes:
        assert o.labels.shape == lab.shape and o.n_nuclei == len(np.unique(o.labels)) - 1
        assert o.aji == pytest.approx(aggregated_jaccard_index(lab, o.labels))
        assert 0 < o.confidence <= 1
    # Ranked by AJI against the truth when it is given.
    assert comp.best == max(comp.outcomes, key=lambda o: o.aji).method
    assert comp.ranked_by.startswith("AJI")


def test_agreement_is_the_mean_pairwise_aji(with_truth):
    comp = with_truth
    n = len(comp.outcomes)
    assert comp.agreement.shape == (n, n) and np.allclose(np.diag(comp.agreement), 1)
    a, b = comp.outcomes[0], comp.outcomes[1]
    assert comp.agreement[0, 1] == pytest.approx(aggregated_jaccard_index(a.labels, b.labels))
    assert a.agreement == pytest.approx((comp.agreement[0].sum() - 1) / (n - 1))
    rows = comp.rows()
    assert [r["best"] for r in rows].count(True) == 1 and "AJI vs truth" in rows[0]


def test_without_truth_the_consensus_wins_and_cancel_stops(case):
    img, _, template = case
    comp = drain(
        compare_normalizations_iter(img, [template], [AS_SCANNED, "macenko"], device="cpu")
    )
    assert comp.ranked_by.startswith("agreement") and comp.outcomes[0].aji is None
    gen = compare_normalizations_iter(
        img, [template], [AS_SCANNED, "macenko", "reinhard"], device="cpu"
    )
    stages = []
    for ev in gen:
        stages.append(ev.stage)
        if ev.stage == "compare":
            gen.close()  # cancel after the first method
            break
    assert stages.count("compare") == 1
