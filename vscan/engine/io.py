"""Crash-safe writes: every checkpoint and result goes to a temporary file first, then is
renamed over the target, so a failed run never leaves a half-written file behind."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import torch


def _file_mode() -> int:
    """Permissions an ordinary open() would give: 0o666 less the process umask. mkstemp creates
    its files 0o600, which would otherwise leak into every checkpoint and result."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path, write_fn, mode="wb"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj, path):
    """torch.save to ``path`` atomically. Load back with :func:`load_checkpoint`."""
    return _atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by vscan without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def atomic_write_bytes(path, data: bytes):
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(path, text: str):
    return _atomic(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path, obj, indent=2):
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def atomic_write_csv(path, rows: list[dict]):
    """Rows of dicts -> CSV with the union of keys as header (in first-seen order)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]

    def write(f):
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return _atomic(path, write, mode="w")
