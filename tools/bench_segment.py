#!/usr/bin/env python
"""3-D segmentation benchmark: training-step time and peak memory (and inference) of vscan's
UMambaBot, UMambaEnc and ScanSegNet against MONAI's SwinUNETR, UNETR and SegResNet, in one run.

    python tools/bench_segment.py --out results/bench_segment          # GPU: 1x1x128^3 and 96^3, bf16 autocast
    python tools/bench_segment.py --smoke --out /tmp/bench_seg         # CPU: 2x1x32^3, tiny widths: checks the script

Per model and size: build, AdamW, DiceCELoss(to_onehot_y, softmax) on random labels; ``--warmup``
steps then the median of ``--steps`` timed training steps (forward under bf16 autocast, backward,
optimizer step), peak CUDA memory from ``torch.cuda.max_memory_allocated`` (reset per model),
then an inference pass (eval, no_grad, autocast). An out-of-memory error is caught and reported
for that model; the others still run. Writes ``bench_segment.json`` and ``bench_segment.md``
(table + command + environment) to --out.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

OUT_CHANNELS = 4
MODELS = ("UMambaBot", "UMambaEnc", "ScanSegNet", "SwinUNETR", "UNETR", "SegResNet")


def model_kwargs(name: str, size: int, smoke: bool) -> dict:
    """Published / default widths on the GPU; tiny ones for the CPU smoke run."""
    if name in ("UMambaBot", "UMambaEnc"):   # nnU-Net 3d_fullres-like plan: 6 stages, total stride 32
        if smoke:   # the CPU reference scan at full resolution would dominate: no Mamba on stage 0
            return {"features": (4, 8, 16, 32), **({"mamba_stages": (1, 2, 3)} if name == "UMambaEnc" else {})}
        return {"features": (32, 64, 128, 256, 320, 320), "norm_name": ("INSTANCE", {"affine": True})}
    if name == "ScanSegNet":                 # SegMamba widths, tri-orientation scans
        return ({"features": (4, 8, 16), "depths": (0, 1, 1)} if smoke else
                {"features": (48, 96, 192, 384), "depths": 2, "orders": "tri"})
    if name == "SwinUNETR":   # smoke: 1x1x1 bottleneck at 32^3, where instance norm cannot train
        return {"feature_size": 12, "norm_name": "batch"} if smoke else {"feature_size": 48}
    if name == "UNETR":
        return ({"img_size": (size,) * 3, "feature_size": 4, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
                if smoke else {"img_size": (size,) * 3, "feature_size": 16})
    if name == "SegResNet":
        return {"init_filters": 8 if smoke else 16}
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def build(name: str, size: int, smoke: bool) -> torch.nn.Module:
    kw = model_kwargs(name, size, smoke)
    if name in ("UMambaBot", "UMambaEnc", "ScanSegNet"):
        import vscan.models.medical as vmed
        return getattr(vmed, name)(spatial_dims=3, in_channels=1, out_channels=OUT_CHANNELS, **kw)
    import monai.networks.nets as nets
    return getattr(nets, name)(spatial_dims=3, in_channels=1, out_channels=OUT_CHANNELS, **kw)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def bench_one(name: str, size: int, args, device) -> dict:
    row = {"model": name, "size": size, "batch": args.batch}
    model = opt = x = y = None
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        model = build(name, size, args.smoke).to(device)
        row["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        from monai.losses import DiceCELoss
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.rand(args.batch, 1, size, size, size, generator=g).to(device)
        y = torch.randint(0, OUT_CHANNELS, (args.batch, 1, size, size, size), generator=g).to(device)
        amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(**amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            loss.backward()
            opt.step()
            return loss

        model.train()
        times = []
        for i in range(args.warmup + args.steps):
            _sync(device)
            t = time.perf_counter()
            loss = step()
            _sync(device)
            if i >= args.warmup:
                times.append((time.perf_counter() - t) * 1e3)
        row["train_ms"] = round(statistics.median(times), 1)
        row["train_loss_finite"] = bool(torch.isfinite(loss).item())
        if device.type == "cuda":
            row["train_peak_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        opt.zero_grad(set_to_none=True)
        opt = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        model.eval()
        times = []
        with torch.no_grad(), torch.autocast(**amp):
            for i in range(1 + max(1, args.steps // 2)):
                _sync(device)
                t = time.perf_counter()
                out = model(x)
                _sync(device)
                if i >= 1:
                    times.append((time.perf_counter() - t) * 1e3)
        if tuple(out.shape) != (args.batch, OUT_CHANNELS, size, size, size):
            raise RuntimeError(f"output shape {tuple(out.shape)}")
        row["infer_ms"] = round(statistics.median(times), 1)
        if device.type == "cuda":
            row["infer_peak_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        row["status"] = "ok"
    except Exception as e:  # one model failing must not stop the table
        row["status"] = "OOM" if _is_oom(e) else f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if not _is_oom(e) and args.verbose:
            traceback.print_exc()
    finally:
        del model, opt, x, y
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def env(device) -> dict:
    import monai

    import vscan
    d = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
         "monai": monai.__version__, "vscan": vscan.__version__, "device": str(device),
         "command": " ".join(["python"] + sys.argv), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        d.update(gpu=p.name, gpu_mem_GiB=round(p.total_memory / 2 ** 30, 1))
    return d


def table(rows: list[dict]) -> str:
    head = "| model | input | params (M) | train step (ms) | train peak (GiB) | inference (ms) | inference peak (GiB) | status |"
    lines = [head, "|" + "---|" * 8]
    f = lambda v: "-" if v is None else v  # noqa: E731
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']}x1x{r['size']}^3 | {f(r.get('params_M'))} | {f(r.get('train_ms'))} "
                     f"| {f(r.get('train_peak_GiB'))} | {f(r.get('infer_ms'))} | {f(r.get('infer_peak_GiB'))} "
                     f"| {r['status']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (bench_segment.json / .md)")
    p.add_argument("--sizes", type=int, nargs="+", help="cubic input sizes (default 128 96; smoke: 32)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batch", type=int, default=None, help="default 1 (smoke: 2, for batch norm at 1x1x1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; smoke 1)")
    p.add_argument("--amp", dest="amp", action="store_true", default=None,
                   help="bf16 autocast (default on CUDA; CPUs without bf16 units emulate it slowly)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="float32 instead of bf16 autocast")
    p.add_argument("--device", default=None, help="default cuda when available, else cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and widths; runs on CPU in about a minute")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of non-OOM failures")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.sizes = args.sizes or ([32] if args.smoke else [128, 96])
    args.steps = args.steps or (1 if args.smoke else 10)
    args.batch = args.batch or (2 if args.smoke else 1)
    args.amp = device.type == "cuda" if args.amp is None else args.amp
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    if device.type == "cpu" and not args.smoke:
        print("bench_segment: no CUDA device; the full benchmark is meant for a GPU (use --smoke on CPU)",
              file=sys.stderr)
    rows = []
    for size in args.sizes:
        for name in args.models:
            row = bench_one(name, size, args, device)
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = {"env": env(device), "amp_bf16": args.amp, "rows": rows}
    by = {(r["model"], r["size"]): r for r in rows}
    for size in args.sizes:
        scan, swin = by.get(("ScanSegNet", size)), by.get(("SwinUNETR", size))
        if scan and swin and "train_peak_GiB" in scan:
            out[f"scan_net_train_mem_below_swinunetr_{size}"] = (swin["status"] == "OOM" or
                                                                 scan["train_peak_GiB"] < swin.get("train_peak_GiB",
                                                                                                   float("inf")))
    from vscan.engine.io import atomic_write_json, atomic_write_text
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "bench_segment.json"), out)
    md = (f"# bench_segment ({out['env']['date']})\n\n`{out['env']['command']}`\n\n"
          f"device: {out['env'].get('gpu', out['env']['device'])}; torch {out['env']['torch']}, monai "
          f"{out['env']['monai']}, vscan {out['env']['vscan']}; bf16 autocast: {args.amp}; batch {args.batch}; "
          f"median of {args.steps} step(s) after {args.warmup} warm-up\n\n{table(rows)}\n")
    atomic_write_text(os.path.join(args.out, "bench_segment.md"), md)
    print(md)
    return 0 if all(r["status"] in ("ok", "OOM") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
