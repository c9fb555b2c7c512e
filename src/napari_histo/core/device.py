"""Choosing the torch device: ``auto`` takes CUDA when present, else the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import HistoError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """True when torch sees a CUDA device (imports torch)."""
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return a ``torch.device`` for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    HistoError
        When CUDA is asked for on a machine without it (a clear message, not a torch trace).
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HistoError(
                "device 'cuda' was asked for, but torch sees no CUDA GPU here; use --device cpu or auto"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise HistoError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")


def describe_device(device: torch.device) -> str:
    """Human-readable device name, e.g. ``CUDA (NVIDIA H100)`` or ``CPU (2 threads)``."""
    import torch

    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return f"CPU ({torch.get_num_threads()} threads)"


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device`` (None: stay in float32); the one mixed-precision policy.

    ``auto``: bfloat16 on GPUs that support it (else float16) and on CPUs that run it natively
    (AVX512-BF16 / AMX, where it about doubles the speed), float32 elsewhere. ``bfloat16`` forces
    it (emulated on other CPUs: slower, for tests); ``float32`` turns mixed precision off.
    The environment variable ``NAPARI_HISTO_PRECISION`` (``float32`` or ``bfloat16``) replaces
    ``auto``, e.g. to get float32 labels everywhere.
    """
    import os

    import torch

    if precision == "auto":
        precision = os.environ.get("NAPARI_HISTO_PRECISION", "auto").strip().lower() or "auto"
    if precision == "float32":
        return None
    if precision not in ("auto", "bfloat16"):
        raise HistoError(f"unknown precision {precision!r}; use auto, bfloat16 or float32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        if precision == "bfloat16":
            return torch.bfloat16
        try:
            native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        except AttributeError:  # pragma: no cover - older torch
            native = False
        return torch.bfloat16 if native else None
    return None
