"""Translating an image with a loaded generator, tile by tile on the core tiling engine."""

from __future__ import annotations

import os

import numpy as np

from ..io import to_rgb_uint8
from ..progress import ProgressGen, drain
from ..tiling import TileSpec, predict_tiled_iter
from .model import DEFAULT_MODEL, Translator, load_translator


def translate_iter(
    image: np.ndarray,
    model: Translator | str | os.PathLike = DEFAULT_MODEL,
    tile: int = 256,
    overlap: int = 32,
    direction: str = "ihc2he",
    device: str = "auto",
    batch: int = 1,
) -> ProgressGen[np.ndarray]:
    """Translate an image tile by tile, blending overlaps; a progress generator.

    Parameters
    ----------
    image : array
        Any array :func:`~napari_histo.core.io.to_rgb_uint8` accepts (grayscale, RGBA, float...).
    model : Translator, folder or shipped name
        A loaded :class:`Translator`, or what :func:`load_translator` takes (cached).
    tile, overlap : int
        Tile size (rounded up to a multiple of 4) and overlap between neighbouring tiles; the
        image is reflect-padded by ``overlap // 2`` so its borders are not tile borders.
    direction, device : str
        Used only when ``model`` is not loaded yet.
    batch : int
        Tiles per forward pass.

    Returns
    -------
    ndarray
        RGB uint8 of the input's height and width.
    """
    import contextlib

    import torch

    from ..device import amp_dtype

    rgb = to_rgb_uint8(image, "image")
    tr = model if isinstance(model, Translator) else load_translator(model, direction, device)
    tile = max(16, int(np.ceil(tile / 4) * 4))
    spec = TileSpec(tile, int(min(max(0, overlap), tile // 2)), max(1, int(batch)))
    # bfloat16 where the device runs it natively: 1.7x on this project's CPU, outputs within
    # one grey level of float32 (bench/results/translate.md); NAPARI_HISTO_PRECISION=float32 opts out.
    dtype = amp_dtype(tr.device)

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(tr.device.type, dtype=dtype)

    def predict(tiles: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(tr.device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.inference_mode(), autocast():
            y = tr.net(x).float().clamp(-1, 1)
        return {"rgb": ((y + 1.0) * 127.5).cpu().numpy()}

    maps = yield from predict_tiled_iter(rgb, predict, spec, size_multiple=4)
    out = maps["rgb"].transpose(1, 2, 0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def translate(
    image: np.ndarray,
    model: Translator | str | os.PathLike = DEFAULT_MODEL,
    tile: int = 256,
    overlap: int = 32,
    direction: str = "ihc2he",
    device: str = "auto",
) -> np.ndarray:
    """Blocking :func:`translate_iter`: RGB uint8 of the input's height and width."""
    return drain(translate_iter(image, model, tile, overlap, direction, device))
