"""Image-classification training and evaluation for any timm model name (vscan's or timm's).

One run = :func:`run` with a :class:`TrainConfig`. It builds the model with
``timm.create_model``, the data with :mod:`vscan.data.images`, the optimizer with
``timm.optim.create_optimizer_v2`` (so ``no_weight_decay`` / ``group_matcher`` / layer decay
apply), a warm-up + cosine schedule from ``timm.scheduler``, optional EMA
(``timm.utils.ModelEmaV3``), bf16 autocast on CUDA, and gradient checkpointing.

Under ``torchrun`` it trains with DistributedDataParallel (NCCL on GPUs, gloo on CPU); every
rank sees the same deterministic per-epoch shuffle and takes its own shard, so a run can be
resumed mid-epoch. Only rank 0 writes: ``metrics.csv``/``metrics.json`` every epoch, a PNG of
the curves, ``last.pt`` (everything needed to resume) and ``best.pt`` (weights of the best
epoch), all atomically.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class TrainConfig:
    """Every knob of a classification run; YAML files and CLI flags set these fields."""
    # model
    model: str = "vscan_vim_micro_patch8_32"
    model_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False
    num_classes: int | None = None          # None: from the dataset
    drop_rate: float = 0.0
    drop_path_rate: float | None = None     # None: the model's default
    grad_checkpointing: bool = False
    # data
    dataset: str = "digits"                 # 'digits' | ImageFolder dir | 'folder' | torchvision class name
    data_dir: str | None = None
    img_size: int | None = None             # None: the model's pretrained_cfg input size
    train_split: str = "train"
    val_split: str = "val"
    max_train_samples: int | None = None    # a fixed random subset (quick runs, tests)
    max_val_samples: int | None = None
    aug_backend: str = "torchvision"        # 'torchvision' | 'albumentations'
    scale: tuple = (0.08, 1.0)              # RandomResizedCrop area range
    ratio: tuple = (0.75, 1.3333333)        # RandomResizedCrop aspect range
    hflip: float = 0.5
    rotate: float = 0.0                     # max rotation in degrees
    workers: int = 0
    # optimisation
    epochs: int = 10
    batch_size: int = 64                    # per process
    eval_batch_size: int | None = None
    opt: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    layer_decay: float | None = None
    clip_grad: float | None = None
    sched: str = "cosine"
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    smoothing: float = 0.1
    amp: str = "auto"                       # auto = bf16 on CUDA, off on CPU
    ema: bool = False
    ema_decay: float = 0.998
    # run
    seed: int = 0
    output: str = "runs/train"
    resume: str | None = None               # a last.pt path, or 'auto' (<output>/last.pt if present)
    save_every_steps: int = 0               # also write last.pt every N steps (0: once per epoch)
    max_steps: int | None = None            # stop after this many optimizer steps in total
    device: str = "auto"                    # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    threads: int | None = None              # torch intra-op threads per process (None: torch's default)
    progress: bool = True                   # tqdm bars (rank 0)

    def validate(self) -> "TrainConfig":
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(tuple(self.scale)) != 2 or len(tuple(self.ratio)) != 2:
            raise ValueError(f"scale and ratio take two numbers each, got scale={self.scale}, ratio={self.ratio}")
        if not isinstance(self.model_kwargs, dict):
            raise TypeError(f"model_kwargs must be a mapping, got {self.model_kwargs!r}")
        return self


@dataclass
class RunResult:
    best_acc: float
    best_epoch: int
    last_metrics: dict
    output: Path
    plot: Path | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    global_step: int
    step_losses: list = field(default_factory=list)    # this process's training losses, one per step
    model: nn.Module | None = None


# --------------------------------------------------------------------------------------------
# distributed set-up


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device: str = "auto", set_threads: bool = True) -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and start the process group:
    NCCL when training on CUDA, gloo on CPU. Without torchrun: one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for CUDA, but torch.cuda.is_available() is False")
        torch.cuda.set_device(dev)
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        if dev.type == "cpu" and set_threads:   # share the cores between the local processes
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistInfo(rank, world, local, dev)


def finish_distributed() -> None:
    """Tear down the process group started by :func:`setup_distributed` (no-op without one)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    if info.enabled:
        import torch.distributed as dist
        dist.all_reduce(t)
    return t.tolist()


