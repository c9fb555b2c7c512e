"""Pack trained model folders for the trip back from a remote GPU machine.

Every ``weights.safetensors`` (and the best weights of an interrupted run's checkpoint) is written
as float16 (the packages load float16 weights into float32 networks), cards and logs are copied,
optimizer state is left out, and the whole is one ``.tar.gz`` cut into parts of at most
``--part-mb`` MB (``cat runs.tar.gz.part-* | tar xz`` joins them)::

    python scripts/pack_runs.py runs "$OUT" --budget-mb 60

Folders are packed in the order given, and a folder that would exceed ``--budget-mb`` is left
out (named in ``left_out.txt`` inside the archive), so the first ones are the most wanted.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path


def _fp16(path: Path, prefix: str | None = None) -> bytes:
    """The safetensors file at ``path`` with float tensors as float16 (only ``prefix.*`` if given)."""
    from safetensors import safe_open
    from safetensors.torch import save

    tensors = {}
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            if prefix is not None and not k.startswith(prefix + "."):
                continue
            t = f.get_tensor(k)
            name = k if prefix is None else k[len(prefix) + 1 :]
            tensors[name] = t.half() if t.is_floating_point() else t
    if prefix is not None:
        meta = {"format": "napari-histo-partial-best", "state": meta.get("state", "{}")}
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)


def _members(folder: Path, root: Path):
    """(archive name, bytes) for what comes back from one run folder."""
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(root).as_posix()
        if f.name == "weights.safetensors":
            yield rel, _fp16(f)
        elif f.name == "checkpoint.safetensors" and f.parent.name.endswith(".partial"):
            from safetensors import safe_open

            with safe_open(str(f), "pt") as h:
                has_best = any(k.startswith("best.") for k in h.keys())  # noqa: SIM118
            yield (
                rel.replace("checkpoint.safetensors", "partial_best.safetensors"),
                _fp16(f, "best" if has_best else "net"),
            )
        elif f.suffix in (".json", ".md", ".log", ".txt", ".csv"):
            yield rel, f.read_bytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="folder the run folders are relative to")
    ap.add_argument("out", type=Path)
    ap.add_argument("folders", nargs="*", help="run folders under ROOT, most wanted first")
    ap.add_argument("--budget-mb", type=float, default=60.0)
    ap.add_argument("--part-mb", type=float, default=15.0)
    args = ap.parse_args(argv)
    folders = [args.root / f for f in args.folders] or sorted(args.root.iterdir())
    buf = io.BytesIO()
    left_out, sizes = [], {}
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for folder in folders:
            if not folder.exists():
                left_out.append(f"{folder} (missing)")
                continue
            members = list(_members(folder, args.root)) if folder.is_dir() else []
            if folder.is_file():
                members = [(folder.relative_to(args.root).as_posix(), folder.read_bytes())]
            size = sum(len(b) for _, b in members)
            if buf.tell() + size > args.budget_mb * 1e6:
                left_out.append(f"{folder} ({size / 1e6:.1f} MB over the budget)")
                continue
            sizes[str(folder)] = round(size / 1e6, 2)
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        note = json.dumps({"packed_mb": sizes, "left_out": left_out}, indent=2).encode()
        info = tarfile.TarInfo("pack_manifest.json")
        info.size = len(note)
        tar.addfile(info, io.BytesIO(note))
    data = buf.getvalue()
    args.out.mkdir(parents=True, exist_ok=True)
    part = int(args.part_mb * 1e6)
    for i in range(0, len(data), part):
        (args.out / f"runs.tar.gz.part-{i // part:02d}").write_bytes(data[i : i + part])
    print(note.decode())
    print(f"{len(data) / 1e6:.1f} MB in {-(-len(data) // part)} part(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
