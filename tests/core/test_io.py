"""Reading tiles and slides, and what happens to every file users may feed us."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import tifffile
from conftest import NON_ASCII_NAME

from napari_histo.core.errors import ImageReadError, InputWarning
from napari_histo.core.io import (
    is_slide,
    read_image,
    read_labels,
    read_slide,
    to_rgb_uint8,
    write_image,
    write_labels,
)

# What each bad input must give (see shared/data/bad_inputs/README.md): an RGB image, or an error
# whose message names the file and contains the given words.
READABLE = ["all_black.png", "blank_white.png", "cmyk.jpg", "grayscale.png", "pen_mark_green.png",
            "rgb_float32.tif", "rgb_float32_nan.tif", "rgb_uint16.tif", "rgba.png", "thin_3x1000.png",
            "tiny_1x1.png", "exif_rotated.jpg", "palette.png", "planar.tif", NON_ASCII_NAME]  # fmt: skip
REFUSED = {
    "empty.png": "empty",
    "not_an_image.png": "not a readable image",
    "truncated.png": "truncated",
    "huge_header.png": "too large",
    "five_channel.tif": "5 channels",
}


@pytest.mark.parametrize("name", READABLE)
def test_readable_bad_inputs_become_rgb_uint8(bad_inputs, name):
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        img = read_image(bad_inputs / name)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


@pytest.mark.parametrize(("name", "words"), sorted(REFUSED.items()))
def test_broken_files_are_refused_clearly(bad_inputs, name, words):
    with pytest.raises(ImageReadError) as err:
        read_image(bad_inputs / name)
    msg = str(err.value)
    assert name in msg and words in msg and "\n" not in msg


def test_other_dtypes_match_the_8bit_tile(bad_inputs):
    """uint16, float32 and RGBA versions of the same crop come back as (almost) the same pixels."""
    ref = read_image(bad_inputs / "rgba.png").astype(int)
    for name in ("rgb_uint16.tif", "rgb_float32.tif"):
        img = read_image(bad_inputs / name).astype(int)
        assert img.shape == ref.shape
        assert np.abs(img - ref).max() <= 1, name


def test_nan_pixels_become_white_with_a_warning(bad_inputs):
    with pytest.warns(InputWarning, match="NaN"):
        img = read_image(bad_inputs / "rgb_float32_nan.tif")
    raw = tifffile.imread(bad_inputs / "rgb_float32_nan.tif")
    nan = np.isnan(raw).any(axis=-1)
    assert nan.any()
    assert (img[nan] == 255).all()
    clean = read_image(bad_inputs / "rgb_float32.tif")
    assert np.array_equal(img[~nan], clean[~nan])


def test_exif_rotated_jpeg_reads_as_it_is_shown(bad_inputs):
    """A JPEG stored landscape with EXIF orientation 6 comes back portrait, as viewers show it."""
    img = read_image(bad_inputs / "exif_rotated.jpg")
    ref = read_image(bad_inputs / "rgba.png")[:, :192]
    assert img.shape == (192, 256, 3)
    # Rotated 90 degrees clockwise; JPEG quality 95 keeps the pixels within a few levels.
    assert np.abs(img.astype(int) - np.rot90(ref, -1).astype(int)).mean() < 3


def test_palette_png_and_planar_tiff_become_the_same_rgb(bad_inputs):
    ref = read_image(bad_inputs / "rgba.png")
    assert np.array_equal(read_image(bad_inputs / "planar.tif"), ref)
    pal = read_image(bad_inputs / "palette.png")
    assert pal.shape == ref.shape and pal.dtype == np.uint8
    # 64 palette colours: every pixel close to the original, not a garbled index image.
    assert np.abs(pal.astype(int) - ref.astype(int)).mean() < 8


def test_non_ascii_file_names_read_and_are_named_in_errors(bad_inputs, tmp_path):
    assert np.array_equal(
        read_image(bad_inputs / NON_ASCII_NAME), read_image(bad_inputs / "rgba.png")
    )
    broken = tmp_path / NON_ASCII_NAME
    broken.write_bytes((bad_inputs / "truncated.png").read_bytes())
    with pytest.raises(ImageReadError, match=NON_ASCII_NAME):
        read_image(broken)


def test_grayscale_is_repeated_to_rgb(bad_inputs):
    img = read_image(bad_inputs / "grayscale.png")
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_to_rgb_uint8_conversions():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent: background, i.e. white
    assert (to_rgb_uint8(rgba) == 255).all()
    chw = np.full((3, 5, 7), 0.5, np.float32)
    assert to_rgb_uint8(chw).shape == (5, 7, 3)
    assert to_rgb_uint8(chw)[0, 0, 0] == 128
    assert to_rgb_uint8(np.full((2, 2), 65535, np.uint16)).max() == 255
    with pytest.raises(ImageReadError, match="2 channels"):
        to_rgb_uint8(np.zeros((5, 5, 2), np.uint8), "x")
    with pytest.raises(ImageReadError, match="shape"):
        to_rgb_uint8(np.zeros((2, 5, 5, 3), np.uint8), "x")


def test_real_tile_roundtrip(monuseg, tmp_path):
    src = next((monuseg / "images").glob("*.png"))
    img = read_image(src)
    assert img.shape == (1000, 1000, 3)
    for suffix in (".png", ".tif"):
        out = write_image(tmp_path / f"x{suffix}", img)
        assert np.array_equal(read_image(out), img)
    labels = read_labels(monuseg / "masks" / f"{src.stem}.tif")
    out = write_labels(tmp_path / "l.tif", labels)
    back = read_labels(out)
    assert back.dtype == np.uint32 and np.array_equal(back, labels)
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_svs_opens_lazily_as_a_pyramid(svs_path):
    assert is_slide(svs_path)
    levels = read_slide(svs_path)
    assert levels[0].shape == (2967, 2220, 3) and levels[0].dtype == np.uint8
    assert len(levels) >= 2 and max(levels[-1].shape[:2]) <= 1024
    for a, b in itertools.pairwise(levels):
        assert b.shape[0] == a.shape[0] // 2 and b.shape[1] == a.shape[1] // 2
    # Lazy: a level is a dask graph until computed; a small region reads real tissue.
    import dask.array as da

    assert isinstance(levels[0], da.Array)
    patch = np.asarray(levels[0][1000:1256, 1000:1256])
    assert patch.shape == (256, 256, 3) and 50 < patch.mean() < 250 and patch.std() > 10


def write_pyramid(path, image, levels=3, tile=256):
    """A tiled pyramidal TIFF (SubIFDs), the layout slide scanners' converters write."""
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            image, subifds=levels - 1, tile=(tile, tile), photometric="rgb", compression="zlib"
        )
        for i in range(1, levels):
            f = 2**i
            tif.write(
                image[::f, ::f],
                subfiletype=1,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
            )


