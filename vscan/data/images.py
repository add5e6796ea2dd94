"""Image-classification data: the embedded digits set, ImageFolder trees and torchvision
datasets, plus train / eval transforms built from a model's timm data config.

The embedded default is scikit-learn's handwritten digits (1,797 real 8x8 grey images,
shipped inside scikit-learn, no download), upsampled to ``size`` x ``size`` RGB, with a
deterministic stratified train/test split. Nothing here ever downloads: a torchvision
dataset must already be on disk under ``root``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
AUG_BACKENDS = ("torchvision", "albumentations")


class DigitsImages(Dataset):
    """scikit-learn's digits as ``size`` x ``size`` RGB images (uint8 tensors (3, size, size),
    torchvision ``tv_tensors.Image``) with integer labels 0-9.

    The 8x8 images (values 0-16) are upsampled bilinearly once, at construction. The split
    is stratified and fixed by ``seed``: ``test_fraction`` of every class is the test set
    ('val' and 'test' are the same held-out set).
    """

    classes = [str(i) for i in range(10)]

    def __init__(self, split: str = "train", size: int = 32, test_fraction: float = 0.2, seed: int = 0,
                 transform=None):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in SPLITS:
            raise ValueError(f"digits: split must be one of {SPLITS}, got {split!r}")
        if int(size) < 8:
            raise ValueError(f"digits: size must be >= 8 (the images are 8x8), got {size}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
        data = load_digits()
        idx = np.arange(len(data.target))
        train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed,
                                               stratify=data.target)
        keep = np.sort(train_idx if split == "train" else test_idx)
        grey = torch.from_numpy(data.images[keep]).float().unsqueeze(1) / 16.0      # (n, 1, 8, 8) in [0, 1]
        if int(size) != 8:
            grey = F.interpolate(grey, size=(int(size), int(size)), mode="bilinear", align_corners=False)
        self.images = (grey.clamp(0, 1) * 255).round().to(torch.uint8)                 # (n, 1, size, size)
        self.targets = [int(t) for t in data.target[keep]]
        self.transform = transform
        self.split, self.size = split, int(size)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from torchvision import tv_tensors
        img = tv_tensors.Image(self.images[i].expand(3, -1, -1))
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]


def _torchvision_dataset(name: str, root, split: str, transform):
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"dataset {name!r}: not 'digits', not a directory, and not a torchvision dataset "
                         f"(e.g. 'CIFAR10', 'MNIST', 'FashionMNIST')")
    if root is None:
        raise ValueError(f"dataset {name!r}: set data_dir to the folder holding it (vscan never downloads)")
    import inspect
    params = inspect.signature(cls.__init__).parameters
    kwargs = dict(root=str(root), transform=_ToRGB(transform))   # MNIST & co. are grey
    if "download" in params:
        kwargs["download"] = False
    if "train" in params:
        kwargs["train"] = split == "train"
    elif "split" in params:
        kwargs["split"] = "train" if split == "train" else "test"
    try:
        ds = cls(**kwargs)
    except (RuntimeError, FileNotFoundError) as e:
        raise FileNotFoundError(
            f"dataset {name!r} not found under {root} ({e}). vscan never downloads: fetch it once with "
            f"torchvision.datasets.{name}(root={str(root)!r}, download=True)") from None
    return ds


class _ToRGB:
    """Convert PIL images to RGB, then apply ``then``."""

    def __init__(self, then):
        self.then = then

    def __call__(self, img):
        if isinstance(img, Image.Image) and img.mode != "RGB":
            img = img.convert("RGB")
        return self.then(img) if self.then is not None else img


def _image_folder(root: Path, split: str, transform):
    from torchvision.datasets import ImageFolder

    candidates = [split] + (["val", "test"] if split in ("val", "test") else [])
    for sub in candidates:
        if (root / sub).is_dir():
            return ImageFolder(str(root / sub), transform=transform, loader=_rgb_loader)
    raise FileNotFoundError(f"ImageFolder {root}: expected a sub-folder {' or '.join(dict.fromkeys(candidates))} "
                            f"with one folder per class inside, found {sorted(p.name for p in root.iterdir())}")


def _rgb_loader(path):
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def build_dataset(name: str = "digits", split: str = "train", root=None, transform=None, img_size: int = 32):
    """A classification dataset by name.

    Args:
        name: 'digits' (embedded), a directory (an ImageFolder tree with train/ and val/ or
            test/ sub-folders), 'folder' (then ``root`` is that directory), or a torchvision
            dataset class name such as 'CIFAR10' (read from ``root``, never downloaded).
        split: 'train', 'val' or 'test' ('val' falls back to 'test' and vice versa).
        img_size: only for 'digits': the side of the upsampled images.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "digits":
        return DigitsImages(split, size=img_size, transform=transform)
    if name == "folder":
        if root is None:
            raise ValueError("dataset 'folder': set data_dir to the ImageFolder root (with train/ and val/ inside)")
        return _image_folder(Path(root), split, transform)
    if Path(name).is_dir():
        return _image_folder(Path(name), split, transform)
    if "/" in name or name.startswith("."):
        raise FileNotFoundError(f"dataset {name!r}: no such directory")
    return _torchvision_dataset(name, root, split, transform)


