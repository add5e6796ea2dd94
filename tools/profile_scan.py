"""Profile one selective-scan forward+backward on a GPU: compiled resources of each Triton
kernel (registers, spills, shared memory) and, under Nsight Compute, its stall reasons.

    python tools/profile_scan.py --shape long                 # resources + timing
    python tools/profile_scan.py --shape vim_s_224 --host 200 # where the host's launch path goes
    ncu --clock-control none -k regex:scan_ -c 4 --section WarpStateStats --section Occupancy \\
        --section LaunchStats --section SpeedOfLight python tools/profile_scan.py --shape long --once

Shapes as in tools/bench_scan.py (bf16 u/delta/B/C/z, softplus and z on, one group).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import bench_ms  # noqa: E402
from bench_scan import SHAPES, shape_calls  # noqa: E402


def _compiled(obj, depth=0):
    """Compiled kernels found anywhere in a JITFunction's caches (their layout differs across
    Triton versions)."""
    if hasattr(obj, "n_regs"):
        yield obj
    elif depth < 4 and isinstance(obj, dict):
        for v in obj.values():
            yield from _compiled(v, depth + 1)
    elif depth < 4 and isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _compiled(v, depth + 1)


def kernel_resources(with_ids=False):
    """(name, registers, spills, shared bytes) of every compiled variant of the scan kernels;
    ``with_ids``: each row starts with the compiled object's id, so a caller can tell the
    variants compiled since its last look."""
    from vscan.kernels import scan_seq
    rows = []
    for name in ("scan_fwd_seq_kernel", "scan_bwd_seq_kernel"):
        k = getattr(scan_seq, name)
        for ck in _compiled(getattr(k, "device_caches", None) or getattr(k, "cache", {})):
            row = (name, ck.n_regs, ck.n_spills, getattr(ck.metadata, "shared", None))
            rows.append((id(ck), *row) if with_ids else row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="long", choices=list(SHAPES))
    ap.add_argument("--once", action="store_true", help="one forward+backward only (for ncu)")
    ap.add_argument("--host", type=int, default=0, metavar="CALLS",
                    help="profile the host side of CALLS forward+backward calls (cProfile, top functions by own time)")
    args = ap.parse_args(argv)
    _, _, _, fwd, fb = shape_calls(SHAPES[args.shape][0])
    fb()
    torch.cuda.synchronize()
    if args.once:
        return 0
    if args.host:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.host):
            fb()
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    for row in kernel_resources():
        print("kernel %s: registers %s, spills %s, shared %s" % row)
    print(f"{args.shape}: fwd {bench_ms(fwd):.3f} ms, fwd+bwd {bench_ms(fb):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
