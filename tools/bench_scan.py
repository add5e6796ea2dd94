"""Selective-scan benchmark: Triton kernels vs the PyTorch reference, against the hardware floor.

    python tools/bench_scan.py --out results/bench_scan.json [--sweep] [--host]

Checks correctness against the reference first (float32 vs float64; bf16 error vs the
reference's own bf16 error), then times forward and forward+backward (do_bench medians) at the
shapes of issue 2 with bf16 u/delta/B/C/z, float32 A/D/delta_bias, softplus and z gating, one
group. Floor = max(minimal bytes / measured copy bandwidth, exps / measured exp2 rate), per
../shared/reference/kernels.md section 5. ``--host`` also times the host's launch path per call
and CUDA-graph replays: where the first approaches do_bench's time, do_bench measured the host.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import (add_row, bench_ms, copy_bandwidth_gbs, env_stamp, exp2_rate_per_s, gpu_warmup,  # noqa: E402
                          graph_ms, host_ms, kernel_breakdown, print_markdown, time_once_ms, write_json)

from vscan.kernels.selective_scan import LAST_SPLIT  # noqa: E402
from vscan.ops import selective_scan  # noqa: E402

SHAPES = {  # name: (batch, channels, length, N); mamba_ssm 2.3.2 CUDA figures on an H100 (issue 2)
    "vim_s_224": ((64, 768, 197, 16), 0.396, 1.598),
    "vim_s_1024": ((8, 768, 4097, 16), 1.063, 5.052),
    "long": ((2, 1536, 16384, 16), 1.104, 4.956),
    "text": ((8, 2048, 2048, 16), 0.592, 3.050),
}


def make_inputs(b, d, L, N, dtype=torch.bfloat16, G=1, device="cuda", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    u = r(b, L, d).to(dtype)
    delta = (r(b, L, d) * 0.5 - 1.0).to(dtype)
    z = r(b, L, d).to(dtype)
    B = r(b, L, G, N).to(dtype)
    C = r(b, L, G, N).to(dtype)
    A = -torch.exp(r(d, N) * 0.5)
    D = r(d)
    bias = r(d) * 0.1
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)


def run_scan(inp, backend):
    return selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], z=inp["z"],
                          delta_bias=inp["delta_bias"], delta_softplus=True, backend=backend)


def with_grad(inp):
    return {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}


def grads(inp, backend, gy):
    x = with_grad(inp)
    y = run_scan(x, backend)
    y.backward(gy)
    return y.detach(), {k: v.grad for k, v in x.items()}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check_correctness(report):
    torch.manual_seed(0)
    rows = []
    for (b, d, L, N, G, seg) in [(2, 64, 1000, 16, 1, None), (2, 96, 777, 8, 2, "512,160"), (3, 64, 300, 16, 4, None)]:
        if seg:
            os.environ["VSCAN_SCAN_TARGET_PROGRAMS"] = seg
        inp32 = make_inputs(b, d, L, N, torch.float32, G=G)
        inp64 = {k: v.double() for k, v in inp32.items()}
        gy = torch.randn(b, L, d, device="cuda")
        y64, g64 = grads(inp64, "reference", gy.double())
        y32, g32 = grads(inp32, "triton", gy)
        inp16 = {k: (v.to(torch.bfloat16) if k in ("u", "delta", "z", "B", "C") else v) for k, v in inp32.items()}
        y16k, g16k = grads(inp16, "triton", gy.to(torch.bfloat16))
        # the reference computes in float32 from the same bf16 inputs: the "same low precision" baseline
        y16r, g16r = grads(inp16, "reference", gy.to(torch.bfloat16))
        row = dict(shape=(b, d, L, N, G), segments_forced=bool(seg),
                   fp32_out=rel(y32, y64), fp32_grads_max=max(rel(g32[k], g64[k]) for k in g64),
                   bf16_out_kernel=rel(y16k, y64), bf16_out_ref=rel(y16r, y64),
                   bf16_grads_kernel_max=max(rel(g16k[k], g64[k]) for k in g64),
                   bf16_grads_ref_max=max(rel(g16r[k], g64[k]) for k in g64))
        os.environ.pop("VSCAN_SCAN_TARGET_PROGRAMS", None)
        row["ok"] = (row["fp32_out"] < 1e-4 and row["fp32_grads_max"] < 1e-3
                     and row["bf16_out_kernel"] <= 2 * row["bf16_out_ref"] + 1e-3
                     and row["bf16_grads_kernel_max"] <= 2 * row["bf16_grads_ref_max"] + 1e-3)
        rows.append(row)
        print("correctness", row, flush=True)
    report["correctness"] = rows
    return all(r["ok"] for r in rows)


def floors(b, d, L, N, bw, exprate, s=2, G=1, kz=1):
    bytes_fwd = s * b * L * ((3 + kz) * d + 2 * G * N)
    bytes_bwd = s * b * L * ((5 + 2 * kz) * d) + b * L * G * N * (2 * s + 2 * 4)
    exps = N * b * L * d
    f_fwd = max(bytes_fwd / bw, exps / exprate) * 1e3
    f_all = max((bytes_fwd + bytes_bwd) / bw, 2 * exps / exprate) * 1e3
    return f_fwd, f_all


def shape_calls(shape):
    """Inputs of a (batch, channels, length, N) shape and the calls the tools time: the no-grad
    forward and forward+backward. Returns (inp, x, gy, fwd, fwdbwd); x are inp's leaves."""
    b, d, L, N = shape
    inp = make_inputs(b, d, L, N)
    x = with_grad(inp)
    gy = torch.randn(b, L, d, device="cuda", dtype=torch.bfloat16)

    def fwd():
        return run_scan(inp, "triton")

    def fwdbwd():
        y = run_scan(x, "triton")
        torch.autograd.grad(y, list(x.values()), gy)
    return inp, x, gy, fwd, fwdbwd


