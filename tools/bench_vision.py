#!/usr/bin/env python
"""Vision backbone benchmark: vscan's Vim-S, VMamba-T and hybrid-T against timm's DeiT-S, ViT-S,
ConvNeXt-T and Swin-T, in one run, on one GPU.

    python tools/bench_vision.py --out model_zoo/bench_vision_h100.json          # GPU, bf16
    python tools/bench_vision.py --smoke --out /tmp/bench_smoke.json             # CPU, tiny sizes

Cases (default): inference at 224 px, batch 128 and at 1024 px, batch 8 (images/s and peak
memory), and one training step (forward, backward, AdamW step) at 224 px, batch 128 (ms per
step and peak memory). Precision: ``--precision amp`` (default; bf16 autocast over fp32
weights, as timm's ``benchmark.py --amp --amp-dtype bfloat16``) or ``bf16`` (weights cast to
bf16). Timing: CUDA events around each iteration after warm-up, synchronised, median
reported; peak memory is ``torch.cuda.max_memory_allocated`` over the timed iterations,
minus nothing (weights included). Models whose constructor takes ``img_size`` (ViT, DeiT,
Swin, Vim) are built for the case's resolution; the others are fully convolutional or take
any size. A case that fails (e.g. out of memory) is recorded with its error and the run goes on.
``--smoke`` runs the same code on CPU with tiny sizes (wall-clock timing, no memory figure).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VSCAN_MODELS = ["vscan_vim_small_patch16_224", "vscan_vmamba_tiny", "vscan_hybrid_tiny"]
TIMM_MODELS = ["deit_small_patch16_224", "vit_small_patch16_224", "convnext_tiny", "swin_tiny_patch4_window7_224"]


@dataclass
class Case:
    kind: str          # 'infer' | 'train'
    img_size: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.img_size}x{self.batch}"


DEFAULT_CASES = [Case("infer", 224, 128), Case("infer", 1024, 8), Case("train", 224, 128)]
SMOKE_CASES = [Case("infer", 32, 2), Case("infer", 64, 1), Case("train", 32, 2)]


@dataclass
class Result:
    model: str
    case: str
    img_size: int
    batch: int
    ms: float | None = None
    img_per_s: float | None = None
    peak_mib: float | None = None
    params_m: float | None = None
    error: str | None = None
    times_ms: list = field(default_factory=list)


def env_stamp(device: torch.device, args) -> dict:
    import timm

    import vscan
    d = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), python=platform.python_version(),
             torch=torch.__version__, timm=timm.__version__, vscan=vscan.__version__, device=str(device),
             precision=args.precision, channels_last=args.channels_last, command=" ".join(sys.argv))
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        d.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2 ** 30, 1))
    else:
        d.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return d


def parse_model_spec(spec: str):
    """'name' or 'name:{json kwargs}' (e.g. a Vim with ``{"mixer_kwargs": {"infer_chunk_tokens": 0}}``)."""
    name, _, kw = spec.partition(":")
    if not kw:
        return name, {}
    kwargs = json.loads(kw)
    if not isinstance(kwargs, dict):
        raise ValueError(f"--models: expected name:{{json object}}, got {spec!r}")
    return name, kwargs


def build(spec: str, img_size: int, device, precision: str, channels_last: bool):
    """The model for one case (built for ``img_size`` when its constructor takes it)."""
    import timm

    import vscan  # noqa: F401
    name, kwargs = parse_model_spec(spec)
    try:
        model = timm.create_model(name, img_size=img_size, num_classes=1000, **kwargs)
    except TypeError:                       # fully convolutional: any size without rebuilding
        model = timm.create_model(name, num_classes=1000, **kwargs)
    model = model.to(device)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class Timer:
    """Per-iteration timing: CUDA events on a GPU, perf_counter on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3


