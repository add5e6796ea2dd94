"""MONAI segmentation training and evaluation: data (synthetic or a Decathlon folder), MONAI
transforms + ``CacheDataset`` / ``DataLoader``, ``DiceCELoss(to_onehot_y=True, softmax=True)``
(wrapped in ``DeepSupervisionLoss`` for deep-supervision nets), ``sliding_window_inference``,
``DiceMetric``; atomic checkpoints (``last.pt``, ``best.pt``), per-epoch metrics (CSV), a final
``metrics.json`` and a PNG with the loss / Dice curves and a predicted slice beside its label.

Entry point: :func:`run_segmentation` (``vscan segment`` / ``tools/segment.py`` parse the
command line into a config and call it). The config is a nested dict; :data:`DEFAULTS` is the
default 3-D synthetic run (``configs/segment_synthetic3d.yaml`` holds the same values).
"""
from __future__ import annotations

import copy
import inspect
import io
import math
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from .io import _atomic, atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text, load_checkpoint

DEFAULTS: dict = {
    "seed": 0,
    "out_dir": "runs/segment_synthetic3d",
    "device": "auto",            # auto | cpu | cuda | cuda:N
    "threads": None,             # torch.set_num_threads when set
    "data": {
        "source": "synthetic",   # synthetic | msd (a Medical Segmentation Decathlon folder at `root`)
        "root": None,            # msd: the folder; synthetic: where its NIfTI files go (default <out_dir>/data)
        "in_memory": False,      # synthetic only: keep arrays in memory instead of writing NIfTI files
        "spatial_dims": 3,
        "size": [48, 48, 48],
        "n_train": 12, "n_val": 2, "n_test": 6,
        "num_seg_classes": 3, "num_objs": 10, "rad_min": 4, "rad_max": 10, "noise_max": 0.5,
        "val_fraction": 0.2, "test_fraction": 0.0,   # msd only: split of the labelled cases
        "max_cases": None,
        "num_classes": None,     # classes incl. background; default from dataset.json / num_seg_classes + 1
        "in_channels": None,     # default: 1 for synthetic, len(dataset.json['modality']) for msd
        "pixdim": None,          # msd: resample to this spacing (Spacingd)
        "orientation": "RAS",    # msd 3-D: Orientationd axcodes (None: keep)
        "intensity": "minmax",   # minmax | zscore | [a_min, a_max] (ScaleIntensityRanged to [0, 1], clipped)
        "cache_rate": 1.0,
        "num_workers": 0,
    },
    "model": {"name": "UMambaBot",
              # batch norm: the synthetic classes differ in absolute intensity, which instance norm
              # (U-Mamba's default) normalises away patch by patch
              "kwargs": {"features": [8, 16, 32, 64], "norm_name": "batch", "deep_supervision": True,
                         "deep_supr_num": 1}},
    "train": {
        "epochs": 8, "batch_size": 1, "patch_size": [32, 32, 32], "num_samples": 2, "pos": 2.0, "neg": 1.0,
        "augment": True,             # random flips on every axis
        "intensity_augment": False,  # random intensity scale / shift (off: the synthetic classes are intensities)
        "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-5, "warmup_epochs": 1,
        "grad_clip": 12.0, "amp": False, "channels_last": True, "val_every": 1,
        "deep_supervision_weights": "exp", "time_limit_min": None,
    },
    "infer": {"roi_size": [32, 32, 32], "sw_batch_size": 4, "overlap": 0.25, "mode": "gaussian"},
    "resume": False,
    "expect_dice": None,         # fail (exit 1) when the test mean foreground Dice is lower
}


