"""Multi-direction scan benchmark: the fused Triton path vs gather + K scans + scatter, same run.

    python tools/bench_multi_scan.py --out results/bench_multi_scan/bench_multi_scan.json

Issue 3's case: a VMamba-T stage-1 SS2D layer (``MultiDirMamba``, d_model 96, ssm_ratio 2 ->
192 scan channels, cross scan over 56x56 tokens, batch 128, N = 1 and N = 16) under bf16
autocast, forward+backward, two ways in the same process:
- fused: ``vscan.ops.multi_scan`` on CUDA (one launch reads tokens through the index map and
  merges in grid order), the layer built with ``fuse_dt_proj=False`` (delta materialised);
- explicit: the same layer with multi_scan replaced by ``multi_scan_ref`` on the Triton scan,
  i.e. gather K permuted copies, K separate scans, scatter back, merge (VMamba's CrossScan /
  CrossMerge structure);
- fused_lowrank (layer only): fused, and the layer built with ``fuse_dt_proj=True`` (its
  default), so the kernels apply dt_proj per step and no (b, L, K, d) delta or delta gradient
  is stored.
Peak extra memory = max_memory_allocated during one forward+backward minus what was allocated
before it (weights, input). The op alone is timed too, against its floor: each input read once
per direction (u K times; delta, B, C once), the merged output written once, and
K*b*L*d*N exponentials (``tools/bench_common`` measures copy bandwidth and exp2 rate in the
same run). A correctness gate (fused vs float64 reference, forward and all gradients) runs first.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_common import (add_row, bench_ms, copy_bandwidth_gbs, env_stamp, exp2_rate_per_s,  # noqa: E402
                          print_markdown, write_json)

ms = importlib.import_module("vscan.ops.multi_scan")
from vscan.layers import multidir  # noqa: E402
from vscan.scans import get_order  # noqa: E402

NAMES = ["u", "delta", "A", "B", "C", "D", "delta_bias"]


def make(b, L, K, d, N, dtype, device="cuda", seed=0, shared=True):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    x = dict(u=r(b, L, d) if shared else r(b, L, K, d), delta=r(b, L, K, d) * 0.5 - 1.0,
             A=-torch.exp(r(K, d, N) * 0.5), B=r(b, L, K, N), C=r(b, L, K, N), D=r(K, d), delta_bias=r(K, d) * 0.1)
    return {k: v.to(dtype) if k in ("u", "delta", "B", "C") else v for k, v in x.items()}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def op_grads(x, index, merge, gy, fn):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    extra = {"dt_weight": leaves["dt_weight"]} if "dt_weight" in leaves else {}
    y = fn(*[leaves[k] for k in NAMES], delta_softplus=True, index=index, merge=merge, **extra)
    gs = torch.autograd.grad((y.float() * gy).sum(), list(leaves.values()))
    return y.detach(), dict(zip(leaves, gs))


def fused(*a, **k):
    return ms.multi_scan(*a, **k)


def explicit(u, delta, *a, dt_weight=None, **k):
    """Per-direction selective_scan (Triton on CUDA); a low-rank dt is expanded first."""
    if dt_weight is not None:
        delta = ms.expand_lowrank_dt(delta, dt_weight)
    return ms.multi_scan_ref(u, delta, *a, **k)


def check_correctness():
    rows = []
    for order, grid, N, merge, shared, rank in [("cross", (23, 31), 16, "sum", True, 0),
                                                ("tri_orientation", (6, 7, 9), 4, "mean", False, 0),
                                                ("video", (5, 8, 8), 1, "concat", True, 0),
                                                ("cross", (23, 31), 16, "sum", True, 6),    # fused dt_proj
                                                ("cross", (23, 31), 1, "sum", True, 6)]:
        index = get_order(order).index(grid, "cuda")
        K, L = index.shape
        x32 = make(2, L, K, 96, N, torch.float32, shared=shared)
        if rank:      # low-rank dt (b, L, K, rank) and dt_proj weights (K, d, rank)
            g = torch.Generator(device="cuda").manual_seed(1)
            x32["delta"] = torch.randn(2, L, K, rank, device="cuda", generator=g) * 0.5
            x32["dt_weight"] = torch.randn(K, 96, rank, device="cuda", generator=g) * 0.3
        gy = torch.randn((2, L, K, 96) if merge == "concat" else (2, L, 96), device="cuda")
        y64, g64 = op_grads({k: v.double() for k, v in x32.items()}, index, merge, gy.double(),
                            lambda *a, **k: ms.multi_scan(*a, backend="reference", **k))
        y32, g32 = op_grads(x32, index, merge, gy, fused)
        x16 = {k: v.to(torch.bfloat16) if k in ("u", "delta", "B", "C") else v for k, v in x32.items()}
        y16, g16 = op_grads(x16, index, merge, gy, fused)
        y16r, g16r = op_grads(x16, index, merge, gy, explicit)
        row = dict(order=order, grid=grid, N=N, merge=merge, shared_u=shared, dt_rank=rank,
                   fp32_out=rel(y32, y64), fp32_grads_max=max(rel(g32[k], g64[k]) for k in g64),
                   bf16_out=rel(y16, y64), bf16_out_explicit=rel(y16r, y64),
                   bf16_grads_max=max(rel(g16[k], g64[k]) for k in g64),
                   bf16_grads_explicit_max=max(rel(g16r[k], g64[k]) for k in g64))
        row["ok"] = (row["fp32_out"] < 1e-4 and row["fp32_grads_max"] < 1e-3
                     and row["bf16_out"] <= 2 * row["bf16_out_explicit"] + 1e-3
                     and row["bf16_grads_max"] <= 2 * row["bf16_grads_explicit_max"] + 1e-3)
        print("correctness", {k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        rows.append(row)
    return rows


def peak_extra_mib(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_layer(b, H, W, N, path):
    torch.manual_seed(0)
    layer = multidir.MultiDirMamba(96, d_state=N, ssm_ratio=2.0, orders="cross",
                                   fuse_dt_proj=path == "fused_lowrank").cuda()
    x = torch.randn(b, H, W, 96, device="cuda", requires_grad=True)
    params = [x] + list(layer.parameters())
    orig = multidir.multi_scan
    multidir.multi_scan = explicit if path == "explicit" else fused

    def fb():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(x)
        torch.autograd.grad(y.float().sum(), params)

    def fwd():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            layer(x)
    try:
        fb()
        res = dict(fwd_ms=bench_ms(fwd, warmup=10, rep=50), fwdbwd_ms=bench_ms(fb, warmup=10, rep=50),
                   fwdbwd_peak_extra_mib=peak_extra_mib(fb), fwd_peak_extra_mib=peak_extra_mib(fwd))
    finally:
        multidir.multi_scan = orig
    return res


def op_floor(b, L, K, d, N, bw, exprate, s=2):
    """Minimal bytes: u read once per direction, delta/B/C once, merged output written once."""
    fwd_bytes = s * b * L * (K * d + K * d + 2 * K * N + d)
    bwd_bytes = fwd_bytes + s * b * L * (d + K * d + 2 * K * N + d)   # re-read inputs + dout, write du/ddelta/dB/dC
    exps = K * b * L * d * N
    return max(fwd_bytes / bw, exps / exprate) * 1e3, max((fwd_bytes + bwd_bytes) / bw, 2 * exps / exprate) * 1e3


def time_op(b, H, W, d, N, path, bw, exprate):
    index = get_order("cross").index((H, W), "cuda")
    K, L = index.shape
    x = make(b, L, K, d, N, torch.bfloat16)
    fn = fused if path == "fused" else explicit
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    gy = torch.randn(b, L, d, device="cuda", dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            fn(*[x[k] for k in NAMES], delta_softplus=True, index=index, merge="sum")

    def fb():
        y = fn(*[leaves[k] for k in NAMES], delta_softplus=True, index=index, merge="sum")
        torch.autograd.grad(y, list(leaves.values()), gy)
    fb()
    f_fwd, f_all = op_floor(b, L, K, d, N, bw, exprate)
    r = dict(fwd_ms=bench_ms(fwd, warmup=10, rep=50), fwdbwd_ms=bench_ms(fb, warmup=10, rep=50),
             fwdbwd_peak_extra_mib=peak_extra_mib(fb), floor_fwd_ms=f_fwd, floor_fwdbwd_ms=f_all)
    r.update(frac_floor_fwd=f_fwd / r["fwd_ms"], frac_floor_fwdbwd=f_all / r["fwdbwd_ms"])
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/bench_multi_scan/bench_multi_scan.json")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--grid", type=int, default=56)
    ap.add_argument("--states", default="1,16")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_multi_scan needs a CUDA GPU (the CPU tests check the kernels under the interpreter)")
        return 0
    report = dict(env=env_stamp())
    bw, exprate = copy_bandwidth_gbs() * 1e9, exp2_rate_per_s()
    report["ceilings"] = dict(copy_TBps=bw / 1e12, exp2_Tps=exprate / 1e12)
    print("ceilings", report["ceilings"], flush=True)
    report["correctness"] = check_correctness()
    if not all(r["ok"] for r in report["correctness"]):
        print("CORRECTNESS FAILED: not timing")
        write_json(args.out, report)
        return 1
    rows = []
    b, S = args.batch, args.grid
    for N in map(int, args.states.split(",")):
        for level in ("layer", "op"):
            row = dict(level=level, N=N, batch=b, grid=(S, S), channels=192)
            for path in ("fused", "explicit") + (("fused_lowrank",) if level == "layer" else ()):
                r = time_layer(b, S, S, N, path) if level == "layer" else time_op(b, S, S, 192, N, path, bw, exprate)
                row.update({f"{path}_{k}": v for k, v in r.items()})
                torch.cuda.empty_cache()
            row["speedup_fwdbwd"] = row["explicit_fwdbwd_ms"] / row["fused_fwdbwd_ms"]
            row["speedup_fwd"] = row["explicit_fwd_ms"] / row["fused_fwd_ms"]
            row["mem_ratio_fwdbwd"] = row["explicit_fwdbwd_peak_extra_mib"] / row["fused_fwdbwd_peak_extra_mib"]
            if "fused_lowrank_fwdbwd_ms" in row:
                row["lowrank_speedup_fwdbwd"] = row["explicit_fwdbwd_ms"] / row["fused_lowrank_fwdbwd_ms"]
                row["lowrank_mem_ratio_fwdbwd"] = (row["explicit_fwdbwd_peak_extra_mib"]
                                                   / row["fused_lowrank_fwdbwd_peak_extra_mib"])
            add_row(rows, row, args.out, report)
    report["rows"] = rows
    write_json(args.out, report)
    print_markdown(
        ["level", "N", "fused fwd / f+b ms", "explicit fwd / f+b ms", "speed-up fwd / f+b",
         "peak extra MiB f+b fused / explicit (ratio)", "fused floor frac fwd / f+b"],
        [[r["level"], str(r["N"]), f"{r['fused_fwd_ms']:.3f} / {r['fused_fwdbwd_ms']:.3f}",
          f"{r['explicit_fwd_ms']:.3f} / {r['explicit_fwdbwd_ms']:.3f}", f"{r['speedup_fwd']:.2f} / {r['speedup_fwdbwd']:.2f}",
          f"{r['fused_fwdbwd_peak_extra_mib']:.0f} / {r['explicit_fwdbwd_peak_extra_mib']:.0f} ({r['mem_ratio_fwdbwd']:.1f}x)",
          f"{r['fused_frac_floor_fwd']:.3f} / {r['fused_frac_floor_fwdbwd']:.3f}" if "fused_frac_floor_fwd" in r else "-"]
         for r in rows])
    for r in rows:
        if "lowrank_speedup_fwdbwd" in r:
            print(f"layer N={r['N']} with fuse_dt_proj: fwd / f+b {r['fused_lowrank_fwd_ms']:.3f} / "
                  f"{r['fused_lowrank_fwdbwd_ms']:.3f} ms, {r['lowrank_speedup_fwdbwd']:.2f}x faster and "
                  f"{r['lowrank_mem_ratio_fwdbwd']:.1f}x less peak extra memory than explicit "
                  f"({r['fused_lowrank_fwdbwd_peak_extra_mib']:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
