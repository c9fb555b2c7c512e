"""What the translator's SSIM aim (4x-downsampled gray, vs the neighbouring H&E section) rewards.

Usage::

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src .venv/bin/python bench/translate_ssim_check.py \
        [--json bench/results/translate_ssim_check.json]

On BCI sources (held out from the translator, and the five it trained on unpaired), it scores
beside the raw IHC and the shipped model: references no translator can beat on fidelity (the
real H&E itself, shifted by 8 or 16 px, as a perfect translation with that much misalignment
would be), and the shipped output with its contrast scaled towards its mean. For each: Lab W1,
SSIM gray 4x (the aim's measure), the global Pearson r of the 4x gray images, the mean local r in
SSIM's 7x7 windows (SSIM's structure term without its contrast and luminance terms), and the
median local standard deviation of the 4x gray (what SSIM's contrast term compares; the row
``real_he`` gives the H&E's own).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import train_translator_default as tt  # noqa: E402


def gray_4x(img: np.ndarray) -> np.ndarray:
    """The 4x-downsampled grayscale image the aim's SSIM is computed on."""
    from skimage.color import rgb2gray
    from skimage.transform import downscale_local_mean

    return downscale_local_mean(rgb2gray(img), (4, 4))


def correlations(x: np.ndarray, y: np.ndarray, window: int = 7) -> tuple[float, float]:
    """Global and mean local (``window``-px) Pearson r of two 4x gray images."""
    from scipy.ndimage import uniform_filter

    mx, my = uniform_filter(x, window), uniform_filter(y, window)
    vx = uniform_filter(x * x, window) - mx * mx
    vy = uniform_filter(y * y, window) - my * my
    cxy = uniform_filter(x * y, window) - mx * my
    ok = (vx > 1e-5) & (vy > 1e-5)
    local = float(np.mean(cxy[ok] / np.sqrt(vx[ok] * vy[ok])))
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1]), local


def local_std(g: np.ndarray, window: int = 7) -> float:
    """Median local standard deviation of a 4x gray image (in SSIM's windows)."""
    from scipy.ndimage import uniform_filter

    m = uniform_filter(g, window)
    return float(np.median(np.sqrt(np.clip(uniform_filter(g * g, window) - m * m, 0, None))))


def outputs(
    ihc: np.ndarray, he: np.ndarray, translator
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``name -> (output, the H&E it is compared with)``."""
    from napari_histo.core.translate import translate

    gen = translate(ihc, translator, tile=256, overlap=32)
    out = {"raw_ihc": (ihc, he), "shipped": (gen, he)}
    g = gen.astype(np.float64)
    mean = g.reshape(-1, 3).mean(0)
    for f in (0.75, 0.5, 0.25):
        squeezed = np.clip(mean + f * (g - mean), 0, 255).astype(np.uint8)
        out[f"shipped_contrast_x{f}"] = (squeezed, he)
    for px in (8, 16):
        # the H&E against itself moved by px down and right (no wrap-around: both cropped)
        out[f"real_he_shifted_{px}px"] = (he[:-px, :-px], he[px:, px:])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from napari_histo.core.translate import load_translator

    root = tt.data_root()
    ihc_tiles = tt.list_images(root / tt.BCI / "ihc")
    he_tiles = tt.list_images(root / tt.BCI / "he")
    sources = sorted({tt.bci_source(k) for k in ihc_tiles})
    translator = load_translator("ihc2he_default", "ihc2he", device="cpu")
    result: dict = {"model": "ihc2he_default", "sets": {}}
    for name, group in (
        ("held_out", [s for s in sources if s in tt.HOLDOUT]),
        ("trained_unpaired", [s for s in sources if s not in tt.HOLDOUT]),
    ):
        rows: dict[str, list[list[float]]] = {}
        for src in group:
            ihc, he = tt.reassemble(ihc_tiles, src), tt.reassemble(he_tiles, src)
            rows.setdefault("real_he", []).append([0.0, 1.0, 1.0, 1.0, local_std(gray_4x(he))])
            for key, (img, ref) in outputs(ihc, he, translator).items():
                # the same pixel samples for every row: W1 differences are not sampling noise
                s = tt.extra_scores(img, ref, np.random.default_rng(0))
                g = gray_4x(img)
                rows.setdefault(key, []).append(
                    [s["lab_w1"], s["ssim_gray_4x"], *correlations(g, gray_4x(ref)), local_std(g)]
                )
        cols = ("lab_w1", "ssim_gray_4x", "r_global_4x", "r_local_7x7", "local_std_4x")
        result["sets"][name] = {
            "sources": group,
            "mean": {
                k: dict(zip(cols, np.round(np.mean(v, 0), 4).tolist(), strict=True))
                for k, v in rows.items()
            },
        }
        print(f"## {name}: {', '.join(group)}")
        print("| output | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for k, m in result["sets"][name]["mean"].items():
            print(f"| {k} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
