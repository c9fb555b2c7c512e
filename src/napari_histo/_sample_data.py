"""Sample data shipped in resources/samples (see resources/samples/ATTRIBUTION.md)."""

from __future__ import annotations

from .core.io import read_image, read_labels
from .core.resources import resource_path

HE_TILE = "he_monuseg_TCGA-A7-A13E.png"
HE_TILE_NUCLEI = "he_monuseg_TCGA-A7-A13E_nuclei.tif"
HE_TARGET = "he_tiatoolbox_target.png"
TILE_LAYER = "H&E tile (MoNuSeg TCGA-A7-A13E)"
TARGET_LAYER = "H&E template (tiatoolbox target)"


def he_tile() -> list[tuple]:
    """A 1000x1000 40x H&E breast tile from MoNuSeg 2018 with its hand-drawn nuclei (CC BY-NC-SA 4.0)."""
    image = read_image(resource_path("samples", HE_TILE))
    nuclei = read_labels(resource_path("samples", HE_TILE_NUCLEI)).astype("uint32")
    return [
        (image, {"name": TILE_LAYER, "rgb": True}, "image"),
        (
            nuclei,
            {"name": "ground-truth nuclei (MoNuSeg)", "visible": False, "opacity": 0.5},
            "labels",
        ),
    ]


def he_target() -> list[tuple]:
    """A 1000x1000 H&E stain-normalization target from tiatoolbox (BSD-3-Clause)."""
    image = read_image(resource_path("samples", HE_TARGET))
    return [(image, {"name": TARGET_LAYER, "rgb": True}, "image")]


def ihc_image() -> list[tuple]:
    """scikit-image's immunohistochemistry (IHC, DAB) image, bundled with scikit-image."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "IHC (scikit-image)", "rgb": True}, "image")]