def test_pyramidal_tiff_written_from_real_tiles(monuseg, tmp_path):
    tiles = [read_image(p) for p in sorted((monuseg / "images").glob("*.png"))[:4]]
    mosaic = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)])
    path = tmp_path / "mosaic.ome.tif"
    write_pyramid(path, mosaic)
    assert is_slide(path)
    levels = read_slide(path)
    assert [lv.shape[:2] for lv in levels[:3]] == [(2000, 2000), (1000, 1000), (500, 500)]
    assert np.array_equal(np.asarray(levels[0][1500:1600, 200:300]), mosaic[1500:1600, 200:300])
    assert np.array_equal(np.asarray(levels[1]), mosaic[::2, ::2])


def test_slide_errors_are_clear(bad_inputs):
    with pytest.raises(ImageReadError, match="empty"):
        read_slide(bad_inputs / "empty.png")
    with pytest.raises(ImageReadError, match=r"not_an_image\.png"):
        read_slide(bad_inputs / "not_an_image.png")


def test_slide_levels_travel_to_worker_processes(svs_path):
    """A dask.distributed worker receives the graph pickled: the file must reopen there."""
    import pickle

    levels = read_slide(svs_path)
    region = levels[0][1000:1256, 1000:1256]
    back = pickle.loads(pickle.dumps(region))
    assert np.array_equal(np.asarray(back), np.asarray(region))
    assert np.asarray(back).std() > 10


