"""Crash-safe writes: permissions of an ordinary file, nothing half-written on failure."""
import os

import pytest
import torch

from vscan.engine.io import atomic_torch_save, atomic_write_json, load_checkpoint


def test_atomic_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_torch_save({"w": torch.ones(2)}, tmp_path / "ckpt.pt")
        q = atomic_write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert os.stat(p).st_mode & 0o777 == 0o644
    assert os.stat(q).st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"step": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")
    with pytest.raises(RuntimeError):
        atomic_torch_save({"bad": Boom()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_load_checkpoint_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