def _all_gather_object(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    import torch.distributed as dist
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------
# data


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1,
                  shuffle: bool = True, drop_last: bool = True) -> list[list[int]]:
    """This rank's batches of one epoch: one permutation per epoch (the same on every rank,
    from ``seed`` and ``epoch``), padded so every rank gets the same number of samples,
    sharded by stride. Deterministic, so a run resumed mid-epoch skips exactly the batches
    it had done."""
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    per_rank = math.ceil(n / world)
    order += order[: per_rank * world - n]              # pad by wrapping around
    mine = order[rank::world]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def build_datasets(cfg: TrainConfig):
    """(train set, val set, train slot, eval slot): transforms are filled in once the model exists."""
    from vscan.data.images import TransformSlot, build_dataset

    side = cfg.img_size or int(cfg.model_kwargs.get("img_size", 0) or 0) or 32
    slots = TransformSlot(), TransformSlot()
    train = build_dataset(cfg.dataset, cfg.train_split, root=cfg.data_dir, transform=slots[0], img_size=side)
    val = build_dataset(cfg.dataset, cfg.val_split, root=cfg.data_dir, transform=slots[1], img_size=side)
    return _subset(train, cfg.max_train_samples, cfg.seed), _subset(val, cfg.max_val_samples, cfg.seed + 1), slots


def _subset(ds, n: int | None, seed: int):
    if not n or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()
    return torch.utils.data.Subset(ds, idx)


def build_transforms(cfg: TrainConfig, model: nn.Module, slots) -> dict:
    """Fill the datasets' transform slots from the model's timm data config; returns that config."""
    from timm.data import resolve_model_data_config

    from vscan.data.images import build_transform

    args = {"input_size": (3, cfg.img_size, cfg.img_size)} if cfg.img_size else None
    data_config = resolve_model_data_config(model, args=args)
    slots[0].set(build_transform(data_config, train=True, backend=cfg.aug_backend, scale=cfg.scale,
                                 ratio=cfg.ratio, hflip=cfg.hflip, rotate=cfg.rotate))
    slots[1].set(build_transform(data_config, train=False, backend=cfg.aug_backend))
    return data_config


def _loader(ds, batches, workers: int, pin: bool, seed: int = 0):
    # An explicit generator keeps the loader's seed draw off the global RNG, so a run resumed
    # mid-epoch (global RNG restored) augments the remaining batches exactly as the original.
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=workers, pin_memory=pin,
                                       persistent_workers=False, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# model, optimizer, schedule


