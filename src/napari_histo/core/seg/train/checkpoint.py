"""The training checkpoint: network, best weights and optimizer state in one safetensors file."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ... import weights
from ...errors import HistoError

CHECKPOINT_FILE = "checkpoint.safetensors"
TRAIN_STATE_FORMAT = "napari-histo-seg-train-state"


def _optimizer_tensors(opt: Any) -> tuple[dict, dict]:
    """Optimizer state as flat tensors + JSON-able rest (no pickle)."""
    import torch

    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"opt.{pid}.{key}"] = val.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}.{key}"] = val
    groups = [dict(g) for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _restore_optimizer(opt: Any, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, val in tensors.items():
        if not key.startswith("opt."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = val
    for key, val in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    sd = {"state": state, "param_groups": meta["param_groups"]}
    # A fresh optimizer state is an acceptable fallback when resuming.
    with contextlib.suppress(ValueError, KeyError, RuntimeError):
        opt.load_state_dict(sd)


def _write_checkpoint(
    path: Path, net: Any, best: dict | None, opt: Any, meta: dict, ema: dict | None = None
) -> None:
    from ..registry import cpu_tensors, state_tensors

    tensors = {f"net.{k}": v for k, v in state_tensors(net).items()}
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in cpu_tensors(ema).items()})
    opt_t, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_t)
    state = json.dumps({**meta, "optimizer": opt_meta}, default=str)
    weights.write_safetensors(path, tensors, {"format": TRAIN_STATE_FORMAT, "state": state})


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    tensors, md = weights.read_safetensors(path, TRAIN_STATE_FORMAT, "training checkpoint")
    try:
        meta = json.loads(md["state"])
    except (KeyError, ValueError) as exc:
        raise HistoError(
            f"{path}: not a readable napari-histo training checkpoint ({exc})"
        ) from None
    return tensors, meta


def _sub(tensors: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
