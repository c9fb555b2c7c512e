"""Reading tiles and slides, writing results: the one place files become arrays.

``images`` reads and writes tiles (PNG/JPEG/TIFF) as RGB uint8 with clear refusals; ``slides``
opens pyramidal TIFF/SVS (tifffile) and vendor formats (OpenSlide) lazily as dask levels;
``labels`` reads and writes instance masks; ``regions`` cuts and pastes regions of interest.
"""

from .images import (
    IMAGE_SUFFIXES,
    MAX_IN_MEMORY_PIXELS,
    OPENSLIDE_SUFFIXES,
    PYRAMID_TOP_SIZE,
    SLIDE_MIN_PIXELS,
    TIFF_SUFFIXES,
    TILE_SUFFIXES,
    is_image_path,
    list_images,
    read_image,
    to_rgb_uint8,
    write_image,
)
from .labels import read_labels, write_labels
from .slides import is_slide, read_mpp, read_slide

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IN_MEMORY_PIXELS",
    "OPENSLIDE_SUFFIXES",
    "PYRAMID_TOP_SIZE",
    "SLIDE_MIN_PIXELS",
    "TIFF_SUFFIXES",
    "TILE_SUFFIXES",
    "is_image_path",
    "is_slide",
    "list_images",
    "read_image",
    "read_labels",
    "read_mpp",
    "read_slide",
    "to_rgb_uint8",
    "write_image",
    "write_labels",
]
