"""Choosing where dask runs: local threads, a LocalCluster of processes, or a remote scheduler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import HistoError


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
    import dask
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
    with dask.config.set(_local_worker_environ(int(workers))):
        cluster = LocalCluster(
            n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _local_worker_environ(workers: int) -> dict:
    """dask config giving each local worker process its share of the cores for torch.

    distributed starts workers with ``OMP_NUM_THREADS=1`` (one worker with one thread would use
    one core of many) and ``MALLOC_TRIM_THRESHOLD_=65536``, which turns off glibc's adaptive mmap
    threshold: every large torch tensor is then a fresh mmap, and inference ran about 1.5x
    slower in a worker than in the main process (bench/slide.py).
    """
    import os

    threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    key = "distributed.nanny.pre-spawn-environ"
    return {
        f"{key}.MALLOC_TRIM_THRESHOLD_": None,
        f"{key}.OMP_NUM_THREADS": threads,
        f"{key}.MKL_NUM_THREADS": threads,
        f"{key}.OPENBLAS_NUM_THREADS": threads,
    }
