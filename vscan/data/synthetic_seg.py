"""Segmentation data: synthetic volumes from MONAI's ``create_test_image_3d`` / ``_2d`` with fixed
seeds (kept in memory or written as a Medical Segmentation Decathlon folder of NIfTI files), and
loading of any Decathlon-layout folder (``dataset.json`` + ``imagesTr/`` + ``labelsTr/``).

The synthetic task: ``num_objs`` balls (discs in 2-D) of random radius, each of a random class
1..``num_seg_classes``; the image is ``max(class, uniform noise in [0, num_seg_classes *
noise_max])`` rescaled to [0, 1]. With ``noise_max=0.5`` the noise covers class 1's intensity,
so class 1 needs spatial context, not a threshold. MONAI rescales by each volume's own
maximum, so a volume without a ball of the top class would map every class to another
intensity; by default (``require_all_classes``) a volume is redrawn, from the same seeded
stream, until every class is present, which keeps class intensities the same in every volume.

Volume ``i`` of a split is generated from ``RandomState(seed + offset + i)`` where each split
has its own offset, so train / validation / test never share a volume and every run (and
every machine) sees the same data.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

SPLIT_OFFSETS = {"train": 0, "val": 100_000, "test": 200_000}


def _check_size(size, spatial_dims: int, rad_max: int) -> tuple[int, ...]:
    size = (int(size),) * spatial_dims if isinstance(size, int) else tuple(int(s) for s in size)
    if spatial_dims not in (2, 3) or len(size) != spatial_dims:
        raise ValueError(f"synthetic segmentation: need spatial_dims 2 or 3 and that many sizes, got "
                         f"spatial_dims={spatial_dims}, size={size}")
    if min(size) <= 2 * rad_max:
        raise ValueError(f"synthetic segmentation: every side of {size} must exceed 2 * rad_max = {2 * rad_max} "
                         f"(MONAI's create_test_image_{spatial_dims}d); lower rad_max or enlarge the volume")
    return size


def make_synthetic_case(seed: int, size=(64, 64, 64), spatial_dims: int = 3, num_seg_classes: int = 3,
                        num_objs: int = 12, rad_min: int = 4, rad_max: int = 12,
                        noise_max: float = 0.5, require_all_classes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One (image, label) pair, channel-first: image (1, *size) float32 in [0, 1], label
    (1, *size) uint8 in 0..num_seg_classes."""
    from monai.data.synthetic import create_test_image_2d, create_test_image_3d
    size = _check_size(size, spatial_dims, rad_max)
    if not 1 <= rad_min < rad_max:
        raise ValueError(f"synthetic segmentation: need 1 <= rad_min < rad_max, got {rad_min}, {rad_max}")
    rs = np.random.RandomState(seed)
    make = create_test_image_3d if spatial_dims == 3 else create_test_image_2d
    want = num_seg_classes + 1 if require_all_classes and 1 < num_seg_classes <= num_objs else 0
    for _ in range(200):
        img, lbl = make(*size, num_objs=num_objs, rad_max=rad_max, rad_min=rad_min, noise_max=noise_max,
                        num_seg_classes=num_seg_classes, channel_dim=0, random_state=rs)
        if len(np.unique(lbl)) >= want:
            break
    else:
        raise ValueError(f"synthetic segmentation: no volume with all {num_seg_classes} classes in 200 draws "
                         f"(size {size}, num_objs {num_objs}); raise num_objs or pass require_all_classes=False")
    return img.astype(np.float32), lbl.astype(np.uint8)


