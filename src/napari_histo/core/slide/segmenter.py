"""A model as a picklable segmenter for slide processing: each dask worker loads it once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelSegmenter:
    """Callable RGB window -> instance labels, by model name or folder.

    Only the model's name travels to dask workers; each worker process loads the weights once
    (the model registry caches loaded models) and reuses them for every tile it is given.
    """

    model: str = "default"
    device: str = "auto"
    tta: bool | int | None = None  # None: the architecture's default
    mpp: float | None = None  # the slide's pixel size: windows are resampled to the model's

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from ..progress import drain
        from ..seg.workflow import segment_array_iter

        # The window is already one block of the slide's block tiling: segment it whole.
        result = drain(
            segment_array_iter(rgb, self.model, self.device, self.tta, blocks=None, mpp=self.mpp)
        )
        return np.asarray(result.labels, dtype=np.uint32)