def time_shape(name, shape, with_ref=True, host=False):
    inp, x, gy, fwd, fwdbwd = shape_calls(shape)
    # compile this shape's kernels, then warm the GPU out of the compile's idle gap: the first
    # shape after a configuration compiled came out up to 1.8x slow (H100, 2026-12-05,
    # results/bench_scan_lanesplit_h100/). vim-s-224 still spread by that much with this warm-up:
    # its f+b is host-bound, and the host's speed differs between machines (--host shows it;
    # results/bench_scan_host_h100/).
    fwdbwd()
    torch.cuda.synchronize()
    gpu_warmup(1.0)
    res = dict(fwd_ms=bench_ms(fwd))
    split_fwd = dict(LAST_SPLIT.get(0, {}))
    res["fwdbwd_ms"] = bench_ms(fwdbwd)
    # segments chosen per launch: the no-grad forward, and the forward and backward of f+b
    res["split"] = dict(fwd=split_fwd, fwd_train=dict(LAST_SPLIT.get(0, {})), bwd=dict(LAST_SPLIT.get(1, {})))
    if host:
        # the forward that saves chunk states for backward (a different compile from fwd_ms's),
        # the host's launch path per call, CUDA-graph replays (GPU time alone), and GPU time per kernel
        res["fwd_train_ms"] = bench_ms(lambda: run_scan(x, "triton"))
        res["host_fwd_ms"], res["host_fwdbwd_ms"] = host_ms(fwd), host_ms(fwdbwd)
        res["graph_fwd_ms"], err_f = graph_ms(fwd)
        res["graph_fwdbwd_ms"], err_fb = graph_ms(fwdbwd)
        if err_f or err_fb:
            res["graph_error"] = err_f or err_fb
        res["kernels_fwdbwd_us"] = [list(r) for r in kernel_breakdown(fwdbwd)[:12]]
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwdbwd()
    res["fwdbwd_peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    if with_ref:
        res["ref_fwd_ms"] = time_once_ms(lambda: run_scan(inp, "reference"), reps=1)

        def ref_fb():
            y = run_scan(x, "reference")
            torch.autograd.grad(y, list(x.values()), gy)
        res["ref_fwdbwd_ms"] = time_once_ms(ref_fb, reps=1)
    return res


def use_kernel(kind, tile=None):
    """Select the kernel family and, for the sequential kernels, a tile ('T,W,SUB,P' ->
    VSCAN_SCAN_SEQ), a backward variant ('bwd:P,R' -> VSCAN_SCAN_BWD) or a fixed segment target
    ('target:F[,B]' -> VSCAN_SCAN_TARGET_PROGRAMS); None: the defaults."""
    os.environ["VSCAN_SCAN_KERNEL"] = kind
    for var in ("VSCAN_SCAN_SEQ", "VSCAN_SCAN_BWD", "VSCAN_SCAN_TARGET_PROGRAMS"):
        os.environ.pop(var, None)
    if tile and tile.startswith("bwd:"):
        os.environ["VSCAN_SCAN_BWD"] = tile[4:]
    elif tile and tile.startswith("target:"):
        os.environ["VSCAN_SCAN_TARGET_PROGRAMS"] = tile[7:]
    elif tile:
        os.environ["VSCAN_SCAN_SEQ"] = tile


def _new_kernel_variants(seen: set) -> list:
    """Registers / spills of the sequential kernel variants compiled since the last call (the
    ones the config just timed compiled: Triton caches one per constexpr set and register cap)."""
    try:
        from profile_scan import kernel_resources
        rows = kernel_resources(with_ids=True)
    except Exception as e:   # compiled-kernel internals differ across Triton versions
        return [f"unavailable: {type(e).__name__}: {e}"]
    out = [dict(kernel=n, regs=r, spills=sp, shared=sh) for key, n, r, sp, sh in rows if key not in seen]
    seen.update(key for key, *_ in rows)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/bench_scan.json")
    ap.add_argument("--sweep", action="store_true", help="also time a few other sequential-kernel tiles")
    ap.add_argument("--no-ref", action="store_true", help="skip timing the PyTorch reference")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--bwd-variants", default="",
                    help="sequential backward variants to time too, 'P,R;P,R' (VSCAN_SCAN_BWD: B/C prefetch 0/1, "
                         "register cap or 0)")
    ap.add_argument("--no-chunked", action="store_true", help="skip the chunked kernels")
    ap.add_argument("--host", action="store_true",
                    help="also time the training forward, the host launch path per call, CUDA-graph replays "
                         "and GPU time per kernel (torch.profiler)")
    ap.add_argument("--targets", default="",
                    help="fixed segment targets to time too, 'F[,B];...' programs (VSCAN_SCAN_TARGET_PROGRAMS; "
                         "the split before the occupancy rules was 16 per SM, 2112 on 132 SMs)")
    ap.add_argument("--tiles", default="",
                    help="sequential tiles to time too (correctness-gated), 'T,W,SUB,P[,BLOCK_D];...' (VSCAN_SCAN_SEQ)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_scan needs a CUDA GPU (the reference alone is timed by the CPU tests)")
        return 0
    report = dict(env=env_stamp())
    bw = copy_bandwidth_gbs() * 1e9
    exprate = exp2_rate_per_s()
    report["ceilings"] = dict(copy_TBps=bw / 1e12, exp2_Tps=exprate / 1e12)
    print("ceilings", report["ceilings"], flush=True)
    ok = True
    extra_tiles = [t for t in args.tiles.split(";") if t]
    gates = ([("sequential", None)] + ([] if args.no_chunked else [("chunked", None)])
             + [("sequential", "bwd:" + v) for v in args.bwd_variants.split(";") if v]
             + [("sequential", t) for t in extra_tiles])
    seen = set()   # compiled kernel variants already attributed to a config (report["kernels"])
    for kind, tile in gates:
        use_kernel(kind, tile)
        sub = {}
        ok &= check_correctness(sub)
        report.setdefault("correctness", {})[kind + (f" {tile}" if tile else "")] = sub["correctness"]
        report.setdefault("kernels", {})[f"{kind} {tile or 'default'}"] = _new_kernel_variants(seen)
    if not ok:
        print("CORRECTNESS FAILED: not timing")
        write_json(args.out, report)
        return 1
    gpu_warmup()
    names = [n for n in args.shapes.split(",") if n]
    # (kernel family, VSCAN_SCAN_SEQ tile): the default sequential kernels, the chunked ones for
    # comparison in the same run, and with --sweep other sequential tiles (T, warps, SUB, programs/SM)
    configs = [("sequential", None)] + ([] if args.no_chunked else [("chunked", None)])
    if args.sweep:
        configs += [("sequential", t) for t in ("64,2,8,8", "64,1,16,16", "64,1,8,32", "64,4,8,4", "32,1,8,16")]
    configs += [("sequential", "bwd:" + v) for v in args.bwd_variants.split(";") if v]
    configs += [("sequential", t) for t in extra_tiles]
    configs += [("sequential", "target:" + t) for t in args.targets.split(";") if t]
    rows = []
    for kind, tile in configs:
        use_kernel(kind, tile)
        for name in names:
            shape, cuda_fwd, cuda_all = SHAPES[name]
            r = time_shape(name, shape, with_ref=(kind == "sequential" and tile is None and not args.no_ref),
                           host=args.host)
            f_fwd, f_all = floors(*shape, bw, exprate)
            r.update(name=name, shape=shape, kernel=kind, tile=tile or "default",
                     floor_fwd_ms=f_fwd, floor_fwdbwd_ms=f_all,
                     frac_floor_fwd=f_fwd / r["fwd_ms"], frac_floor_fwdbwd=f_all / r["fwdbwd_ms"],
                     mamba_cuda_fwd_ms=cuda_fwd, mamba_cuda_fwdbwd_ms=cuda_all,
                     vs_cuda_fwd=cuda_fwd / r["fwd_ms"], vs_cuda_fwdbwd=cuda_all / r["fwdbwd_ms"])
            if "ref_fwd_ms" in r:
                r["speedup_vs_ref_fwd"] = r["ref_fwd_ms"] / r["fwd_ms"]
                r["speedup_vs_ref_fwdbwd"] = r["ref_fwdbwd_ms"] / r["fwdbwd_ms"]
            add_row(rows, r, args.out, report)
        key = f"{kind} {tile or 'default'}"
        report["kernels"].setdefault(key, []).extend(_new_kernel_variants(seen))
        print(key, "registers/spills of its kernels:",
              sorted({(k.get("kernel"), k.get("regs"), k.get("spills")) for k in report["kernels"][key]
                      if isinstance(k, dict)}), flush=True)
    report["rows"] = rows
    write_json(args.out, report)
    print_markdown(
        ["shape", "kernel, tile", "fwd ms", "fwd+bwd ms", "floor frac fwd", "floor frac f+b", "x mamba CUDA fwd",
         "x mamba CUDA f+b", "x ref f+b"],
        [[f"{r['name']} {tuple(r['shape'])}", f"{r['kernel']}, {r['tile']}", f"{r['fwd_ms']:.3f}", f"{r['fwdbwd_ms']:.3f}",
          f"{r['frac_floor_fwd']:.2f}", f"{r['frac_floor_fwdbwd']:.2f}", f"{r['vs_cuda_fwd']:.2f}",
          f"{r['vs_cuda_fwdbwd']:.2f}", f"{r.get('speedup_vs_ref_fwdbwd', float('nan')):.0f}"] for r in rows])
    if args.host:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print_markdown(
            ["shape", "kernel, tile", "fwd (train) ms", "host fwd ms", "host f+b ms", "graph fwd ms", "graph f+b ms"],
            [[r["name"], f"{r['kernel']}, {r['tile']}", fmt(r["fwd_train_ms"]), fmt(r["host_fwd_ms"]),
              fmt(r["host_fwdbwd_ms"]), fmt(r["graph_fwd_ms"]), fmt(r["graph_fwdbwd_ms"])] for r in rows])
        for r in rows:
            print(r["name"], r["tile"], "GPU us per f+b call by kernel:",
                  "; ".join(f"{n} {t:.0f} (x{c:g})" for n, t, c in r["kernels_fwdbwd_us"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