def make_synthetic_split(split: str, n: int, seed: int = 0, **kwargs) -> list[dict]:
    """``n`` cases of ``split`` ('train' / 'val' / 'test') in memory: [{'image', 'label', 'name'}]."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    out = []
    for i in range(n):
        img, lbl = make_synthetic_case(seed + SPLIT_OFFSETS[split] + i, **kwargs)
        out.append({"image": img, "label": lbl, "name": f"{split}_{i:03d}"})
    return out


def write_msd_folder(root, splits: dict[str, list[dict]], name: str = "vscan_synthetic",
                     labels: dict | None = None, modality: str = "synthetic", extra: dict | None = None) -> Path:
    """Write cases (dicts with channel-first 'image', 'label', 'name') as a Decathlon folder:
    ``imagesTr/<name>.nii.gz``, ``labelsTr/<name>.nii.gz`` and ``dataset.json``. Every case
    goes to ``training`` (they all have labels); the split of each is kept under
    ``dataset.json['vscan_splits']``. Files are written to temporary names and renamed."""
    import nibabel as nib
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training, split_names = [], {}
    n_classes, ndim = 0, 3
    for split, cases in splits.items():
        split_names[split] = []
        for c in cases:
            for key, folder, dtype in (("image", "imagesTr", np.float32), ("label", "labelsTr", np.uint8)):
                arr = np.asarray(c[key])[0].astype(dtype)   # NIfTI holds the spatial array
                path = root / folder / f"{c['name']}.nii.gz"
                tmp = path.with_name(f".{path.name}.tmp.nii.gz")
                nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp))
                os.replace(tmp, path)
            n_classes = max(n_classes, int(np.asarray(c["label"]).max()))
            ndim = np.asarray(c["image"]).ndim - 1
            training.append({"image": f"./imagesTr/{c['name']}.nii.gz", "label": f"./labelsTr/{c['name']}.nii.gz"})
            split_names[split].append(c["name"])
    meta = {"name": name, "description": "vscan synthetic segmentation (MONAI create_test_image_*d)",
            "tensorImageSize": f"{ndim}D",
            "modality": {"0": modality},
            "labels": labels or {str(i): ("background" if i == 0 else f"class{i}") for i in range(n_classes + 1)},
            "numTraining": len(training), "numTest": 0, "training": training, "test": [],
            "vscan_splits": split_names}
    meta.update(extra or {})
    from vscan.engine.io import atomic_write_json
    atomic_write_json(root / "dataset.json", meta)
    return root


def synthetic_msd_folder(root, n_train: int = 16, n_val: int = 4, n_test: int = 8, seed: int = 0,
                         **kwargs) -> Path:
    """A Decathlon folder of synthetic cases at ``root``; reused when it already holds the same
    cases (same sizes, seed and generator arguments), regenerated otherwise."""
    root = Path(root)
    spec = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in sorted(kwargs.items())}}
    ds = root / "dataset.json"
    if ds.is_file():
        try:
            if json.loads(ds.read_text()).get("vscan_spec") == spec:
                return root
        except (OSError, ValueError):
            pass
    splits = {s: make_synthetic_split(s, n, seed, **kwargs) for s, n in
              (("train", n_train), ("val", n_val), ("test", n_test))}
    return write_msd_folder(root, splits, extra={"vscan_spec": spec})


def load_msd_datalist(root, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0,
                      max_cases: int | None = None) -> dict[str, list[dict]]:
    """Read a Decathlon folder (``dataset.json`` with a ``training`` list of image / label paths)
    into {'train', 'val', 'test'} lists of {'image': path, 'label': path}. A folder written by
    :func:`write_msd_folder` keeps its own splits; otherwise the labelled cases are shuffled with
    ``seed`` and split by ``val_fraction`` / ``test_fraction``."""
    root = Path(root)
    ds = root / "dataset.json"
    if not ds.is_file():
        raise FileNotFoundError(f"{root} is not a Medical Segmentation Decathlon folder: {ds} is missing "
                                f"(expected dataset.json with a 'training' list, imagesTr/ and labelsTr/)")
    meta = json.loads(ds.read_text())
    if not meta.get("training"):
        raise ValueError(f"{ds}: no 'training' entries with image / label paths")
    items = []
    for e in meta["training"]:
        if not isinstance(e, dict) or "image" not in e or "label" not in e:
            raise ValueError(f"{ds}: every 'training' entry needs 'image' and 'label', got {e!r}")
        item = {k: str((root / e[k]).resolve()) for k in ("image", "label")}
        for k, p in item.items():
            if not os.path.exists(p):
                raise FileNotFoundError(f"{ds}: {k} file {p} does not exist")
        item["name"] = Path(e["image"]).name.split(".")[0]
        items.append(item)
    if max_cases:
        items = items[:max_cases]
    splits = meta.get("vscan_splits")
    if splits:
        by_name = {it["name"]: it for it in items}
        return {s: [by_name[n] for n in splits.get(s, []) if n in by_name] for s in ("train", "val", "test")}
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction + test_fraction must be in [0, 1), got {val_fraction} + {test_fraction}")
    order = np.random.RandomState(seed).permutation(len(items))
    n_val = max(1, math.floor(len(items) * val_fraction)) if val_fraction else 0
    n_test = math.floor(len(items) * test_fraction)
    sel = [items[i] for i in order]
    return {"val": sel[:n_val], "test": sel[n_val:n_val + n_test], "train": sel[n_val + n_test:]}


def num_classes_of(root) -> int | None:
    """Number of label classes (background included) from ``dataset.json['labels']``."""
    try:
        labels = json.loads((Path(root) / "dataset.json").read_text()).get("labels")
    except (OSError, ValueError):
        return None
    return len(labels) if labels else None


def check_spatial_sizes(sizes: Sequence[int], spatial_dims: int, what: str) -> tuple[int, ...]:
    sizes = (int(sizes),) * spatial_dims if isinstance(sizes, int) else tuple(int(s) for s in sizes)
    if len(sizes) != spatial_dims or min(sizes) < 1:
        raise ValueError(f"{what}: expected {spatial_dims} positive sizes, got {sizes}")
    return sizes