def build_model(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    import timm

    import vscan  # noqa: F401  (registers vscan's models)

    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("num_classes", num_classes)
    if cfg.drop_rate:
        kwargs.setdefault("drop_rate", cfg.drop_rate)
    if cfg.drop_path_rate is not None:
        kwargs.setdefault("drop_path_rate", cfg.drop_path_rate)
    if not timm.is_model(cfg.model):
        raise ValueError(f"unknown model {cfg.model!r}: not a timm or vscan model name "
                         f"(list them with timm.list_models('*{cfg.model.split('_')[0]}*'))")
    model = timm.create_model(cfg.model, pretrained=cfg.pretrained, **kwargs)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model.to(device)


def build_optimizer_and_schedule(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    opt = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                              momentum=cfg.momentum, layer_decay=cfg.layer_decay)
    sched, _ = create_scheduler_v2(opt, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                                   warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False,
                                   updates_per_epoch=steps_per_epoch)
    return opt, sched


def _amp(cfg: TrainConfig, device: torch.device):
    """(autocast context factory, GradScaler or None)."""
    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    if mode == "off":
        return nullcontext, None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' or 'off' on CPU")
    scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


# --------------------------------------------------------------------------------------------
# checkpoints


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _resolve_resume(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        p = Path(cfg.output) / "last.pt"
        return p if p.is_file() else None
    p = Path(cfg.resume)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {p} (give a last.pt path, its folder, or 'auto')")
    return p


# --------------------------------------------------------------------------------------------
# train / evaluate


@torch.no_grad()
def evaluate(model: nn.Module, ds, batch_size: int, info: DistInfo, autocast, workers: int = 0,
             desc: str = "eval", progress: bool = False) -> dict:
    """Loss and top-1 accuracy over ``ds`` (each rank takes every world-th sample; summed over ranks)."""
    from tqdm import tqdm

    idx = list(range(info.rank, len(ds), info.world))
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    was_training = model.training
    model.eval()
    loss_sum = correct = count = 0.0
    crit = nn.CrossEntropyLoss(reduction="sum")
    bar = tqdm(_loader(ds, batches, workers, info.device.type == "cuda"), total=len(batches), desc=desc,
               leave=False, disable=not (progress and info.main), dynamic_ncols=True)
    for x, y in bar:
        x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
        with autocast():
            logits = model(x)
        loss_sum += float(crit(logits.float(), y))
        correct += float((logits.argmax(-1) == y).sum())
        count += y.numel()
    model.train(was_training)
    loss_sum, correct, count = _all_reduce_sum([loss_sum, correct, count], info)
    return {"loss": loss_sum / max(count, 1), "acc": 100.0 * correct / max(count, 1), "count": int(count)}


class _Writer:
    """Rank-0 outputs of a run: metrics CSV/JSON, the curves PNG, checkpoints."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled = out, enabled
        if enabled:
            out.mkdir(parents=True, exist_ok=True)

    def metrics(self, rows: list[dict], summary: dict):
        if not self.enabled:
            return None
        from .io import atomic_write_csv, atomic_write_json
        from .plots import plot_curves
        atomic_write_csv(self.out / "metrics.csv", rows)
        atomic_write_json(self.out / "metrics.json", {"summary": summary, "epochs": rows})
        if not rows:
            return None
        acc = ["train_acc", "val_acc"] + (["val_acc_ema"] if "val_acc_ema" in rows[-1] else [])
        panels = [["train_loss", "val_loss"], acc]
        return plot_curves(rows, self.out / "curves.png", x="epoch", panels=panels, title=summary.get("model"))

    def save(self, name: str, state: dict):
        if not self.enabled:
            return None
        from .io import atomic_torch_save
        return atomic_torch_save(state, self.out / name)

    def config(self, cfg: TrainConfig):
        if self.enabled:
            import yaml

            from .io import atomic_write_text
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(_plain(dataclasses.asdict(cfg)),
                                                                      sort_keys=False))


def _plain(obj):
    """Tuples -> lists, so YAML / weights_only checkpoints hold plain types only."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _zero_partial() -> dict:
    return {"loss": 0.0, "correct": 0.0, "count": 0.0}


class ClassificationRun:
    """State of one run (model, optimizer, schedule, counters) and the steps that advance it."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.info = info = setup_distributed(cfg.device, set_threads=not cfg.threads)
        torch.manual_seed(cfg.seed)                     # same initial weights on every rank
        self.writer = _Writer(Path(cfg.output), info.main)
        self.train_ds, self.val_ds, slots = build_datasets(cfg)
        if cfg.num_classes is None:
            from vscan.data.images import num_classes_of
            self.num_classes = num_classes_of(self.train_ds)
        else:
            self.num_classes = int(cfg.num_classes)
        self.core = build_model(cfg, self.num_classes, info.device)
        self.data_config = build_transforms(cfg, self.core, slots)
        self.steps_per_epoch = len(self.batches(0))
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(self.train_ds)} images) is empty")
        self.opt, self.sched = build_optimizer_and_schedule(cfg, self.core, self.steps_per_epoch)
        self.autocast, self.scaler = _amp(cfg, info.device)
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(self.core, decay=cfg.ema_decay, use_warmup=True)
        self.model = self.core
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.model = DDP(self.core, device_ids=[info.device.index] if info.device.type == "cuda" else None)
        self.crit = nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)
        # counters
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.rows: list[dict] = []
        self.best_acc, self.best_epoch = -1.0, -1
        self.partial = _zero_partial()
        self.step_losses: list[float] = []
        self.last_ckpt = self.best_ckpt = self.plot = None

    def batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(len(self.train_ds), self.cfg.batch_size, epoch, self.cfg.seed, self.info.rank,
                             self.info.world)

    # -- checkpoints -----------------------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to continue exactly here (a collective call under DDP: every rank's RNG)."""
        rng = _all_gather_object(_rng_state(self.info.device), self.info)
        return {"model_name": self.cfg.model, "num_classes": self.num_classes, "model": self.core.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
                "rows": self.rows, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "partial": dict(self.partial), "rng": rng, "config": _plain(dataclasses.asdict(self.cfg)),
                "data_config": _plain(dict(self.data_config))}

    def save_last(self):
        state = self.state()
        self.last_ckpt = self.writer.save("last.pt", state) or self.last_ckpt

    def resume(self, path: Path):
        from .io import load_checkpoint
        ck = load_checkpoint(path, map_location=self.info.device)
        if ck.get("model_name") != self.cfg.model:
            raise ValueError(f"resume: {path} holds a {ck.get('model_name')!r} run, this config trains "
                             f"{self.cfg.model!r}")
        self.core.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        if self.ema is not None and ck.get("ema"):
            self.ema.module.load_state_dict(ck["ema"])
        self.epoch, self.batch_in_epoch, self.global_step = ck["epoch"], ck["batch_in_epoch"], ck["global_step"]
        self.rows, self.best_acc, self.best_epoch = ck["rows"], ck["best_acc"], ck["best_epoch"]
        self.partial = ck.get("partial") or _zero_partial()
        rng = ck["rng"]
        _set_rng_state(rng[self.info.rank] if self.info.rank < len(rng) else rng[0], self.info.device)
        if self.batch_in_epoch >= self.steps_per_epoch:      # saved at an epoch end
            self.epoch, self.batch_in_epoch, self.partial = self.epoch + 1, 0, _zero_partial()
        if self.info.main:
            print(f"resumed from {path}: epoch {self.epoch + 1}, batch {self.batch_in_epoch}, "
                  f"step {self.global_step}", flush=True)

    # -- training --------------------------------------------------------------------------

    def train_step(self, x, y) -> float:
        cfg, opt = self.cfg, self.opt
        with self.autocast():
            logits = self.model(x)
            loss = self.crit(logits.float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.global_step}; lower lr "
                                     f"(now {opt.param_groups[0]['lr']:.3g}) or use amp='off'")
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if cfg.clip_grad:
                self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(self.core.parameters(), cfg.clip_grad)
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.core.parameters(), cfg.clip_grad)
            opt.step()
        self.global_step += 1
        self.sched.step_update(num_updates=self.global_step)
        if self.ema is not None:
            self.ema.update(self.core, step=self.global_step)
        value = float(loss.detach())
        self.partial["loss"] += value * y.numel()
        self.partial["correct"] += float((logits.argmax(-1) == y).sum())
        self.partial["count"] += y.numel()
        self.step_losses.append(value)
        return value

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch; False when ``max_steps`` stopped it early."""
        from tqdm import tqdm

        cfg, info = self.cfg, self.info
        batches = self.batches(self.epoch)
        if self.batch_in_epoch == 0:
            self.partial = _zero_partial()
        self.model.train()
        loader = _loader(self.train_ds, batches[self.batch_in_epoch:], cfg.workers, info.device.type == "cuda",
                         seed=cfg.seed * 1_000_003 + self.epoch * 1_009 + self.batch_in_epoch + 97 * info.rank)
        bar = tqdm(loader, total=len(batches) - self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and info.main), dynamic_ncols=True, leave=False)
        for x, y in bar:
            loss = self.train_step(x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True))
            self.batch_in_epoch += 1
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.opt.param_groups[0]['lr']:.2e}")
            if cfg.save_every_steps and self.global_step % cfg.save_every_steps == 0:
                self.save_last()
            if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                break
        bar.close()
        return self.batch_in_epoch >= len(batches)

    def end_epoch(self, seconds: float) -> dict:
        """Evaluate, log a metrics row, write best.pt / last.pt / metrics / plot; next epoch."""
        cfg, info = self.cfg, self.info
        tr_loss, tr_correct, tr_count = _all_reduce_sum(
            [self.partial["loss"], self.partial["correct"], self.partial["count"]], info)
        eval_bs = cfg.eval_batch_size or cfg.batch_size
        val = evaluate(self.core, self.val_ds, eval_bs, info, self.autocast, cfg.workers, progress=cfg.progress)
        row = {"epoch": self.epoch + 1, "step": self.global_step, "lr": self.opt.param_groups[0]["lr"],
               "train_loss": tr_loss / max(tr_count, 1), "train_acc": 100.0 * tr_correct / max(tr_count, 1),
               "val_loss": val["loss"], "val_acc": val["acc"], "epoch_time_s": seconds}
        score, use_ema = val["acc"], False
        if self.ema is not None:
            val_ema = evaluate(self.ema.module, self.val_ds, eval_bs, info, self.autocast, cfg.workers)
            row.update(val_loss_ema=val_ema["loss"], val_acc_ema=val_ema["acc"])
            use_ema = val_ema["acc"] > val["acc"]
            score = max(score, val_ema["acc"])
        self.rows.append(row)
        if score > self.best_acc:
            self.best_acc, self.best_epoch = score, self.epoch + 1
            weights = (self.ema.module if use_ema else self.core).state_dict()
            self.best_ckpt = self.writer.save("best.pt", {
                "model_name": cfg.model, "num_classes": self.num_classes, "model": weights,
                "epoch": self.epoch + 1, "val_acc": score, "ema_weights": use_ema,
                "config": _plain(dataclasses.asdict(cfg)), "data_config": _plain(dict(self.data_config))
            }) or self.best_ckpt
        self.save_last()
        summary = {"model": cfg.model, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                   "global_step": self.global_step, "world_size": info.world, "device": str(info.device)}
        self.plot = self.writer.metrics(self.rows, summary) or self.plot
        if info.main:
            ema_txt = f", ema {row['val_acc_ema']:.2f}%" if "val_acc_ema" in row else ""
            print(f"epoch {self.epoch + 1:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
                  f"acc {row['train_acc']:.2f}%  val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}%{ema_txt}"
                  f"  ({seconds:.1f}s)", flush=True)
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return row

    def fit(self) -> "ClassificationRun":
        cfg = self.cfg
        path = _resolve_resume(cfg)
        if path is not None:
            self.resume(path)
        self.writer.config(cfg)
        self.sched.step_update(num_updates=self.global_step)
        while self.epoch < cfg.epochs:
            t0 = time.time()
            if not self.train_epoch():          # stopped mid-epoch by max_steps
                self.save_last()
                break
            self.end_epoch(time.time() - t0)
            if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                break
        return self

    def result(self, return_model: bool = False) -> RunResult:
        return RunResult(best_acc=self.best_acc, best_epoch=self.best_epoch,
                         last_metrics=self.rows[-1] if self.rows else {}, output=Path(self.cfg.output),
                         plot=self.plot, best_checkpoint=self.best_ckpt, last_checkpoint=self.last_ckpt,
                         global_step=self.global_step, step_losses=list(self.step_losses),
                         model=self.core if return_model else None)


def run(cfg: TrainConfig, return_model: bool = False) -> RunResult:
    """Train and evaluate one model; see the module docstring. Safe to call under torchrun."""
    return ClassificationRun(cfg).fit().result(return_model)


def load_trained(path, device="cpu") -> nn.Module:
    """Rebuild the model of a ``best.pt`` / ``last.pt`` (vscan's trainer) and load its weights."""
    import timm

    import vscan  # noqa: F401

    from .io import load_checkpoint
    ck = load_checkpoint(path, map_location=device)
    kwargs = dict(ck["config"].get("model_kwargs") or {})
    kwargs["num_classes"] = ck["num_classes"]
    model = timm.create_model(ck["model_name"], **kwargs)
    model.load_state_dict(ck["model"])
    return model.to(device).eval()
