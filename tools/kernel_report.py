"""Compile the sequential scan kernels for a GPU architecture on any machine, no GPU needed,
and report what the compiler made of them: registers, spill stack, counts of telling SASS
instructions and the register layouts Triton chose for the [states, channels] tiles.

    python tools/kernel_report.py                       # forward and backward, N = 16, sm90
    python tools/kernel_report.py --kernel bwd --n 16 --nsplit 2 --lowrank 6 --maxnreg 128

Why: the kernels are written for one layout (lanes and warps on channels, each thread holding
all states of its channel; see LANES_ON_CHANNELS in vscan/kernels/scan_seq.py). Triton
versions differ in the layout they pick, and a wrong one turns every sum over states into
shuffles (``SHFL``) and shared-memory round trips (``BAR``), which this shows in seconds on
a CPU; ``IMAD.WIDE`` counts 64-bit address arithmetic (see scan_seq._opaque). ``--plain``
compiles the 1-D scan with z gating that tools/bench_scan.py times instead of a multi-direction
layer. To see a particular Triton version (say the GPU machine's), install its wheel into a
folder and put that folder first on PYTHONPATH: Triton 3.6 (the GPU machine's in 2026-12) picks
other layouts than 3.8 where a tile lacks the LANES_ON_CHANNELS hint. Uses the ptxas and
cuobjdump that ship in the Triton wheel.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"        # compile for real; set before vscan.kernels is imported

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

OPS = ("SHFL", "BAR", "LDL", "STL", "REDG", "MUFU", "FFMA", "IMAD.WIDE", "LDG.E.128")
BF16_INPUTS = {"u_ptr", "dt_ptr", "B_ptr", "C_ptr", "dout_ptr", "z_ptr"}


def _signature(fn, consts):
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*bf16" if name in BF16_INPUTS else ("*i32" if name == "idx_ptr" else "*fp32")
        elif name in ("dout_scale", "out_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def constants(kernel: str, n: int = 16, nsplit: int = 1, lowrank: int = 0, lane_sum: bool = True,
              block_t: int | None = None, sub: int | None = None, plain: bool = False, vec_bc: bool = True) -> dict:
    """The constexpr flags of a multi-direction layer's call (bf16, D, delta_bias, softplus,
    time-varying single-group B/C, an index map, no initial state or last-state gradient): what
    ``_Problem.flags`` would pass; with ``plain`` those of one 1-D scan with z gating
    (selective_scan, as tools/bench_scan.py runs it). ``vec_bc``: the forward's 16-byte B / C row
    loads, which the host plans for the plain scan's 16-byte aligned bf16 rows when N is a
    multiple of 8 (with the forward's registers capped: SEQ_FWD_MAXNREG_VEC)."""
    from vscan.kernels.selective_scan import _seq_tile
    tile = _seq_tile(lean=lowrank > 0)       # the plan's tile: the lean one with dt_proj inside
    block_t = tile[0] if block_t is None else block_t
    sub = tile[2] if sub is None else sub
    bn = triton.next_power_of_2(n)
    c = dict(BLOCK_T=block_t, BLOCK_D=32, HAS_D=True, HAS_Z=plain, HAS_BIAS=True, SOFTPLUS=True, B_VARY=True,
             C_VARY=True, SINGLE_GROUP=True, EVEN_N=bn == n, FAST_EXP=True, MODE=0, HAS_IDX=not plain,
             LOWRANK=lowrank > 0, BLOCK_R=triton.next_power_of_2(lowrank) if lowrank else 1)
    if kernel == "fwd":
        c.update(BLOCK_N=bn, SAVE_ALL=True, OUT_ATOMIC=not plain, VEC_BC=vec_bc and plain and bn == n and n % 8 == 0,
                 ZERO_START=True)
    else:
        c.update(BLOCK_N=bn // nsplit, SUB=sub, DU_ATOMIC=not plain, PREFETCH_BC=True, NSPLIT=nsplit,
                 LANE_SUM=lane_sum, ZERO_END=True)
    return c


def compile_kernel(kernel: str, consts: dict, maxnreg: int = 0, arch: int = 90):
    from vscan.kernels.scan_seq import scan_bwd_seq_kernel, scan_fwd_seq_kernel
    fn = scan_fwd_seq_kernel if kernel == "fwd" else scan_bwd_seq_kernel
    src = ASTSource(fn, _signature(fn, consts), constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    opts = dict(num_warps=1, **({"maxnreg": maxnreg} if maxnreg else {}))
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def _tool(name):
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def tile_layouts(ck) -> list[str]:
    """The distinct 2-D blocked layouts in the kernel's TTGIR (threadsPerWarp and order)."""
    found = re.findall(r"#ttg\.blocked<\{sizePerThread = \[(\d+), (\d+)\], threadsPerWarp = \[(\d+), (\d+)\]"
                       r".*?order = \[(\d), (\d)\]", ck.asm["ttgir"])
    return sorted({f"perThread [{a}, {b}] threadsPerWarp [{c}, {d}] order [{e}, {f}]" for a, b, c, d, e, f in found})


def lanes_on_channels(ck) -> bool:
    """True when every 2-D tile puts all 32 lanes on the channel axis (the kernels' design)."""
    found = re.findall(r"#ttg\.blocked<\{sizePerThread = \[\d+, \d+\], threadsPerWarp = \[(\d+), (\d+)\]",
                       ck.asm["ttgir"])
    return bool(found) and all((int(a), int(b)) == (1, 32) for a, b in found)


def report(ck) -> dict:
    """Registers, spill stack and SASS opcode counts of a compiled kernel (static counts)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(ck.asm["cubin"])
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", res)
    out = dict(registers=int(m.group(1)), stack_bytes=int(m.group(2))) if m else {}
    out.update({op: len(re.findall(r"\b" + re.escape(op) + r"\b", sass)) for op in OPS})
    out.update(lanes_on_channels=lanes_on_channels(ck), layouts=tile_layouts(ck))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", choices=("fwd", "bwd", "both"), default="both")
    ap.add_argument("--n", type=int, default=16, help="state size N")
    ap.add_argument("--nsplit", type=int, default=1, help="backward: programs sharing a block's states")
    ap.add_argument("--lowrank", type=int, default=0, help="dt rank with dt_proj inside the kernels (0: off)")
    ap.add_argument("--plain", action="store_true",
                    help="one 1-D scan with z gating (the bench shapes) instead of a multi-direction layer")
    ap.add_argument("--no-lane-sum", action="store_true", help="backward: cross-lane sums instead of _lane_sum")
    ap.add_argument("--no-vec-bc", action="store_true",
                    help="forward with --plain: 2-byte B / C loads instead of scan_seq's VEC_BC")
    ap.add_argument("--block-t", type=int, default=None,
                    help="chunk-state interval (default: the tile kernels/selective_scan.py plans, lean with "
                         "--lowrank; VSCAN_SCAN_SEQ applies)")
    ap.add_argument("--sub", type=int, default=None, help="backward sub-chunk (default: the planned tile's)")
    ap.add_argument("--maxnreg", type=int, default=0,
                    help="backward register cap (0: none; the forward takes the host's: capped with VEC_BC)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    ap.add_argument("--json", action="store_true", help="print one JSON object {kernel: report} instead")
    args = ap.parse_args(argv)
    if args.n < 1 or args.n > 32:
        raise SystemExit(f"--n: the sequential kernels take 1 <= N <= 32, got {args.n}")
    if not os.path.exists(_tool("ptxas")):
        raise SystemExit(f"kernel_report: this Triton wheel has no {_tool('ptxas')}")
    from vscan.kernels.selective_scan import SEQ_FWD_MAXNREG_VEC
    out = {}
    for kernel in (("fwd", "bwd") if args.kernel == "both" else (args.kernel,)):
        consts = constants(kernel, args.n, args.nsplit, args.lowrank, not args.no_lane_sum, args.block_t, args.sub,
                           args.plain, not args.no_vec_bc)
        cap = args.maxnreg if kernel == "bwd" else (SEQ_FWD_MAXNREG_VEC if consts["VEC_BC"] else 0)
        out[kernel] = report(compile_kernel(kernel, consts, cap, args.arch))
    if args.json:
        print(json.dumps(dict(triton=triton.__version__, arch=args.arch, **out)))
        return 0
    print(f"triton {triton.__version__}, sm{args.arch}")
    for kernel, r in out.items():
        layouts = r.pop("layouts")
        print(f"{kernel}: " + ", ".join(f"{k} {v}" for k, v in r.items()))
        for lay in layouts:
            print(f"    tile layout: {lay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