def run_case(name: str, case: Case, device, args) -> Result:
    res = Result(name, case.name, case.img_size, case.batch)
    cuda = device.type == "cuda"
    try:
        if cuda:
            torch.cuda.empty_cache()
        model = build(name, case.img_size, device, args.precision, args.channels_last)
        res.params_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        x = torch.randn(case.batch, 3, case.img_size, case.img_size, device=device, dtype=dtype)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "amp")
        if case.kind == "infer":
            model.eval()

            def step():
                # no_grad, not inference_mode: vscan's scan orders cache index tensors, and ones
                # first built under inference_mode cannot be used by a later training case
                with torch.no_grad(), autocast:
                    model(x)
        else:
            from timm.optim import create_optimizer_v2
            model.train()
            opt = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
            y = torch.randint(0, 1000, (case.batch,), device=device)
            crit = torch.nn.CrossEntropyLoss()

            def step():
                with autocast:
                    loss = crit(model(x).float(), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        timer = Timer(device)
        timer(step)                            # the compile / autotune call: not in the budget check
        probe_ms = timer(step)                 # the first compiled iteration projects the case's time
        budget_ms = args.max_seconds * 1e3
        if probe_ms * (args.warmup + args.iters) > budget_ms * 4:
            raise TimeoutError(f"an iteration after compilation took {probe_ms / 1e3:.1f} s: over the "
                               f"{args.max_seconds:.0f} s budget for this case (--max-seconds)")
        for _ in range(max(args.warmup - 2, 0)):
            timer(step)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        res.times_ms = [round(timer(step), 3) for _ in range(args.iters)]
        res.ms = round(statistics.median(res.times_ms), 3)
        res.img_per_s = round(case.batch / res.ms * 1e3, 1)
        if cuda:
            res.peak_mib = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    except Exception as e:           # OOM or an unsupported size: record it, keep going
        res.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    finally:
        model = x = None  # noqa: F841
        if cuda:
            torch.cuda.empty_cache()
    return res


def table(results: list[Result]) -> str:
    lines = [f"{'model':34s} {'case':18s} {'ms/iter':>9s} {'img/s':>9s} {'peak MiB':>9s} {'params M':>9s}"]
    for r in results:
        if r.error:
            lines.append(f"{r.model:34s} {r.case:18s} error: {r.error}")
            continue
        peak = f"{r.peak_mib:9.0f}" if r.peak_mib is not None else f"{'-':>9s}"
        lines.append(f"{r.model:34s} {r.case:18s} {r.ms:9.2f} {r.img_per_s:9.1f} {peak} {r.params_m:9.2f}")
    return "\n".join(lines)


def parse_cases(specs) -> list[Case]:
    """'infer:224:128' -> Case('infer', 224, 128)."""
    out = []
    for spec in specs:
        try:
            kind, size, batch = spec.split(":")
            if kind not in ("infer", "train"):
                raise ValueError
            out.append(Case(kind, int(size), int(batch)))
        except ValueError:
            raise SystemExit(f"--case: expected infer|train:SIZE:BATCH, got {spec!r}") from None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, 1 warm-up + 2 timed iterations")
    p.add_argument("--models", nargs="*", default=None,
                   help="default: 3 vscan + 4 timm models; 'name:{json kwargs}' passes constructor keywords")
    p.add_argument("--case", nargs="*", default=None, help="e.g. infer:224:128 train:224:64")
    p.add_argument("--precision", choices=("amp", "bf16"), default="amp")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="skip a case whose first iteration after the compile one projects past this "
                        "budget (x4 slack)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or pass --smoke for the CPU check")
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 10)
    args.iters = args.iters if args.iters is not None else (2 if args.smoke else 30)
    cases = parse_cases(args.case) if args.case else (SMOKE_CASES if args.smoke else DEFAULT_CASES)
    models = args.models or VSCAN_MODELS + TIMM_MODELS
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results = []
    for case in cases:
        for name in models:
            r = run_case(name, case, device, args)
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
    print("\n" + table(results))
    summary = _summary(results)
    if summary:
        print("\n" + "\n".join(f"{k}: {v}" for k, v in summary.items()))
    out = {"env": env_stamp(device, args), "cases": [asdict(c) | {"name": c.name} for c in cases],
           "results": [asdict(r) for r in results], "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def _summary(results: list[Result]) -> dict:
    """The issue's bar: Vim-S peak memory at the largest inference size vs DeiT-S's."""
    infer = [r for r in results if r.case.startswith("infer") and not r.error]
    if not infer:
        return {}
    big = max(r.img_size for r in infer)
    by = {r.model: r for r in infer if r.img_size == big}
    vim, deit = by.get("vscan_vim_small_patch16_224"), by.get("deit_small_patch16_224")
    if not (vim and deit):
        return {}
    out = {f"vim_s_vs_deit_s_at_{big}_img_per_s_ratio": round(vim.img_per_s / deit.img_per_s, 3)}
    if vim.peak_mib and deit.peak_mib:
        out[f"vim_s_vs_deit_s_at_{big}_peak_mem_ratio"] = round(vim.peak_mib / deit.peak_mib, 3)
        out["vim_s_peak_mem_below_deit_s"] = vim.peak_mib < deit.peak_mib
    return out


if __name__ == "__main__":
    sys.exit(main())