# ============================================================================ config
def merge_config(base: dict, override: dict | None) -> dict:
    """Deep-merge ``override`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if k == "model" and isinstance(v, dict) and ("name" in v or "_target_" in v) and v.get("name") != \
                out.get("model", {}).get("name"):
            out[k] = copy.deepcopy(v)          # a different model: do not inherit the default's kwargs
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def check_config(cfg: dict) -> dict:
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    for section in ("data", "train", "infer"):
        bad = set(cfg[section]) - set(DEFAULTS[section])
        if bad:
            raise ValueError(f"unknown {section} keys {sorted(bad)}; known: {sorted(DEFAULTS[section])}")
    d, t = cfg["data"], cfg["train"]
    if d["source"] not in ("synthetic", "msd"):
        raise ValueError(f"data.source must be 'synthetic' or 'msd', got {d['source']!r}")
    if d["source"] == "msd" and not d["root"]:
        raise ValueError("data.source 'msd' needs data.root: a Decathlon folder with dataset.json, imagesTr/, labelsTr/")
    if d["spatial_dims"] not in (2, 3):
        raise ValueError(f"data.spatial_dims must be 2 or 3, got {d['spatial_dims']!r}")
    for key in ("epochs", "batch_size", "num_samples", "val_every"):
        if not isinstance(t[key], int) or t[key] < 1:
            raise ValueError(f"train.{key} must be a positive int, got {t[key]!r}")
    for sec, key in (("train", "patch_size"), ("infer", "roi_size")):
        v = cfg[sec][key]
        if not isinstance(v, (list, tuple)) or len(v) != d["spatial_dims"] or any(int(s) < 1 for s in v):
            raise ValueError(f"{sec}.{key} must list {d['spatial_dims']} positive sizes, got {v!r}")
    return cfg


# ============================================================================ data
def _sizes(v, n):
    return [int(v)] * n if isinstance(v, int) else [int(s) for s in v]


def prepare_data(cfg: dict, out_dir: Path) -> tuple[dict[str, list[dict]], int, int]:
    """Returns ({'train','val','test'} -> list of dicts (file paths or arrays), in_channels, num_classes)."""
    from vscan.data.synthetic_seg import load_msd_datalist, make_synthetic_split, num_classes_of, synthetic_msd_folder
    d = cfg["data"]
    sd = d["spatial_dims"]
    if d["source"] == "synthetic":
        gen = dict(size=_sizes(d["size"], sd), spatial_dims=sd, num_seg_classes=d["num_seg_classes"],
                   num_objs=d["num_objs"], rad_min=d["rad_min"], rad_max=d["rad_max"], noise_max=d["noise_max"])
        n = {"train": d["n_train"], "val": d["n_val"], "test": d["n_test"]}
        if d["in_memory"]:
            splits = {s: make_synthetic_split(s, n[s], cfg["seed"], **gen) for s in n}
        else:
            root = Path(d["root"] or out_dir / "data")
            synthetic_msd_folder(root, n["train"], n["val"], n["test"], seed=cfg["seed"], **gen)
            splits = load_msd_datalist(root)
        in_ch, n_cls = 1, d["num_seg_classes"] + 1
    else:
        splits = load_msd_datalist(d["root"], d["val_fraction"], d["test_fraction"], cfg["seed"], d["max_cases"])
        import json
        meta = json.loads((Path(d["root"]) / "dataset.json").read_text())
        in_ch = len(meta.get("modality", {"0": ""})) or 1
        n_cls = num_classes_of(d["root"]) or 2
    in_ch = d["in_channels"] or in_ch
    n_cls = d["num_classes"] or n_cls
    if not splits["train"]:
        raise ValueError("no training cases")
    if not splits["val"]:
        splits["val"] = splits["train"][:1]
    return splits, in_ch, n_cls


def build_transforms(cfg: dict, train: bool, from_files: bool):
    """MONAI dict transforms on {'image', 'label'}; deterministic ones first (cached by CacheDataset)."""
    import monai.transforms as T
    d, t = cfg["data"], cfg["train"]
    sd = d["spatial_dims"]
    keys = ["image", "label"]
    xs = []
    if from_files:
        xs += [T.LoadImaged(keys, image_only=True), T.EnsureChannelFirstd(keys)]
        if sd == 3 and d["orientation"] and d["source"] == "msd":
            xs.append(T.Orientationd(keys, axcodes=d["orientation"]))
        if d["pixdim"]:
            xs.append(T.Spacingd(keys, pixdim=d["pixdim"], mode=("bilinear", "nearest")))
    intensity = d["intensity"]
    if intensity == "minmax":
        xs.append(T.ScaleIntensityd("image"))
    elif intensity == "zscore":
        xs.append(T.NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    elif isinstance(intensity, (list, tuple)) and len(intensity) == 2:
        xs.append(T.ScaleIntensityRanged("image", a_min=float(intensity[0]), a_max=float(intensity[1]),
                                         b_min=0.0, b_max=1.0, clip=True))
    else:
        raise ValueError(f"data.intensity must be 'minmax', 'zscore' or [a_min, a_max], got {intensity!r}")
    xs += [T.EnsureTyped("image", dtype=torch.float32, track_meta=False),
           T.EnsureTyped("label", dtype=torch.long, track_meta=False)]
    if train:
        patch = [int(s) for s in t["patch_size"]]
        xs += [T.SpatialPadd(keys, spatial_size=patch),
               T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=t["pos"], neg=t["neg"],
                                        num_samples=t["num_samples"], image_key="image", image_threshold=0)]
        if t["augment"]:
            xs += [T.RandFlipd(keys, prob=0.5, spatial_axis=i) for i in range(sd)]
        if t["intensity_augment"]:
            xs += [T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
                   T.RandShiftIntensityd("image", offsets=0.1, prob=0.5)]
    return T.Compose(xs)


def build_loaders(cfg: dict, splits: dict):
    from monai.data import CacheDataset, DataLoader
    d, t = cfg["data"], cfg["train"]
    from_files = isinstance(splits["train"][0]["image"], str)

    def ds(items, train):
        items = [{k: v for k, v in it.items() if k in ("image", "label")} for it in items]
        return CacheDataset(items, build_transforms(cfg, train, from_files), cache_rate=d["cache_rate"],
                            num_workers=None, progress=False)
    train_loader = DataLoader(ds(splits["train"], True), batch_size=t["batch_size"], shuffle=True,
                              num_workers=d["num_workers"])
    eval_loaders = {s: DataLoader(ds(splits[s], False), batch_size=1, num_workers=d["num_workers"])
                    for s in ("val", "test") if splits[s]}
    return train_loader, eval_loaders


# ============================================================================ model
def build_model(model_cfg: dict, spatial_dims: int, in_channels: int, out_channels: int) -> torch.nn.Module:
    """``{'name': 'UMambaBot' | 'SegResNet' | 'pkg.mod.Class', 'kwargs': {...}}`` or a MONAI-style
    ``{'_target_': 'dotted.path', ...}``. spatial_dims / in_channels / out_channels are filled in
    when the class takes them and the config does not set them."""
    import pydoc
    model_cfg = dict(model_cfg)
    if "_target_" in model_cfg:
        name, kwargs = model_cfg.pop("_target_"), model_cfg
    else:
        name, kwargs = model_cfg.get("name"), dict(model_cfg.get("kwargs") or {})
    cls = None
    if isinstance(name, str) and "." not in name:
        import vscan.models.medical as vmed
        cls = getattr(vmed, name, None) if name in vmed.__all__ else None
        if cls is None:
            import monai.networks.nets as mnets
            cls = getattr(mnets, name, None)
    elif isinstance(name, str):
        cls = pydoc.locate(name)
    if cls is None or not callable(cls):
        raise ValueError(f"model {name!r} not found: use a vscan.models.medical name (UMambaBot, UMambaEnc, "
                         f"ScanSegNet), a monai.networks.nets name (SegResNet, SwinUNETR, ...) or a dotted path")
    params = inspect.signature(cls).parameters
    for k, v in (("spatial_dims", spatial_dims), ("in_channels", in_channels), ("out_channels", out_channels)):
        if k in params and k not in kwargs:
            kwargs[k] = v
    return cls(**kwargs)


def _deep_supervised(model) -> bool:
    return bool(getattr(model, "deep_supervision", False))


# ============================================================================ loops
def make_loss(model, weights_mode: str = "exp"):
    from monai.losses import DeepSupervisionLoss, DiceCELoss
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    return DeepSupervisionLoss(loss, weight_mode=weights_mode) if _deep_supervised(model) else loss


def _fmt(x):
    return x.to(memory_format=torch.channels_last_3d) if x.dim() == 5 else x.to(memory_format=torch.channels_last)


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, device, cfg, progress=None) -> float:
    t = cfg["train"]
    model.train()
    total, n = 0.0, 0
    use_amp = bool(t["amp"]) and device.type == "cuda"
    for batch in loader:
        x, y = batch["image"].to(device), batch["label"].to(device)
        if t["channels_last"]:
            x = _fmt(x)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(x)
        if _deep_supervised(model) and isinstance(out, torch.Tensor) and out.dim() == x.dim() + 1:
            out = list(out.float().unbind(1))
        loss = loss_fn(out, y) if isinstance(out, list) else loss_fn(out.float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()}; lower train.lr or disable train.amp")
        loss.backward()
        if t["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        optimizer.step()
        scheduler.step()
        total += loss.item() * x.shape[0]
        n += x.shape[0]
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
    return total / max(n, 1)


@torch.no_grad()
def evaluate(model, loader, device, cfg, num_classes: int, keep_example: bool = False):
    """Sliding-window inference over whole volumes -> per-class Dice (foreground classes) and
    their mean; optionally the first case's image, label and prediction (numpy)."""
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric
    inf = cfg["infer"]
    model.eval()
    metric = DiceMetric(include_background=False, reduction="mean_batch", num_classes=num_classes)
    example = None
    for batch in loader:
        x, y = batch["image"].to(device), batch["label"].to(device)
        if cfg["train"]["channels_last"]:
            x = _fmt(x)
        logits = sliding_window_inference(x, roi_size=[int(s) for s in inf["roi_size"]],
                                          sw_batch_size=inf["sw_batch_size"], predictor=model,
                                          overlap=inf["overlap"], mode=inf["mode"])
        if tuple(logits.shape[2:]) != tuple(x.shape[2:]):
            raise RuntimeError(f"sliding-window output {tuple(logits.shape)} does not cover the input {tuple(x.shape)}")
        pred = logits.argmax(1, keepdim=True)
        metric(y_pred=pred, y=y)
        if keep_example and example is None:
            example = (x[0, 0].float().cpu().numpy(), y[0, 0].cpu().numpy(), pred[0, 0].cpu().numpy())
    per_class = metric.aggregate().cpu().numpy().astype(float)
    metric.reset()
    mean = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")
    return {"dice": mean, "dice_per_class": [round(float(v), 5) for v in per_class]}, example


