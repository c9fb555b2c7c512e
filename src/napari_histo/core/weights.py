"""The one way model files are read and written: safetensors weights plus a JSON/Markdown card.

Every model the package knows (segmentation networks, DCGMM normalizers, CycleGAN translators,
training checkpoints) is a ``weights.safetensors`` whose metadata names its ``format``, with a
``card.json`` (and a human ``card.md``) beside it. Weights never go through pickle. Reads are
cached: built models on (file, modification time, size, device) by :func:`cached_loader`, and
the tensors of files read again and again (normalizers) on request; a training checkpoint,
rewritten every epoch, is never kept.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import atomic_path, atomic_write_text
from .errors import HistoError, first_line

WEIGHTS_FILE = "weights.safetensors"
CARD_JSON = "card.json"
CARD_MD = "card.md"


def read_safetensors(
    path: str | os.PathLike, fmt: str | None, what: str, cache: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors (on the CPU) and metadata of a safetensors file of format ``fmt``.

    Parameters
    ----------
    path : path
    fmt : str or None
        The ``format`` its metadata must name (None: any).
    what : str
        What the file should be, for messages (e.g. ``"segmentation model"``).
    cache : bool
        Keep the tensors for the next read of the unchanged file (for files read again and
        again, like a normalizer; models are cached once built, by :func:`cached_loader`).

    Raises
    ------
    HistoError
        One line naming the file: missing, not safetensors, or another format.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise HistoError(f"{p}: no such file") from None
    read = _read_cached if cache else _read
    tensors, meta = read(str(p.resolve()), st.st_mtime_ns, st.st_size, what)
    if fmt is not None and meta.get("format") != fmt:
        raise HistoError(
            f"{p.name}: not a napari-histo {what} (format {meta.get('format')!r}, expected {fmt!r})"
        )
    return dict(tensors), dict(meta)


def _read(path: str, mtime_ns: int, size: int, what: str) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(path, framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise HistoError(
            f"{Path(path).name}: not a readable safetensors weights file ({first_line(exc)}); "
            f"not a napari-histo {what}"
        ) from None
    return tensors, meta


_read_cached = functools.lru_cache(maxsize=4)(_read)


def write_safetensors(path: str | os.PathLike, tensors: dict, meta: dict[str, Any]) -> Path:
    """Write CPU-contiguous copies of ``tensors`` with string ``meta``, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    return path