class TransformSlot:
    """A transform decided later: datasets can be built (and their classes counted) before
    the model whose data config defines the transform exists. ``slot.set(fn)`` fills it."""

    def __init__(self, fn=None):
        self.fn = fn

    def set(self, fn) -> "TransformSlot":
        self.fn = fn
        return self

    def __call__(self, img):
        if self.fn is None:
            raise RuntimeError("TransformSlot used before set(): build the transform first")
        return self.fn(img)


def num_classes_of(ds) -> int:
    """Number of classes of a dataset built by :func:`build_dataset` (or a Subset of one)."""
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    classes = getattr(ds, "classes", None)
    if classes:
        return len(classes)
    targets = getattr(ds, "targets", None)
    if targets is None:
        raise ValueError(f"cannot tell the number of classes of {type(ds).__name__}; set num_classes")
    return int(max(int(t) for t in targets)) + 1


# --------------------------------------------------------------------------------------------
# transforms


def _interp(name: str):
    from torchvision.transforms import InterpolationMode
    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
            "nearest": InterpolationMode.NEAREST}.get(name or "bilinear", InterpolationMode.BILINEAR)


def _hw(input_size) -> tuple[int, int]:
    if len(input_size) != 3:
        raise ValueError(f"image transforms need input_size (C, H, W), got {tuple(input_size)}")
    return int(input_size[1]), int(input_size[2])


def build_transform(data_config: dict, train: bool, backend: str = "torchvision",
                    scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5, rotate: float = 0.0):
    """PIL image or uint8 (C, H, W) tensor -> normalised float tensor (C, H, W).

    ``data_config`` is what :func:`timm.data.resolve_model_data_config` returns (input_size,
    interpolation, mean, std, crop_pct). Train: random-resized crop (``scale``, ``ratio``),
    optional rotation (degrees) and horizontal flip. Eval: resize to size / crop_pct, then a
    centre crop, as timm's eval transform.
    """
    if backend not in AUG_BACKENDS:
        raise ValueError(f"aug_backend must be one of {AUG_BACKENDS}, got {backend!r}")
    h, w = _hw(data_config["input_size"])
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    interp = data_config.get("interpolation", "bilinear")
    scale, ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
    if backend == "albumentations":
        return _albumentations(h, w, mean, std, crop_pct, interp, train, scale, ratio, hflip, rotate)
    from torchvision.transforms import v2

    if train:
        ops = [v2.ToImage(), v2.RandomResizedCrop((h, w), scale=scale, ratio=ratio, interpolation=_interp(interp),
                                                  antialias=True)]
        if rotate:
            ops.append(v2.RandomRotation(float(rotate), interpolation=_interp("bilinear")))
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
    else:
        resize = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        ops = [v2.ToImage(), v2.Resize(resize, interpolation=_interp(interp), antialias=True), v2.CenterCrop((h, w))]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]
    return v2.Compose(ops)


class _AlbumentationsAdapter:
    """PIL image or (C, H, W) uint8 tensor -> numpy HWC -> albumentations pipeline -> tensor."""

    def __init__(self, compose):
        self.compose = compose

    def __call__(self, img):
        arr = img.permute(1, 2, 0).contiguous().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        return self.compose(image=arr)["image"]


def _albumentations(h, w, mean, std, crop_pct, interp, train, scale, ratio, hflip, rotate):
    try:
        import albumentations as A
        import cv2
        from albumentations.pytorch import ToTensorV2
    except ImportError as e:
        raise ImportError("aug_backend='albumentations' needs albumentations (pip install 'vscan[aug]'), "
                          f"or use aug_backend='torchvision' ({e})") from None
    cv_interp = {"bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}.get(interp, cv2.INTER_LINEAR)
    if train:
        ops = [A.RandomResizedCrop(size=(h, w), scale=scale, ratio=ratio, interpolation=cv_interp)]
        if rotate:
            ops.append(A.Rotate(limit=float(rotate), p=1.0))
        if hflip > 0:
            ops.append(A.HorizontalFlip(p=hflip))
    else:
        ops = [A.Resize(math.floor(h / crop_pct), math.floor(w / crop_pct), interpolation=cv_interp),
               A.CenterCrop(h, w)]
    ops += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return _AlbumentationsAdapter(A.Compose(ops))