def test_one_row_mask_stays_two_dimensional(tmp_path):
    row = np.arange(50, dtype=np.uint32)[None, :] // 10
    assert read_labels(write_labels(tmp_path / "row.tif", row)).shape == (1, 50)
    tifffile.imwrite(tmp_path / "page.tif", row[None, :, :, None])  # page and channel axes
    assert np.array_equal(read_labels(tmp_path / "page.tif"), row)


def _with_compression_code(src, dst, code: int) -> None:
    """Copy a classic little-endian zlib TIFF, relabelling its Compression tag (259) as ``code``."""
    data = bytearray(src.read_bytes())
    entry = b"\x03\x01\x03\x00\x01\x00\x00\x00\x08\x00"  # tag 259, SHORT, count 1, value 8
    i = data.find(entry)
    assert i > 0
    data[i + 8 : i + 10] = code.to_bytes(2, "little")
    dst.write_bytes(bytes(data))


def test_undecodable_tiles_are_one_clear_error_naming_the_compression(monuseg, tmp_path):
    tile = read_image(sorted((monuseg / "images").glob("*.png"))[0])
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, tile, tile=(256, 256), photometric="rgb", compression="zlib")
    assert read_slide(good)[0].shape == tile.shape
    _with_compression_code(good, tmp_path / "eer.tif", 65000)  # a codec imagecodecs lacks
    with pytest.raises(ImageReadError, match=r"eer\.tif: its tiles are EER.*imagecodecs"):
        read_slide(tmp_path / "eer.tif")
    _with_compression_code(good, tmp_path / "lzma.tif", 34925)  # known codec, wrong bytes
    with pytest.raises(ImageReadError, match=r"lzma\.tif: cannot read its LZMA tiles"):
        read_slide(tmp_path / "lzma.tif")


def test_vendor_slides_through_openslide_match_tifffile(svs_path, tmp_path):
    """OpenSlide reads the same SVS pixels as tifffile (the backend for NDPI, MRXS, ...)."""
    from napari_histo.core.io.slides import _read_openslide

    ours, theirs = read_slide(svs_path), _read_openslide(svs_path, 1024)
    assert theirs[0].shape == ours[0].shape and len(theirs) >= 2
    a = np.asarray(theirs[0][1000:1300, 900:1237]).astype(int)
    b = np.asarray(ours[0][1000:1300, 900:1237]).astype(int)
    assert a.std() > 10 and np.abs(a - b).mean() < 2  # both decode the same JPEG tiles
    import pickle

    back = pickle.loads(pickle.dumps(theirs[0][1000:1100, 900:1000]))
    assert np.array_equal(np.asarray(back), a[:100, :100])


def test_vendor_slide_without_openslide_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide -> ImportError
    path = tmp_path / "scan.mrxs"
    path.write_bytes(b"not empty")
    assert is_slide(path)
    with pytest.raises(ImageReadError, match=r"scan\.mrxs: .*OpenSlide.*pip install"):
        read_slide(path)


def test_pyramid_levels_average_instead_of_striding(tmp_path):
    """A 1-pixel stripe pattern becomes mid-grey one level down (striding would keep one stripe)."""
    from napari_histo.core.io.slides import downsample2
    from napari_histo.core.progress import drain
    from napari_histo.core.slide.segment import write_pyramidal_tiff_iter

    stripes = np.zeros((2048, 2048, 3), np.uint8)
    stripes[:, 1::2] = 255
    half = np.asarray(downsample2(stripes))
    assert half.shape == (1024, 1024, 3) and (half == 128).all()  # round(127.5)
    path = drain(write_pyramidal_tiff_iter(stripes, tmp_path / "s.tif", tile=256))
    levels = read_slide(path)
    assert len(levels) >= 2 and (np.asarray(levels[1][:64, :64]) == 128).all()


