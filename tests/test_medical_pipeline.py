"""The segmentation pipeline on tiny synthetic volumes: data (in memory and as a Decathlon NIfTI
folder), a short training run (loss goes down, checkpoints, metrics, PNG), sliding-window
inference over the whole volume, Dice, the CLI, and the config file staying in sync."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("monai")
pytest.importorskip("nibabel")

from vscan.data.synthetic_seg import (load_msd_datalist, make_synthetic_case, make_synthetic_split,  # noqa: E402
                                      synthetic_msd_folder, write_msd_folder)
from vscan.engine.segmentation import DEFAULTS, merge_config, run_segmentation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = dict(size=[24, 20, 28], n_train=3, n_val=1, n_test=2, num_objs=6, rad_min=2, rad_max=6)


def tiny_config(out_dir, **over):
    cfg = {"out_dir": str(out_dir), "data": dict(TINY_DATA),
           "model": {"name": "UMambaBot", "kwargs": {"features": [4, 8, 16], "norm_name": "instance",
                                                     "deep_supervision": True}},
           "train": {"epochs": 3, "patch_size": [16, 16, 16], "num_samples": 2, "val_every": 1, "lr": 1e-2,
                     "warmup_epochs": 0},
           "infer": {"roi_size": [16, 16, 16], "sw_batch_size": 4}}
    return merge_config(cfg, over)


def test_synthetic_cases_are_seeded_and_disjoint():
    a, la = make_synthetic_case(3, size=(24, 24, 24), rad_max=6)
    b, lb = make_synthetic_case(3, size=(24, 24, 24), rad_max=6)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert a.shape == (1, 24, 24, 24) and a.dtype == np.float32 and la.dtype == np.uint8
    assert 0.0 <= a.min() and a.max() <= 1.0 and set(np.unique(la)) <= {0, 1, 2, 3}
    train = make_synthetic_split("train", 2, seed=0, size=(24, 24), spatial_dims=2, rad_max=6)
    test = make_synthetic_split("test", 2, seed=0, size=(24, 24), spatial_dims=2, rad_max=6)
    assert train[0]["image"].shape == (1, 24, 24)
    assert not np.array_equal(train[0]["image"], test[0]["image"])
    with pytest.raises(ValueError, match="rad_max"):
        make_synthetic_case(0, size=(20, 20, 20), rad_max=12)


def test_msd_folder_roundtrip(tmp_path):
    root = synthetic_msd_folder(tmp_path / "syn", 2, 1, 1, size=(20, 20, 20), rad_max=5)
    splits = load_msd_datalist(root)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert Path(splits["train"][0]["image"]).is_file() and Path(splits["train"][0]["label"]).is_file()
    mtime = (root / "dataset.json").stat().st_mtime
    synthetic_msd_folder(tmp_path / "syn", 2, 1, 1, size=(20, 20, 20), rad_max=5)      # reused, not rewritten
    assert (root / "dataset.json").stat().st_mtime == mtime
    # a plain Decathlon folder (no vscan splits): shuffled and split by fraction
    cases = make_synthetic_split("train", 5, size=(20, 20, 20), rad_max=5)
    plain = write_msd_folder(tmp_path / "plain", {"train": cases})
    meta = json.loads((plain / "dataset.json").read_text())
    meta.pop("vscan_splits")
    (plain / "dataset.json").write_text(json.dumps(meta))
    s = load_msd_datalist(plain, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert [len(s[k]) for k in ("train", "val", "test")] == [3, 1, 1]
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        load_msd_datalist(tmp_path)


def test_pipeline_trains_and_evaluates(tmp_path):
    summary = run_segmentation(tiny_config(tmp_path / "run"), log=lambda *a: None)
    out = tmp_path / "run"
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    losses = [float(r[1]) for r in rows]
    assert len(losses) == 3 and losses[-1] < losses[0]                     # loss goes down
    assert 0.0 <= summary["test_dice_mean_fg"] <= 1.0
    assert len(summary["test_dice_per_class"]) == 3
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_dice_mean_fg"] == summary["test_dice_mean_fg"] and saved["n_cases"]["test"] == 2
    assert (out / "segmentation.png").stat().st_size > 10_000
    from vscan.engine.io import load_checkpoint
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and "optimizer" in last and set(best["model"]) == set(last["model"])
    # resume: one more epoch continues from last.pt
    more = run_segmentation(tiny_config(tmp_path / "run", resume=True, train={"epochs": 4}), log=lambda *a: None)
    assert more["epochs_run"] == 4


def test_sliding_window_covers_full_volume():
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric

    from vscan.models.medical import UMambaBot
    net = UMambaBot(3, 1, 4, features=(4, 8, 16)).eval()
    img, lbl = make_synthetic_case(1, size=(30, 22, 26), rad_max=6)
    x, y = torch.from_numpy(img)[None], torch.from_numpy(lbl)[None].long()
    with torch.no_grad():
        logits = sliding_window_inference(x, roi_size=(16, 16, 16), sw_batch_size=4, predictor=net, overlap=0.25)
    assert logits.shape == (1, 4, 30, 22, 26)
    metric = DiceMetric(include_background=False, reduction="mean_batch", num_classes=4)
    metric(y_pred=logits.argmax(1, keepdim=True), y=y)
    dice = metric.aggregate()
    assert dice.shape == (3,)


def test_in_memory_2d_run(tmp_path):
    cfg = tiny_config(tmp_path / "r2d", data={"spatial_dims": 2, "size": [32, 28], "in_memory": True},
                      train={"patch_size": [16, 16], "epochs": 1, "channels_last": False},
                      infer={"roi_size": [16, 16]}, model={"name": "ScanSegNet",
                                                           "kwargs": {"features": [4, 8], "depths": 1}})
    summary = run_segmentation(cfg, log=lambda *a: None)
    assert summary["model"] == "ScanSegNet" and 0.0 <= summary["test_dice_mean_fg"] <= 1.0


def test_bad_config_and_cli(tmp_path):
    with pytest.raises(ValueError, match="unknown config keys"):
        run_segmentation({"bogus": 1})
    with pytest.raises(ValueError, match="patch_size"):
        run_segmentation({"out_dir": str(tmp_path), "train": {"patch_size": [16, 16]}})
    from vscan.tools.segment import main
    assert main(["--out-dir", str(tmp_path / "x"), "--set", "train.nope=1"]) == 2
    assert main(["--data-root", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "y")]) == 2


def test_default_config_file_matches_defaults():
    import yaml
    with open(ROOT / "configs" / "segment_synthetic3d.yaml") as f:
        cfg = yaml.safe_load(f)
    assert merge_config(DEFAULTS, cfg) == DEFAULTS