def make_scheduler(optimizer, total_steps: int, warmup_steps: int):
    def lr_lambda(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


# ============================================================================ figure
def save_figure(path, history: list[dict], example, title: str):
    """Loss and Dice curves, and one slice (the one with most foreground) of image / label / prediction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 5 if example is not None else 2, figsize=(19 if example is not None else 9, 3.6))
    ep = [r["epoch"] for r in history]
    axes[0].plot(ep, [r["train_loss"] for r in history], marker="o", ms=3)
    axes[0].set(title="train loss (Dice+CE)", xlabel="epoch")
    pts = [(r["epoch"], r["val_dice"]) for r in history if r.get("val_dice") is not None]
    if pts:
        axes[1].plot(*zip(*pts), marker="o", ms=3, label="val mean fg Dice")
    axes[1].set(title="validation Dice", xlabel="epoch", ylim=(0, 1))
    axes[1].legend(fontsize=8)
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
    if example is not None:
        img, lbl, pred = example
        if img.ndim == 3:
            k = int(np.argmax((lbl > 0).reshape(-1, lbl.shape[-1]).sum(0)))
            img, lbl, pred = img[..., k], lbl[..., k], pred[..., k]
            where = f"slice {k} of the last axis"
        else:
            where = "2-D"
        vmax = max(int(lbl.max()), int(pred.max()), 1)
        for ax, arr, name, kw in ((axes[2], img, "image", {"cmap": "gray"}),
                                  (axes[3], lbl, "label", {"cmap": "viridis", "vmin": 0, "vmax": vmax}),
                                  (axes[4], pred, "prediction", {"cmap": "viridis", "vmin": 0, "vmax": vmax})):
            ax.imshow(arr.T, origin="lower", interpolation="nearest", **kw)
            ax.set_title(f"{name} ({where})" if name == "image" else name)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return _atomic(Path(path), lambda f: f.write(buf.getvalue()))


# ============================================================================ run
def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): a figure the machine's other load
    inflates far less than wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def versions() -> dict:
    import monai

    import vscan
    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "vscan": vscan.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}


def run_segmentation(config: dict | None = None, log=print) -> dict:
    """Train (unless ``train.epochs`` is 0 with ``resume``), pick the best validation checkpoint,
    evaluate it on the held-out test split and write the outputs to ``out_dir``. Returns the
    summary written to ``metrics.json``."""
    import yaml
    from monai.utils import set_determinism
    from tqdm.auto import tqdm
    cfg = check_config(merge_config(DEFAULTS, config))
    t0, cpu0 = time.time(), _cpu_seconds()
    out_dir = Path(cfg["out_dir"])
    ckpt_dir = out_dir / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = _device(cfg["device"])
    set_determinism(seed=cfg["seed"])

    splits, in_ch, n_cls = prepare_data(cfg, out_dir)
    train_loader, eval_loaders = build_loaders(cfg, splits)
    t_data = time.time() - t0
    sd = cfg["data"]["spatial_dims"]
    model = build_model(cfg["model"], sd, in_ch, n_cls).to(device)
    if cfg["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last_3d if sd == 3 else torch.channels_last)
    t = cfg["train"]
    optimizer = (torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.SGD)(
        model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"],
        **({"momentum": 0.99, "nesterov": True} if t["optimizer"] == "sgd" else {}))
    steps_per_epoch = len(train_loader)
    scheduler = make_scheduler(optimizer, t["epochs"] * steps_per_epoch, t["warmup_epochs"] * steps_per_epoch)
    loss_fn = make_loss(model, t["deep_supervision_weights"])
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[segment] {type(model).__name__} ({n_params / 1e6:.2f} M params) on {device}; "
        f"{len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} test cases, "
        f"{in_ch} channel(s), {n_cls} classes; data ready in {t_data:.1f} s")

    history, start_epoch, best = [], 0, {"dice": -1.0, "epoch": None}
    if cfg["resume"] and (ckpt_dir / "last.pt").is_file():
        ck = load_checkpoint(ckpt_dir / "last.pt", map_location=device)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        history, start_epoch, best = ck["history"], ck["epoch"], ck["best"]
        log(f"[segment] resumed from {ckpt_dir / 'last.pt'} at epoch {start_epoch}")

    t_train0 = time.time()
    stopped_early = False
    for epoch in range(start_epoch, t["epochs"]):
        te = time.time()
        with tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{t['epochs']}", leave=False, mininterval=2,
                  disable=None) as bar:
            train_loss = train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, device, cfg, bar)
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "lr": optimizer.param_groups[0]["lr"],
               "val_dice": None, "epoch_s": None}
        last = epoch + 1 == t["epochs"]
        over_time = t["time_limit_min"] is not None and (time.time() - t0) / 60 > t["time_limit_min"]
        if (epoch + 1) % t["val_every"] == 0 or last or over_time:
            val, _ = evaluate(model, eval_loaders["val"], device, cfg, n_cls)
            row["val_dice"] = round(val["dice"], 5)
            if val["dice"] > best["dice"]:
                best = {"dice": val["dice"], "epoch": epoch + 1}
                atomic_torch_save({"model": model.state_dict(), "epoch": epoch + 1, "val_dice": val["dice"],
                                   "config": cfg}, ckpt_dir / "best.pt")
        row["epoch_s"] = round(time.time() - te, 1)
        history.append(row)
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                           "best": best, "config": cfg}, ckpt_dir / "last.pt")
        atomic_write_csv(out_dir / "metrics.csv", history)
        log(f"[segment] epoch {epoch + 1}/{t['epochs']} loss {train_loss:.4f}"
            + (f" val Dice {row['val_dice']:.4f}" if row["val_dice"] is not None else "")
            + f" ({row['epoch_s']} s, {time.time() - t0:.0f} s total)")
        if over_time and not last:
            log(f"[segment] time limit {t['time_limit_min']} min reached; stopping after epoch {epoch + 1}")
            stopped_early = True
            break
    t_train = time.time() - t_train0

    if (ckpt_dir / "best.pt").is_file():
        model.load_state_dict(load_checkpoint(ckpt_dir / "best.pt", map_location=device)["model"])
    te = time.time()
    test_split = "test" if "test" in eval_loaders else "val"
    test, example = evaluate(model, eval_loaders[test_split], device, cfg, n_cls, keep_example=True)
    t_test = time.time() - te
    wall = time.time() - t0
    summary = {
        "model": type(model).__name__, "params_M": round(n_params / 1e6, 3),
        "test_split": test_split, "n_cases": {s: len(v) for s, v in splits.items()},
        "test_dice_mean_fg": round(test["dice"], 5), "test_dice_per_class": test["dice_per_class"],
        "best_val_dice": round(best["dice"], 5), "best_epoch": best["epoch"],
        "epochs_run": len(history), "stopped_early": stopped_early,
        "wall_s": round(wall, 1), "data_s": round(t_data, 1), "train_s": round(t_train, 1),
        "test_s": round(t_test, 1), "cpu_s": round(_cpu_seconds() - cpu0, 1),
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "device": str(device), "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "config": cfg,
    }
    atomic_write_json(out_dir / "metrics.json", summary)
    save_figure(out_dir / "segmentation.png", history, example,
                f"{summary['model']}: test mean foreground Dice {test['dice']:.3f} "
                f"({len(splits[test_split])} held-out {test_split} cases), wall {wall / 60:.1f} min")
    log(f"[segment] test ({test_split}) mean foreground Dice {test['dice']:.4f} per class {test['dice_per_class']}; "
        f"wall {wall:.0f} s (CPU {summary['cpu_s']:.0f} s); outputs in {out_dir}")
    return summary
