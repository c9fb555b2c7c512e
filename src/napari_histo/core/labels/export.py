"""Exporting nuclei: GeoJSON polygons that QuPath imports, and CSV measurement tables."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write_text


def label_polygons(
    labels: np.ndarray,
    offset: tuple[int, int] = (0, 0),
    tolerance: float = 0.5,
    ids: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """Outline of every nucleus as a closed (N, 2) polygon of (x, y) pixel coordinates.

    Contours follow pixel edges at half-pixel precision (marching squares on the padded mask),
    simplified by ``tolerance`` pixels; ``offset`` (row, col) places a region within a slide.
    ``ids``: ``labels`` were already renumbered by :func:`.measure.compact_ids`, which returned
    these original ids (the keys are then the original ids).
    """
    from scipy import ndimage
    from skimage.measure import find_contours

    from .measure import compact_ids
    from .polygons import simplify_rings

    labels, original = (np.asarray(labels), ids) if ids is not None else compact_ids(labels)
    found: list[tuple[int, tuple[slice, slice], np.ndarray]] = []
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = np.pad(labels[sl] == idx, 1)
        contours = find_contours(mask.astype(np.uint8), 0.5)
        if contours:
            found.append((idx, sl, max(contours, key=len)))
    rings = simplify_rings([ring for _, _, ring in found], tolerance)
    out: dict[int, np.ndarray] = {}
    for (idx, sl, _), ring in zip(found, rings, strict=True):
        if len(ring) < 4:
            continue
        rows = ring[:, 0] - 1 + sl[0].start + offset[0]
        cols = ring[:, 1] - 1 + sl[1].start + offset[1]
        poly = np.stack([cols, rows], axis=1)
        if not np.array_equal(poly[0], poly[-1]):
            poly = np.vstack([poly, poly[:1]])
        out[idx if original is None else int(original[idx])] = poly
    return out


def nuclei_features(
    labels: np.ndarray,
    measurements: dict[str, np.ndarray] | None = None,
    offset: tuple[int, int] = (0, 0),
    classification: str = "Nucleus",
    ids: np.ndarray | None = None,
) -> Iterator[dict]:
    """GeoJSON features of the nuclei of ``labels``, in QuPath's layout (detections + measurements).

    ``ids``: see :func:`label_polygons`.
    """
    polys = label_polygons(labels, offset=offset, ids=ids)
    rows = {}
    if measurements is not None and len(measurements.get("label", [])):
        keys = [k for k in measurements if k != "label"]
        for i, lab in enumerate(measurements["label"]):
            rows[int(lab)] = {k: _num(measurements[k][i]) for k in keys}
    for lab, poly in polys.items():
        yield {
            "type": "Feature",
            "id": f"nucleus-{lab}",
            "geometry": {"type": "Polygon", "coordinates": [np.round(poly, 2).tolist()]},
            "properties": {
                "objectType": "detection",
                "name": f"nucleus {lab}",
                "label": lab,
                "classification": {"name": classification, "color": [200, 0, 0]},
                "measurements": rows.get(lab, {}),
            },
        }


def nuclei_geojson(
    labels: np.ndarray,
    measurements: dict[str, np.ndarray] | None = None,
    offset: tuple[int, int] = (0, 0),
    classification: str = "Nucleus",
) -> dict:
    """A GeoJSON FeatureCollection of nucleus polygons (in memory; see :class:`GeoJSONWriter`)."""
    features = list(nuclei_features(labels, measurements, offset, classification))
    return {"type": "FeatureCollection", "features": features}


class GeoJSONWriter:
    """Streams a FeatureCollection to disk region by region; the file appears whole or not at all.

    ::

        with GeoJSONWriter(path) as out:
            for window, table, origin in blocks:
                out.add(window, table, origin)

    Features are written as they come (memory stays flat for a whole slide); the temporary file
    is renamed over ``path`` on a clean exit and removed on an error or cancel.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self._ctx = atomic_path(self.path)
        self._fh = None

    def __enter__(self) -> GeoJSONWriter:
        tmp = self._ctx.__enter__()
        self._fh = open(tmp, "w", encoding="utf-8")
        self._fh.write('{"type": "FeatureCollection", "features": [')
        return self

    def add(self, labels: np.ndarray, measurements=None, offset=(0, 0), ids=None) -> int:
        """Append the nuclei of ``labels`` (placed at ``offset``; ``ids``: see
        :func:`label_polygons`); returns how many."""
        n = 0
        for feature in nuclei_features(labels, measurements, offset, ids=ids):
            self._fh.write(("," if self.count else "") + json.dumps(feature))
            self.count += 1
            n += 1
        return n

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._fh.write("]}")
        finally:
            self._fh.close()
        return bool(self._ctx.__exit__(exc_type, exc, tb))


def write_geojson(
    path: str | os.PathLike, labels: np.ndarray, measurements=None, offset=(0, 0)
) -> Path:
    """Write the nuclei of ``labels`` as GeoJSON (atomic)."""
    with GeoJSONWriter(path) as out:
        out.add(labels, measurements, offset)
    return Path(path)


def write_csv(path: str | os.PathLike, table: dict[str, np.ndarray]) -> Path:
    """Write a column table (dict of equal-length arrays) as CSV (atomic)."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = list(table)
    writer.writerow(keys)
    n = len(table[keys[0]]) if keys else 0
    for i in range(n):
        writer.writerow([_fmt(table[k][i]) for k in keys])
    atomic_write_text(path, buf.getvalue())
    return path


def _num(v):
    v = float(v)
    return None if not np.isfinite(v) else round(v, 4)


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return "" if not np.isfinite(v) else f"{v:.6g}"