def test_pixel_size_is_read_where_the_file_records_it(svs_path, tmp_path):
    from napari_histo.core.io.slides import read_mpp

    assert read_mpp(svs_path) == pytest.approx(0.499)  # Aperio "MPP = 0.499"
    img = np.zeros((8, 8, 3), np.uint8)
    tifffile.imwrite(
        tmp_path / "res.tif", img, resolution=(40000, 40000), resolutionunit="CENTIMETER"
    )
    assert read_mpp(tmp_path / "res.tif") == pytest.approx(0.25)
    tifffile.imwrite(tmp_path / "dpi.tif", img, resolution=(72, 72), resolutionunit="INCH")
    assert read_mpp(tmp_path / "dpi.tif") is None  # a screen default, not a scan
    write_image(tmp_path / "t.png", img)
    assert read_mpp(tmp_path / "t.png") is None


def _pillow_pixels(path):
    """What the Pillow reader alone makes of a file (the reference of the fast PNG path)."""
    from napari_histo.core.io import images

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_rgb_uint8(images._read_with_pillow(path))


def test_fast_png_reader_gives_pillows_pixels(bad_inputs, monuseg, tmp_path):
    """libspng decodes 8-bit grey/RGB/RGBA PNGs to exactly Pillow's pixels; the rest go to Pillow."""
    from PIL import Image

    from napari_histo.core.io import images

    src = next((monuseg / "images").glob("*.png"))
    rgb = np.asarray(Image.open(src).convert("RGB"))[:300, :260]
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    cases = {
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha])),
        "grey.png": Image.fromarray(rgb[..., 1]),
        "palette.png": Image.fromarray(rgb).quantize(32),
        "grey16.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "interlaced.png": Image.fromarray(rgb),
    }
    fast = {}
    for name, im in cases.items():
        kw = {"interlace": 1} if name.startswith("interlaced") else {}
        im.save(tmp_path / name, **kw)
        fast[name] = images._read_png_fast(tmp_path / name) is not None
    # a transparency key (tRNS) on an RGB PNG: Pillow composites it, so Pillow reads it
    Image.fromarray(rgb).save(tmp_path / "trns.png", transparency=tuple(int(v) for v in rgb[0, 0]))
    fast["trns.png"] = images._read_png_fast(tmp_path / "trns.png") is not None
    assert fast == {
        "rgb.png": True,
        "rgba.png": True,
        "grey.png": True,
        "palette.png": False,
        "grey16.png": False,
        "interlaced.png": True,
        "trns.png": False,
    }
    files = [tmp_path / n for n in fast] + [bad_inputs / n for n in READABLE if n.endswith(".png")]
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = read_image(f)
        assert np.array_equal(got, _pillow_pixels(f)), f.name
    assert images._read_png_fast(bad_inputs / "truncated.png") is None


def test_png_writer_is_lossless_at_any_level_and_readable_by_pillow(monuseg, tmp_path):
    from PIL import Image

    img = read_image(next((monuseg / "images").glob("*.png")))
    grey = np.ascontiguousarray(img[..., 0])
    rgba = np.dstack([img, img[..., :1]])
    for name, a in (("rgb", img), ("grey", grey), ("rgba", rgba)):
        for level in (None, 1, 6, 9):
            out = write_image(tmp_path / f"{name}{level}.png", a, level=level)
            assert np.array_equal(np.asarray(Image.open(out)), a), (name, level)
    # the default level is the fast one: close to Pillow's size, pixels identical
    Image.fromarray(img).save(tmp_path / "pillow.png")
    ratio = (tmp_path / "rgbNone.png").stat().st_size / (tmp_path / "pillow.png").stat().st_size
    assert ratio < 1.15
    # what libpng does not write as Pillow would still goes through Pillow
    write_image(tmp_path / "mask.png", np.eye(8, dtype=bool))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mask.png")), np.eye(8, dtype=bool))
