"""npe2 reader: H&E/IHC tiles as RGB image layers, pyramidal slides as lazy multiscale layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .core.io import is_image_path, is_slide, read_image, read_mpp, read_slide

LayerData = tuple[Any, dict, str]


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return a reader for image paths this plugin understands, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(is_image_path(p) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read each path into layer data; slides come back as lazy multiscale RGB layers."""
    paths = [path] if isinstance(path, str) else list(path)
    return [_read_one(Path(p)) for p in paths]


def _read_one(path: Path) -> LayerData:
    name = path.name.split(".")[0]
    # The pixel size the file records (None for most PNG/JPEG tiles): the Segment widget shows it.
    metadata = {"path": str(path), "mpp": read_mpp(path)}
    if is_slide(path):
        levels = read_slide(path)
        meta = {
            "name": name,
            "rgb": True,
            "multiscale": len(levels) > 1,
            "metadata": metadata,
        }
        return (levels if len(levels) > 1 else levels[0], meta, "image")
    image = read_image(path)
    return (image, {"name": name, "rgb": True, "metadata": metadata}, "image")
