"""The progress protocol of long core work.

Long functions are generators: they ``yield`` :class:`Progress` events and ``return`` their
result. :func:`drain` runs one to the end for scripts and the CLI; napari widgets run the same
generator in a ``thread_worker`` (whose ``quit()`` closes it between two events = cancel).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass
class Progress:
    """One progress event.

    Parameters
    ----------
    step : int
        Steps done so far (1-based after the first unit of work).
    total : int or None
        Total number of steps when known.
    stage : str
        What is running, e.g. ``"fit"``, ``"tile"``, ``"epoch"``.
    metrics : dict
        Numbers worth showing (``loss``, ``val_aji``...).
    message : str
        Free text for a status line.
    payload : Any
        Optional data for a live preview (a sample image, a partial result).
    """

    step: int
    total: int | None = None
    stage: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    payload: Any = None

    @property
    def fraction(self) -> float | None:
        """Fraction done in [0, 1], or None when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, self.step / self.total)

    def __str__(self) -> str:
        if self.total:
            head = f"{self.stage} {self.step}/{self.total}"
        else:  # a step count without a total; nothing for "started" (step 0)
            head = f"{self.stage} {self.step}" if self.step else self.stage
        nums = " ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        return " ".join(s for s in (head.strip(), nums, self.message) if s)


ProgressGen = Generator[Progress, None, R]


def drain(
    gen: Generator[Progress, None, R], callback: Callable[[Progress], Any] | None = None
) -> R:
    """Run a progress generator to its end and return its result.

    Parameters
    ----------
    gen : generator
        A core generator yielding :class:`Progress`.
    callback : callable, optional
        Called with every event (e.g. to update a terminal progress bar).
    """
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)


def staged(gen: Generator[Progress, None, R], prefix: str) -> Generator[Progress, None, R]:
    """``gen`` with ``prefix`` before every event's stage, for one pass of a longer job.

    A job that runs a generator twice (a probe, then the real pass) tells the two apart on the
    progress bar. Closing the wrapper closes ``gen`` (cancel reaches the inner work).
    """
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            event.stage = f"{prefix} {event.stage}".strip()
            yield event
    finally:
        gen.close()
