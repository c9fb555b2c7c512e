"""Files shipped in ``resources/``: sample tiles, fitted normalizers, model weights and cards."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resources_dir() -> Path:
    """The package's resources folder (a real folder in both editable and wheel installs)."""
    return Path(str(files("napari_histo") / "resources"))


def resource_path(*parts: str) -> Path:
    """Path of a shipped file, e.g. ``resource_path("samples", "he_tiatoolbox_target.png")``."""
    return resources_dir().joinpath(*parts)
