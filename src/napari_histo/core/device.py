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