def sub_state(tensors: dict, prefix: str) -> dict:
    """The tensors under ``prefix.`` with the prefix removed (one network of several in a file)."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def read_card(folder_or_file: str | os.PathLike) -> dict:
    """The card of a model folder (``card.json``) or a card file itself ({} when unreadable)."""
    p = Path(folder_or_file)
    if p.is_dir():
        p = p / CARD_JSON
    try:
        card = json.loads(p.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def write_card(folder: str | os.PathLike, card: dict, markdown: bool = True) -> dict:
    """Write ``card.json`` (and ``card.md``) into a model folder atomically; return the card."""
    folder = Path(folder)
    card = dict(card)
    card.setdefault("created", time.time())
    card.setdefault(
        "created_iso", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(card["created"]))
    )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / CARD_JSON, json.dumps(card, indent=2, default=_json_default) + "\n")
    if markdown:
        atomic_write_text(folder / CARD_MD, card_markdown(card))
    return card


def clear_cache() -> None:
    """Forget every cached file and loaded model."""
    _read_cached.cache_clear()
    for clear in _MODEL_CACHES:
        clear()


_MODEL_CACHES: list[Callable[[], None]] = []


def cached_loader(maxsize: int = 8) -> Callable:
    """Decorate ``build(path: str, device: str, *args)`` so that each file is built once per device.

    The wrapped function is called as ``load(path, device, *args)``; the cache key adds the
    file's modification time and size, so a rewritten model is read again.
    """

    def wrap(build: Callable) -> Callable:
        @functools.lru_cache(maxsize=maxsize)
        def _cached(path: str, mtime_ns: int, size: int, device: str, *args: Any) -> Any:
            return build(path, device, *args)

        _MODEL_CACHES.append(_cached.cache_clear)

        @functools.wraps(build)
        def load(path: str | os.PathLike, device: Any, *args: Any) -> Any:
            p = Path(path).resolve()
            st = p.stat()
            return _cached(str(p), st.st_mtime_ns, st.st_size, str(device), *args)

        load.cache_clear = _cached.cache_clear  # type: ignore[attr-defined]
        return load

    return wrap


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _numbers(d: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in d.items() if isinstance(v, int | float))


#: Card fields shown as one line each, in this order, when present.
CARD_FIELDS = (
    "architecture_text",
    "data",
    "data_a",
    "data_b",
    "license",
    "parent",
    "parent_command",
    "validation_split",
    "command",
    "command_note",
    "seed",
    "minutes",
    "mpp",
    "created_iso",
)


def card_markdown(card: dict) -> str:
    """A short human-readable card (``card.md``) from any model's ``card.json`` content.

    Title and summary, one line per known field (:data:`CARD_FIELDS`), the inference settings,
    the commands of older ``ancestors``, the training settings, every ``validation*`` block
    (mean figures, then one line per image), notes and the input convention.
    """
    lines = [f"# {card.get('name', 'napari-histo model')}", ""]
    if card.get("summary"):
        lines += [str(card["summary"]), ""]
    if card.get("arch"):
        kw = ", ".join(f"{k}={v}" for k, v in (card.get("kwargs") or {}).items())
        lines.append(
            f"- **architecture**: {card['arch']}({kw}), {card.get('parameters', '?')} parameters"
        )
    elif isinstance(card.get("architecture"), dict):
        arch = ", ".join(f"{k}={v}" for k, v in card["architecture"].items())
        lines.append(f"- **architecture**: {arch}")
    for key in CARD_FIELDS:
        if card.get(key) not in (None, "", [], {}):
            val = card[key]
            if isinstance(val, list | tuple):
                val = ", ".join(map(str, val))
            lines.append(f"- **{key}**: {val}")
    guess = card.get("scale_guess")
    if isinstance(guess, dict) and guess.get("area_px"):
        lines.append(
            f"- **magnification guess**: an image without a pixel size is enlarged when its "
            f"median nucleus is under {guess['area_px']} px² (at most "
            f"{guess.get('max_factor', 2)}x); {guess.get('how', '')}".rstrip("; ")
        )
    inference = card.get("inference")
    settings = _numbers(inference) if isinstance(inference, dict) else ""
    if settings:
        how = inference.get("chosen_by")
        lines.append(f"- **inference**: {settings}" + (f"; chosen by {how}" if how else ""))
    for anc in card.get("ancestors") or []:  # the parent's own parents, oldest first
        lines.append(f"- **ancestor {anc.get('name', '?')}**: {anc.get('command', '')}")
    tr = card.get("training") or {}
    if tr:
        lines.append(
            "- **training**: "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in tr.items() if not isinstance(v, dict | list))
        )
    for key, block in card.items():
        if (key == "validation" or key.startswith("validation_")) and isinstance(block, dict):
            lines.append(f"- **{key}**: {_numbers(block)}")
            for img, m in (block.get("per_image") or {}).items():
                lines.append(f"  - {img}: {_numbers(m)}")
    if card.get("last_losses"):
        lines.append(f"- **last losses**: {_numbers(card['last_losses'])}")
    for extra in card.get("notes", []) or []:
        lines.append(f"- {extra}")
    inp = card.get("input") or {}
    if isinstance(inp, dict) and inp.get("rgb"):
        lines.append(f"- **input**: {inp.get('rgb')}; mean={inp.get('mean')}, std={inp.get('std')}")
    return "\n".join(lines) + "\n"
