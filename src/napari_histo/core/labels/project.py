"""A correction project: image + corrected-labels pairs on disk, the layout ``train`` reads.

::

    PROJECT/images/<stem>.png      the RGB image (or region) the user corrected
    PROJECT/masks/<stem>.tif       its instance labels (uint32, 0 = background)
    PROJECT/pairs.json             when each pair was saved and from where

``napari-histo train --images PROJECT/images --masks PROJECT/masks`` consumes it as it is.
Every write is atomic, so an autosave interrupted by a crash leaves the previous pair intact.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import HistoError
from ..io import read_image, read_labels, write_image, write_labels

DEFAULT_FOLDER_NAME = "napari-histo-project"


@dataclass
class Pair:
    """One saved (image, labels) pair."""

    stem: str
    image: Path
    mask: Path
    saved: float
    source: str = ""
    n_nuclei: int = 0


def default_project_dir(image_path: str | os.PathLike | None) -> Path:
    """Beside the image when it has a file; else ``~/napari-histo/projects/default``."""
    if image_path:
        return Path(image_path).resolve().parent / DEFAULT_FOLDER_NAME
    return Path.home() / "napari-histo" / "projects" / "default"


def safe_stem(name: str) -> str:
    """A file-name-safe stem from a layer name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "image"


class Project:
    """A folder of corrected pairs."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._listing: tuple[tuple, list[Pair]] | None = None  # (folder signature, pairs)

    @property
    def images_dir(self) -> Path:
        return self.folder / "images"

    @property
    def masks_dir(self) -> Path:
        return self.folder / "masks"

    def _index(self) -> dict:
        p = self.folder / "pairs.json"
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def save_pair(self, stem: str, image: np.ndarray, labels: np.ndarray, source: str = "") -> Pair:
        """Save (or overwrite) a pair atomically; the image is written only when it changed."""
        stem = safe_stem(stem)
        image = np.asarray(image)
        labels = np.asarray(labels)
        if image.shape[:2] != labels.shape:
            raise HistoError(f"labels {labels.shape} do not match the image {image.shape[:2]}")
        img_path = self.images_dir / f"{stem}.png"
        if not img_path.exists() or not np.array_equal(read_image(img_path), image):
            write_image(img_path, image)
        mask_path = write_labels(self.masks_dir / f"{stem}.tif", labels)
        n = int(len(np.unique(labels)) - (1 if (labels == 0).any() else 0))
        pair = Pair(stem, img_path, mask_path, time.time(), source, n)
        index = self._index()
        index[stem] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(pair).items()}
        atomic_write_text(self.folder / "pairs.json", json.dumps(index, indent=1))
        self._listing = None  # even where the file system's clock is too coarse to tell
        return pair

    def _signature(self) -> tuple:
        """What changes when a pair is added, replaced or removed (three stats, no reads)."""
        sig = []
        for p in (self.images_dir, self.masks_dir, self.folder / "pairs.json"):
            try:
                st = p.stat()
                sig.append((st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append(None)
        return tuple(sig)

    def pairs(self) -> list[Pair]:
        """Saved pairs whose image and mask both exist, newest first.

        The listing is kept until the folder changes (the widgets ask on every layer event, on
        napari's GUI thread: three stats instead of reading the index and every mask's stat).
        """
        sig = self._signature()
        if self._listing is not None and self._listing[0] == sig:
            return list(self._listing[1])
        out = self._list_pairs()
        self._listing = (sig, out)
        return list(out)

    def _list_pairs(self) -> list[Pair]:
        index = self._index()
        out = []
        if not self.masks_dir.is_dir():
            return out
        for mask in self.masks_dir.glob("*.tif"):
            img = self.images_dir / f"{mask.stem}.png"
            if not img.exists():
                continue
            meta = index.get(mask.stem, {})
            out.append(
                Pair(
                    mask.stem,
                    img,
                    mask,
                    float(meta.get("saved", mask.stat().st_mtime)),
                    meta.get("source", ""),
                    int(meta.get("n_nuclei", 0)),
                )
            )
        return sorted(out, key=lambda p: p.saved, reverse=True)

    def find(self, stem: str) -> Pair | None:
        """The saved pair for ``stem``, if any."""
        stem = safe_stem(stem)
        return next((p for p in self.pairs() if p.stem == stem), None)

    def load_pair(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        pair = self.find(stem)
        if pair is None:
            raise HistoError(f"no saved corrections called {stem!r} in {self.folder}")
        return read_image(pair.image), read_labels(pair.mask).astype(np.uint32)


_OPEN: dict[Path, Project] = {}


def open_project(folder: str | os.PathLike) -> Project:
    """The :class:`Project` of ``folder``: one instance per folder in this process, so that its
    cached listing serves every widget that asks."""
    key = Path(folder).expanduser().absolute()
    project = _OPEN.get(key)
    if project is None:
        project = _OPEN[key] = Project(key)
    return project
