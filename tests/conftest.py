"""Shared test setup: isolated napari settings, the shared data folder, GPU skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Before napari is imported anywhere: tests never read or write the user's napari settings.
os.environ["NAPARI_CONFIG"] = str(ROOT / ".napari_config" / "settings.yaml")

SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared public data folder (../shared/data); skip when it is not beside the checkout."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bad_inputs(shared_data) -> Path:
    return shared_data / "bad_inputs"


@pytest.fixture(scope="session")
def monuseg(shared_data) -> Path:
    return shared_data / "monuseg2018_train_subset"


@pytest.fixture(scope="session")
def svs_path(shared_data) -> Path:
    return shared_data / "wsi" / "CMU-1-Small-Region.svs"
