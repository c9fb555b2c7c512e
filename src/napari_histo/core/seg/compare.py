"""Which stain normalization helps here? Normalize one image with every method, segment each
result with the same model, and compare what the model makes of it.

Without ground truth the methods are ranked by their agreement with the others (mean pairwise
AJI of the nuclei: the method whose nuclei the other methods confirm most), then by the model's
mean confidence. With a corrected or ground-truth mask, by AJI against it.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import HistoError
from ..progress import Progress
from .metrics import aggregated_jaccard_index, dice
from .registry import load_model

#: The "method" that leaves the colours as scanned.
AS_SCANNED = "none"


@dataclass
class MethodOutcome:
    """What one normalization method gave."""

    method: str
    image: np.ndarray
    labels: np.ndarray
    n_nuclei: int
    confidence: float
    seconds: float
    agreement: float = float("nan")
    dice: float | None = None
    aji: float | None = None


@dataclass
class Comparison:
    """Every method's outcome, their pairwise agreement (AJI), and the one to prefer."""

    outcomes: list[MethodOutcome]
    agreement: np.ndarray
    best: str
    ranked_by: str
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One row per method, for a table (CSV, widget, terminal)."""
        out = []
        for o in self.outcomes:
            row = {
                "method": o.method,
                "nuclei": o.n_nuclei,
                "mean confidence": round(o.confidence, 3),
                "agreement (mean AJI with the others)": round(o.agreement, 3),
                "seconds": round(o.seconds, 2),
            }
            if o.aji is not None:
                row["Dice vs truth"] = round(float(o.dice), 3)
                row["AJI vs truth"] = round(float(o.aji), 3)
            row["best"] = o.method == self.best
            out.append(row)
        return out


def compare_normalizations_iter(
    image: np.ndarray,
    templates: Sequence[np.ndarray],
    methods: Sequence[str] | None = None,
    model: Any = "default",
    device: str = "auto",
    truth: np.ndarray | None = None,
) -> Generator[Progress, None, Comparison]:
    """Normalize ``image`` to ``templates`` with each method, segment each, compare (a generator).

    Parameters
    ----------
    image : (H, W, 3) uint8
        The image (or region) to judge on.
    templates : list of arrays
        The stain template(s), as for :func:`~napari_histo.core.stain.workflow.make_normalizer`.
    methods : list of str, optional
        Default: every method and ``"none"`` (the image as scanned).
    model : str, path or LoadedModel
        The segmentation model (default: the shipped one).
    truth : (H, W) int, optional
        Corrected or ground-truth instance labels: methods are then ranked by AJI against it.

    Yields
    ------
    Progress
        One per method (stage ``"compare"``); closing the generator cancels between methods.
    """
    from ..io import to_rgb_uint8
    from ..stain import METHODS
    from ..stain.workflow import make_normalizer
    from .inference import segment_iter

    rgb = to_rgb_uint8(image, "image")
    methods = list(methods) if methods else [AS_SCANNED, *METHODS]
    if truth is not None and np.asarray(truth).shape != rgb.shape[:2]:
        raise HistoError(
            f"the ground truth is {np.asarray(truth).shape} but the image is {rgb.shape[:2]}"
        )
    net = load_model(model, device=device)
    outcomes: list[MethodOutcome] = []
    notes: list[str] = []
    for k, method in enumerate(methods, start=1):
        t0 = time.perf_counter()
        try:
            if method == AS_SCANNED:
                normalized = rgb
            else:
                normalizer = yield from make_normalizer(method, templates, device=device)
                normalized = to_rgb_uint8(normalizer.transform(rgb), f"{method} result")
            res = yield from segment_iter(normalized, net)
        except HistoError as exc:
            notes.append(f"{method}: {exc}")
            continue
        conf = float(res.confidence[res.labels > 0].mean()) if res.labels.any() else 0.0
        out = MethodOutcome(
            method, normalized, res.labels, res.n_nuclei, conf, time.perf_counter() - t0
        )
        if truth is not None:
            out.dice = dice(truth, res.labels)
            out.aji = aggregated_jaccard_index(truth, res.labels)
        outcomes.append(out)
        yield Progress(step=k, total=len(methods), stage="compare", message=method)
    if not outcomes:
        raise HistoError("no normalization method worked on this image: " + "; ".join(notes))
    n = len(outcomes)
    agreement = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            a = aggregated_jaccard_index(outcomes[i].labels, outcomes[j].labels)
            agreement[i, j] = agreement[j, i] = a
    for i, o in enumerate(outcomes):
        o.agreement = float((agreement[i].sum() - 1.0) / (n - 1)) if n > 1 else 1.0
    if truth is not None:
        ranked_by = "AJI against the given labels"
        best = max(outcomes, key=lambda o: (o.aji, o.confidence))
    else:
        ranked_by = "agreement with the other methods, then mean confidence"
        best = max(outcomes, key=lambda o: (round(o.agreement, 3), o.confidence))
    return Comparison(outcomes, agreement, best.method, ranked_by, notes)
