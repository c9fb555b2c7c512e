"""A strictly local segmenter for testing the slide machinery without a model."""

from __future__ import annotations

import numpy as np

HALO = 48


class ThresholdSegmenter:
    """A deterministic, strictly local segmenter: haematoxylin threshold, components < HALO wide."""

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from scipy import ndimage
        from skimage.color import rgb2hed

        mask = ndimage.binary_opening(rgb2hed(rgb)[..., 0] > 0.06, iterations=1)
        labels, _ = ndimage.label(mask)
        for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is not None and max(s.stop - s.start for s in sl) >= HALO:
                labels[sl][labels[sl] == idx] = 0
        return labels
