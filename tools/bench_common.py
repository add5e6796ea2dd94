"""Shared helpers for the GPU benchmark scripts: environment stamp, hardware ceilings, timing."""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time

import torch


def env_stamp() -> dict:
    import triton
    d = dict(date=datetime.date.today().isoformat(), python=platform.python_version(),
             torch=torch.__version__, triton=triton.__version__, command=" ".join([os.path.basename(sys.executable)] + sys.argv),
             vscan_env={k: v for k, v in sorted(os.environ.items()) if k.startswith("VSCAN_")})   # kernel switches
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        d.update(gpu=p.name, sms=p.multi_processor_count, gpu_mem_gib=round(p.total_memory / 2**30, 1))
    try:
        import timm
        d["timm"] = timm.__version__
    except ImportError:
        pass
    return d


def bench_ms(fn, warmup=25, rep=100) -> float:
    """Median milliseconds of fn() with triton.testing.do_bench (CUDA events)."""
    import triton
    if _do_bench_has_quantiles():
        r = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5])
        return float(r[0] if isinstance(r, (list, tuple)) else r)
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _do_bench_has_quantiles():
    import inspect

    import triton
    return "quantiles" in inspect.signature(triton.testing.do_bench).parameters


def time_once_ms(fn, reps=2) -> float:
    """For slow functions (seconds): median of a few event-timed runs after one warm-up."""
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return sorted(ts)[len(ts) // 2]


def host_ms(fn, calls: int = 20, warm: bool = True, sleep_cycles: int = int(2e8)) -> float:
    """Milliseconds of CPU time per call of ``fn`` while the GPU is busy: the calls are queued
    behind a GPU sleep, so this is the launch path alone (Python, argument checks, allocations,
    kernel launches). When it approaches the do_bench time, that time measures the host.
    ``warm``: one untimed call first; ``sleep_cycles``: the GPU sleep, which must outlast the
    queueing (2e8 cycles is about 0.1 s at 2 GHz)."""
    if warm:
        fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(sleep_cycles)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e3


def graph_ms(fn, warmup=25, rep=100):
    """do_bench median of ``fn`` captured once in a CUDA graph and replayed: GPU time without the
    host's launch path. None (and the reason) where capture fails."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return bench_ms(g.replay, warmup=warmup, rep=rep), None
    except Exception as e:   # capture needs a host path without syncs
        return None, f"{type(e).__name__}: {e}"[:200]


def kernel_breakdown(fn, iters: int = 10) -> list:
    """GPU time per call of ``fn`` by kernel name (torch.profiler, CUDA activity), largest first:
    [(name, microseconds per call, launches per call)]."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = [(ev.key[:60], getattr(ev, "self_device_time_total", 0.0) / iters, ev.count / iters)
            for ev in prof.key_averages() if ev.device_type == torch.autograd.DeviceType.CUDA]
    return sorted(rows, key=lambda r: -r[1])


def gpu_warmup(seconds: float = 3.0) -> None:
    """Keep the GPU busy for a few seconds before timing. On a machine just started, the first
    shape timed came out 1.3-1.5x slow in forward (H200, 2026-12-02: vim_s_224 0.35-0.41 ms
    in three cold calls vs 0.267 ms warm), whatever was timed or checked before it."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def copy_bandwidth_gbs(nbytes=2 * 2**30) -> float:
    """Device-to-device copy, counting bytes read plus bytes written."""
    x = torch.empty(nbytes // 4, device="cuda", dtype=torch.float32).uniform_()
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x), warmup=5, rep=50)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def exp2_rate_per_s() -> float:
    """Throughput of tl.exp2 on dependent chains (the MUFU unit), exps per second."""
    import triton
    import triton.language as tl

    @triton.jit
    def k(x_ptr, n_iter, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x0 = tl.load(x_ptr + offs)
        x1 = x0 + 0.1
        x2 = x0 + 0.2
        x3 = x0 + 0.3
        for _ in range(n_iter):
            x0 = tl.exp2(x0 * -0.5)
            x1 = tl.exp2(x1 * -0.5)
            x2 = tl.exp2(x2 * -0.5)
            x3 = tl.exp2(x3 * -0.5)
        tl.store(x_ptr + offs, x0 + x1 + x2 + x3)

    n = 132 * 64 * 1024
    x = torch.rand(n, device="cuda")
    iters = 256
    ms = bench_ms(lambda: k[(n // 1024,)](x, iters, BLOCK=1024, num_warps=8), warmup=5, rep=50)
    return 4 * n * iters / (ms * 1e-3)


def write_json(path, obj):
    """Results JSON, written atomically (vscan.engine.io)."""
    from vscan.engine.io import atomic_write_json
    return atomic_write_json(path, obj)


def add_row(rows: list, row: dict, out, report: dict) -> None:
    """Append a result row, print it (floats rounded), and rewrite the results file with every
    row so far, so a run cut short keeps what it measured."""
    rows.append(row)
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    write_json(out, dict(report, rows=rows))


def print_markdown(header: list[str], lines: list[list[str]]) -> None:
    """A Markdown table of pre-formatted cells, for pasting into a results README."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in lines:
        print("| " + " | ".join(cells) + " |")
