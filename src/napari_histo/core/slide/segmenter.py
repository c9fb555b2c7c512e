"""A model as a picklable segmenter for slide processing: each dask worker loads it once."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ..progress import Progress


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


def guess_slide_mpp_iter(
    levels: list, model: str = "default", device: str = "auto", side: int = 1024
) -> Generator[Progress, None, tuple[float | None, str]]:
    """A slide whose file records no pixel size: guess it from the nuclei (``seg.scale``).

    The window of ``side`` px with the most tissue is segmented as it is; when its median
    nucleus is smaller than the model's card says, the slide is treated as if its pixel size
    were the model's times the guessed factor, so that every window is enlarged alike (a guess
    per window would enlarge neighbours differently). Returns ``(mpp or None, what was seen)``.
    """
    from ..seg.registry import load_model
    from ..seg.scale import guess_settings
    from ..seg.workflow import guess_scale_iter, model_mpp
    from .segment import tissue_grid

    net = load_model(model, device=device)
    if guess_settings(net.card) is None or model_mpp(net.card) is None:
        return None, "pixel size unknown, segmented as it is (this model does not guess it)"
    base = levels[0]
    shape0 = tuple(base.shape[:2])
    grid = tissue_grid(levels[-1], shape0, side)
    i, j = np.unravel_index(int(np.argmax(grid)), grid.shape)
    r0 = min(int(i) * side, max(0, shape0[0] - side))
    c0 = min(int(j) * side, max(0, shape0[1] - side))
    window = np.asarray(base[r0 : r0 + side, c0 : c0 + side])[..., :3]
    factor, why, _ = yield from guess_scale_iter(window, net)
    return (factor * model_mpp(net.card) if factor else None), why
