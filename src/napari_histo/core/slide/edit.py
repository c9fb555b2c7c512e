"""Editing a region of a slide's label pyramid: pull it into memory, write corrections back.

napari cannot paint on multiscale labels, so the user edits an in-memory copy of a region.
Writing back is crash-safe: the edited region is first saved as a journal file (atomic write),
then applied to the zarr levels, then the journal is removed; :func:`recover_pending` re-applies
a journal left by a crash. Ids stay unique across the slide: a label the user created in the
region gets a fresh id from the slide's counter, never one used elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import HistoError

JOURNAL = "pending_edit.npz"


def _group(path, mode="r"):
    import zarr

    try:
        group = zarr.open_group(str(path), mode=mode)
    except Exception as exc:
        raise HistoError(f"{path}: cannot open labels zarr: {exc}") from None
    if "napari_histo" not in group.attrs:
        raise HistoError(f"{path}: not a labels zarr written by napari-histo")
    return group


def read_region(path: str | os.PathLike, rows: slice, cols: slice) -> np.ndarray:
    """Level-0 labels of a region (clipped to the slide) as an in-memory uint32 array."""
    lab0 = _group(path)["0"]
    rows, cols = _clip(rows, lab0.shape[0]), _clip(cols, lab0.shape[1])
    return np.asarray(lab0[rows, cols]).astype(np.uint32)


def write_region(
    path: str | os.PathLike, rows: slice, cols: slice, edited: np.ndarray
) -> dict[int, int]:
    """Write an edited region back into every level; returns the id remapping applied.

    Ids present in the region before editing keep their value; any other non-zero id (painted by
    the user) is replaced by a fresh slide-unique id.
    """
    path = Path(path)
    group = _group(path, mode="r+")
    lab0 = group["0"]
    rows, cols = _clip(rows, lab0.shape[0]), _clip(cols, lab0.shape[1])
    edited = np.asarray(edited)
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    if edited.shape != shape:
        raise HistoError(f"edited region has shape {edited.shape}, expected {shape}")
    before = np.asarray(lab0[rows, cols])
    out = edited.astype(np.uint32, copy=True)
    known = set(np.unique(before).tolist())
    new_ids = [int(v) for v in np.unique(out) if v != 0 and int(v) not in known]
    info = dict(group.attrs["napari_histo"])
    next_id = int(info.get("next_free_id", _first_free_id(group, info)))
    mapping = {}
    for v in new_ids:
        mapping[v] = next_id
        next_id += 1
    if mapping:
        src = np.fromiter(mapping.keys(), np.int64)
        dst = np.fromiter(mapping.values(), np.int64)
        order = np.argsort(src)
        pos = np.searchsorted(src[order], out)
        pos = np.clip(pos, 0, len(src) - 1)
        hit = src[order][pos] == out
        out = np.where(hit, dst[order][pos], out).astype(np.uint32)

    from ..atomic import atomic_path

    journal = path / JOURNAL
    with atomic_path(journal) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            rows=[rows.start, rows.stop],
            cols=[cols.start, cols.stop],
            labels=out,
            next_id=next_id,
        )
    _apply(group, rows, cols, out)
    info["next_free_id"] = next_id
    group.attrs["napari_histo"] = info
    journal.unlink()
    return mapping


def recover_pending(path: str | os.PathLike) -> bool:
    """Re-apply an edit interrupted by a crash; True when there was one."""
    path = Path(path)
    journal = path / JOURNAL
    if not journal.exists():
        return False
    group = _group(path, mode="r+")
    with np.load(journal) as z:
        rows, cols = slice(*map(int, z["rows"])), slice(*map(int, z["cols"]))
        _apply(group, rows, cols, z["labels"])
        info = dict(group.attrs["napari_histo"])
        info["next_free_id"] = int(z["next_id"])
        group.attrs["napari_histo"] = info
    journal.unlink()
    return True


def _apply(group, rows: slice, cols: slice, labels: np.ndarray) -> None:
    """Write level 0, then refresh the strided levels over the same region."""
    group["0"][rows, cols] = labels
    k = 1
    while str(k) in group:
        f = 2**k
        r0, r1 = -(-rows.start // f), -(-rows.stop // f)
        c0, c1 = -(-cols.start // f), -(-cols.stop // f)
        lvl = group[str(k)]
        r1, c1 = min(r1, lvl.shape[0]), min(c1, lvl.shape[1])
        if r1 > r0 and c1 > c0:
            lvl[r0:r1, c0:c1] = np.asarray(group["0"][r0 * f : r1 * f : f, c0 * f : c1 * f : f])
        k += 1


def _first_free_id(group, info) -> int:
    h, w = group["0"].shape
    t = int(info["tile"])
    return (-(-h // t)) * (-(-w // t)) * int(info["ids_per_block"]) + 1


def _clip(s: slice, n: int) -> slice:
    start = max(0, 0 if s.start is None else int(s.start))
    stop = min(n, n if s.stop is None else int(s.stop))
    if stop <= start:
        raise HistoError(f"the region [{s.start}:{s.stop}] lies outside the slide (size {n})")
    return slice(start, stop)
