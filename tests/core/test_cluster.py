"""Where dask runs: local threads, local processes, or a clear error for an unreachable scheduler."""

from __future__ import annotations

import pytest

from napari_histo.core.errors import HistoError
from napari_histo.core.slide.cluster import dask_client


def test_default_is_local_threads():
    with dask_client() as client:
        assert client is None


def test_both_options_refused():
    with pytest.raises(HistoError, match="either"), dask_client("tcp://127.0.0.1:1", 2):
        pass


@pytest.mark.slow
def test_unreachable_scheduler_is_one_clear_error():
    with pytest.raises(HistoError, match="cannot reach"), dask_client("tcp://127.0.0.1:9"):
        pass
