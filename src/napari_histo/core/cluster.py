"""Choosing where dask runs: local threads, a LocalCluster of processes, or a remote scheduler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import HistoError


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None, workers: int | None = None
) -> Iterator[object | None]:
    """Yield a ``dask.distributed.Client`` or None (the local threaded scheduler).

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler, e.g. ``tcp://10.0.0.5:8786``.
    workers : int, optional
        Start a ``LocalCluster`` with this many worker processes (one thread each) instead.
    """
    if scheduler and workers:
        raise HistoError("give either a scheduler address or a number of local workers, not both")
    if not scheduler and not workers:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="5s", set_as_default=False)
        except OSError as exc:
            raise HistoError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
