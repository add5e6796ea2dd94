"""Where the host's time per selective-scan call goes, with the GPU kept busy.

    python tools/profile_host.py vim_s_224          # VSCAN_FAST_LAUNCH=0 for Triton's own launch path

Queues 30 forward (then forward+backward) calls behind a GPU sleep, so the wall time is the
host's alone, and splits it over the host-side functions of kernels/selective_scan.py and
Triton's ``JITFunction.run`` (launches that did not take kernels/launch.py's cached path).
Then times one bare launch of an empty kernel with 2 and with 46 runtime arguments, and
``torch.empty`` / ``torch.zeros`` of a small CUDA tensor. Shapes as in tools/bench_scan.py.
"""
from __future__ import annotations

import collections
import os
import sys
import time

import torch
import triton
from triton.runtime import jit as tjit

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import host_ms  # noqa: E402
from bench_scan import SHAPES, shape_calls  # noqa: E402

import vscan.kernels.selective_scan as sel  # noqa: E402

acc = collections.defaultdict(float)
cnt = collections.Counter()


def wrap(obj, name, label):
    f = getattr(obj, name)

    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            acc[label] += time.perf_counter() - t
            cnt[label] += 1
    setattr(obj, name, g)


@triton.jit
def _k1(a, n, B: triton.language.constexpr):
    pass


@triton.jit
def _k46(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13, i14,
         i15, i16, i17, i18, i19, i20, i21, i22, i23, i24, i25, i26, i27, i28, i29, i30, i31, i32, i33, i34, i35,
         C0: triton.language.constexpr, C1: triton.language.constexpr, C2: triton.language.constexpr,
         C3: triton.language.constexpr, C4: triton.language.constexpr, C5: triton.language.constexpr,
         C6: triton.language.constexpr, C7: triton.language.constexpr, C8: triton.language.constexpr,
         C9: triton.language.constexpr):
    pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    shape = argv[0] if argv else "vim_s_224"
    wrap(tjit.JITFunction, "run", "triton run")
    for n in ("_forward", "_backward", "_param_sums", "_param_grad", "_bc_grad", "_Problem", "_segments"):
        wrap(sel, n, n)
    _, _, _, f, fb = shape_calls(SHAPES[shape][0])
    for fn, name in ((f, "fwd"), (fb, "f+b")):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        acc.clear()
        cnt.clear()
        n = 30
        per_call_ms = host_ms(fn, n, warm=False, sleep_cycles=int(3e8))
        print(f"{shape} {name}: host {per_call_ms * 1e3:.0f} us per call;",
              "; ".join(f"{k} {v / n * 1e6:.0f} us (x{cnt[k] / n:g})"
                        for k, v in sorted(acc.items(), key=lambda kv: -kv[1])))
    t0 = torch.zeros(16, device="cuda")
    ints = list(range(3, 39))
    cs = {f"C{i}": i for i in range(10)}
    for name, call in (("1 arg", lambda: _k1[(1,)](t0, 5, B=4)),
                       ("46 args + 10 constexpr", lambda: _k46[(1,)](*([t0] * 10), *ints, **cs))):
        print(f"bare launch, {name}: {host_ms(call, 200, sleep_cycles=int(3e8)) * 1e3:.1f} us")
    for name, alloc in (("empty", torch.empty), ("zeros", torch.zeros)):
        t = time.perf_counter()
        for _ in range(1000):
            alloc(1000, device="cuda")
        torch.cuda.synchronize()
        print(f"torch.{name} on cuda: {(time.perf_counter() - t) * 1e3:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
