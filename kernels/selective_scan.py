"""Host side of the Triton selective scan: kernel and tile choice, segment split, autograd.

Two kernel families compute the same thing with the same state slots:
- ``sequential`` (scan_seq.py): each thread owns whole channels and walks time; the fast path,
  used when N <= SEQ_MAX_N (every thread keeps N states, and in backward a few N-wide tiles,
  in registers);
- ``chunked`` (scan_fwd.py / scan_bwd.py): associative scans over [time, channel] tiles, one
  state at a time; any N up to 256.
``VSCAN_SCAN_KERNEL`` = auto | sequential | chunked forces one (experiments, tests).
"""
from __future__ import annotations

import functools
import math
import os

import torch

from .launch import launch
from .scan_bwd import scan_bwd_kernel
from .scan_fwd import scan_fwd_kernel, segment_combine_kernel
from .scan_seq import scan_bwd_seq_kernel, scan_fwd_seq_kernel

SEQ_MAX_N = 32
# Chunked tiles: (BLOCK_T, BLOCK_D, num_warps) for forward and backward. Chosen on an H100, see
# tools/bench_scan.py; overridable with VSCAN_SCAN_TILES="T,D,W;T,D,W".
FWD_TILE = (64, 16, 2)
BWD_TILE = (32, 16, 2)
# Sequential: (BLOCK_T = chunk-state interval, num_warps, backward SUB, programs per SM);
# BLOCK_D = 32 * num_warps. On a GPU the segment split comes from the compiled kernels'
# occupancy (_segments below); "programs per SM" is the fallback where that cannot be read.
# Overridable with VSCAN_SCAN_SEQ="T,W,SUB,P[,BLOCK_D[,NSPLIT]]" (a smaller BLOCK_D gives tests
# several channel blocks on tiny shapes; NSPLIT > 1 splits the N states of the backward over that
# many programs, see scan_bwd_seq_kernel).
# BLOCK_T == SUB = 16: the backward walks each saved 16-step chunk once to fill its scratch and
# once in reverse, instead of a first pass over 64 steps that keeps every 8th state. On an H100
# (two calls, 2026-12-05, CUDA-graph f+b so the host does not count; results/bench_scan_host_h100/)
# it was 4-8% faster than (64, 1, 8, 16) at all four bench shapes (text 3.22-3.36 vs 3.41-3.64 ms,
# long 4.62-4.84 vs 4.85-5.02). The price is 4x the saved chunk states: 4 bytes per
# (batch, step, channel) at N = 16 instead of 1, e.g. 134 vs 34 MiB at the text shape
# (8 x 2048 x 2048); the memory-lean build below keeps its own interval.
SEQ_TILE = (16, 1, 16, 16)
# The memory-lean build (dt_proj inside the kernels, multi_scan's dt_weight): chunk states every
# 256 steps, SUB 16. On an H200 (VMamba-T stage-1 SS2D, N = 16, 2026-12-02, 128-register cap,
# before the layout fix below) the layer's peak extra memory was 1694 vs 1911 MiB with SEQ_TILE
# (saved chunk states 84 vs 300 MiB) and f+b 50.0 vs 50.7 ms; results/bench_multi_scan/README.md.
# VSCAN_SCAN_SEQ overrides both.
SEQ_TILE_LEAN = (256, 1, 16, 16)
# Backward N split when the tile does not set one: SEQ_NSPLIT programs share a channel block's
# states once N >= SEQ_NSPLIT_MIN_N (SEQ_NSPLIT_MIN_N_LEAN for the lean build); the sums over N
# (du / delta / z gradients) are then float32 atomics. Measured on an H200 (2026-12-02,
# results/bench_scan_layout_h200/): once the kernels got their intended register layout
# (LANES_ON_CHANNELS in scan_seq.py), no split was faster at N = 16 on the 1-D shapes (f+b
# 2.61 / 5.10 / 3.52 ms vs 3.57 / 7.01 / 4.58 ms with the split, vim-s-1024 / long / text) and
# in the plain SS2D layer (34.2 vs 37.1 ms, 3086 vs 4212 MiB). Before it, the split had been
# 1.16-1.29x faster. N = 32 still splits (a thread would hold 32 states). The lean build keeps
# the split at N = 16, which is what its register cap and its issue-3 figures were measured with.
SEQ_NSPLIT, SEQ_NSPLIT_MIN_N, SEQ_NSPLIT_MIN_N_LEAN = 2, 32, 16
# Sequential backward: (prefetch B/C one step ahead in the reverse pass, register cap or 0 for
# none). Overridable with VSCAN_SCAN_BWD="P,R". Without the split the reverse pass takes all 255
# registers at N = 16 (no spills). Caps of 168 / 192 were slower on the 1-D shapes (long: 6.59 /
# 5.70 vs 5.10 ms; results/bench_scan_layout_h200/, after the layout fix).
SEQ_BWD = (1, 0)
# The memory-lean build (dt_proj inside the kernels) with a cap of 128 registers: on an H200
# (VMamba-T stage-1 SS2D, N = 16, 2026-12-02, after the layout fix) f+b 37.1 vs 45.0 ms without
# a cap (168: 37.7, 192: 46.8); results/bench_scan_layout_h200/.
SEQ_BWD_LEAN = (1, 128)
# Sequential backward: the per-step sums over a one-warp channel block (dB, dC, the low-rank dt
# gradient) as one warp reduce-scatter each instead of a cross-lane sum per state (see
# scan_seq._lane_sum). CUDA only (inline PTX); VSCAN_SCAN_LANESUM=0 turns it off. On an H200
# (after the layout fix) the lean SS2D layer at N = 16 took 37.1 vs 44.5 ms with and without it;
# results/bench_scan_layout_h200/.
SEQ_LANE_SUM = True
# The sequential forward of one 1-D scan reads time-varying bf16 / fp16 B and C rows 8 states per
# 16-byte load (scan_seq.VEC_BC) where the rows' group bases are 16-byte aligned and N is a
# multiple of 8, with its registers capped at SEQ_FWD_MAXNREG_VEC (uncapped it took 105 instead
# of 94, 18 programs per SM instead of 21). CUDA only (inline PTX); VSCAN_SCAN_VEC_BC=0 turns it
# off. On an H100 (2026-12-05, one machine, results/bench_scan_vec_h100/), against 2-byte loads:
# the forward took 0.581 vs 0.640 ms (text) and 0.973 vs 0.957 (long) without grad, 0.695 vs 0.713
# and 1.139 vs 1.184 ms saving states; without the cap it was slower at both (training forward
# 0.762 / 1.297 ms). In the backward the same loads measured 1% slower at text and even at long
# (kernel time 2.34 vs 2.31 ms, 3.29 vs 3.29), so it keeps 2-byte loads; the multi-direction and
# dt_proj-inside forwards (127 and 167 registers, which a cap of 96 makes spill) were not measured
# with them and keep them too.
SEQ_VEC_BC = True
SEQ_FWD_MAXNREG_VEC = 96


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (plain Python: ``triton.next_power_of_2`` and
    ``triton.cdiv`` are JIT functions in newer Triton, a dispatch per host call)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _kernel_kind(N: int) -> str:
    kind = os.environ.get("VSCAN_SCAN_KERNEL", "auto").strip().lower()
    if kind not in ("auto", "sequential", "chunked"):
        raise ValueError(f"VSCAN_SCAN_KERNEL: expected auto, sequential or chunked, got {kind!r}")
    if kind == "auto":
        return "sequential" if N <= SEQ_MAX_N else "chunked"
    if kind == "sequential" and N > SEQ_MAX_N:
        raise ValueError(f"VSCAN_SCAN_KERNEL=sequential supports N <= {SEQ_MAX_N}, got N={N}")
    return kind


def _tiles():
    env = os.environ.get("VSCAN_SCAN_TILES")
    if env:
        f, b = env.split(";")
        return tuple(map(int, f.split(","))), tuple(map(int, b.split(",")))
    return FWD_TILE, BWD_TILE


def _seq_bwd(lean: bool = False):
    env = os.environ.get("VSCAN_SCAN_BWD")
    prefetch, maxnreg = tuple(map(int, env.split(","))) if env else (SEQ_BWD_LEAN if lean else SEQ_BWD)
    return bool(prefetch), maxnreg


def _lane_sum(device: torch.device, bd: int, warps: int) -> bool:
    env = os.environ.get("VSCAN_SCAN_LANESUM")
    if env is not None and env.strip() not in ("0", "1"):
        raise ValueError(f"VSCAN_SCAN_LANESUM: expected 0 or 1, got {env!r}")
    on = SEQ_LANE_SUM if env is None else env.strip() == "1"
    return on and device.type == "cuda" and bd == 32 and warps == 1


def _vec_bc_ok(X, vary: bool) -> bool:
    """X (a B or C operand) can take scan_seq's 16-byte row loads: constant, or 16-bit with a
    16-byte aligned start and every stride but the unit one (of axes longer than 1) a multiple
    of 8 elements."""
    if not vary:
        return True
    if X.dtype not in (torch.bfloat16, torch.float16) or X.data_ptr() % 16:
        return False
    return all(st % 8 == 0 for st, n in zip(X.stride()[:-1], X.shape[:-1]) if n > 1)


def _vec_bc_tile_ok(p, N: int) -> bool:
    """The plan's forward tile suits scan_seq's 16-byte row loads: every thread holds all of its
    channel's states (a channel block of at least one warp's lanes: a block of 16 channels
    spreads a channel's states over two lanes), in groups of 8 with no mask."""
    return p["kind"] == "sequential" and p["bn"] == N and N % 8 == 0 and p["bd"] >= 32 * p["warps"]


def _vec_bc_on() -> bool:
    env = os.environ.get("VSCAN_SCAN_VEC_BC")
    if env is not None and env.strip() not in ("0", "1"):
        raise ValueError(f"VSCAN_SCAN_VEC_BC: expected 0 or 1, got {env!r}")
    return SEQ_VEC_BC if env is None else env.strip() == "1"


def _vec_bc(pr) -> bool:
    """Whether the forward of this problem takes the 16-byte B / C loads (SEQ_VEC_BC): the plan
    allows them (switch, device, tile) and this call's B / C rows suit them."""
    return (pr.p["vec_bc"] and pr.K == 1 and pr.idx is None and pr.W32 is None and (pr.B_vary or pr.C_vary)
            and _vec_bc_ok(pr.B, pr.B_vary) and _vec_bc_ok(pr.C, pr.C_vary))


def _seq_tile(lean: bool = False):
    env = os.environ.get("VSCAN_SCAN_SEQ")
    return tuple(map(int, env.split(","))) if env else (SEQ_TILE_LEAN if lean else SEQ_TILE)


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _target_override(which: int = 0) -> int | None:
    """VSCAN_SCAN_TARGET_PROGRAMS="F[,B]": split every launch into segments until about F (the
    forward) or B (the backward; F when not given) programs run, instead of the occupancy model
    (tests use it to force segments on tiny shapes)."""
    env = os.environ.get("VSCAN_SCAN_TARGET_PROGRAMS")
    if not env:
        return None
    try:
        parts = [int(x) for x in env.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise ValueError(f"VSCAN_SCAN_TARGET_PROGRAMS: expected one or two positive integers "
                         f"(forward[,backward]), got {env!r}")
    return parts[min(which, len(parts) - 1)]


def _target_programs(device: torch.device, per_sm: int) -> int:
    over = _target_override()
    if over is not None:
        return over
    if device.type == "cuda":
        return per_sm * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 1


def _split_for_target(n_chunks: int, rows: int, target: int) -> tuple[int, int]:
    """(segments, chunks per segment) so that rows x segments reaches about ``target`` programs."""
    want = max(1, _cdiv(target, rows))
    cps = _cdiv(n_chunks, max(1, min(n_chunks, want)))
    return _cdiv(n_chunks, cps), cps


# Segment split of the sequential kernels, per launch. A launch runs rows x segments one-warp
# programs, each walking cps chunks; the GPU holds `resident` of them at once (what the compiled
# kernel's registers allow: on an H200 at N = 16, 25 per SM for the forward and 8 for the
# backward, which takes 255 registers).
# Forward: the split with the least waves x steps of its longest segment, times
# (1 + SEQ_FWD_MODE1_COST) when split, for the summary pass a split needs (MODE 1: a segment's
# end state from zero). On an H200 this beat the earlier fixed 16 programs per SM at all four
# bench shapes (forward 3-15% faster; results/bench_scan_split_h200/).
# Backward: at first about two waves of resident programs (at N = 16 on 132 SMs the same split
# as the old 16 per SM). The wave model above picked one wave for the backward (text: 2
# segments, long: 11), which measured 6% and 10% slower there than 5 and 22 segments (2.4 and
# 2 waves) in the same run: more programs than slots paid. The rule that replaced two waves
# (_bwd_segments) is below.
# Each segment beyond the first also costs SEQ_FWD_SEG_COST wave-steps: a step of the combine,
# which walks the segments one after another, plus the segment's two state slots. Without it the
# model is nearly flat in the number of segments and, with 8-step chunks at the long shape, chose
# 2048 one-chunk segments for the training forward: 2.7 ms instead of 1.2, a 1 ms combine and
# 400 MB of segment summaries (H100, 2026-12-05, results/bench_scan_host_h100/). 0.5: that
# combine took about 0.5 us per segment, a step of one wave of the forward about 1.3 us.
# Backward, revised (H100, 2026-12-05, results/bench_scan_vec_h100/, f+b with the forward's split
# fixed): a last wave that is partly empty costs. At text (512 rows, 128 chunks of 16, 1056
# resident) 5 segments (2560 programs, 2.4 waves) took 3.058 ms, 4 / 6 / 8 segments (1.94 / 2.91 /
# 3.88 waves) 2.909 / 2.853 / 2.840; at long (96 rows) 16 segments (1.45 waves) 5.128, 22 (2.0)
# 4.460, 32 (2.91) 4.420. So: the most segments with at most SEQ_BWD_WAVES waves whose last wave
# is at least SEQ_BWD_FILL full (_bwd_segments); three waves, not four, since each program
# has its own scratch (34 KiB at N = 16 with 16-step chunks).
SEQ_FWD_MODE1_COST = 0.6       # a summary-pass step relative to a main-pass step
SEQ_FWD_SEG_COST = 0.5         # wave-steps per extra segment
SEQ_BWD_WAVES = 3
SEQ_BWD_FILL = 0.95


def _cps_candidates(n_chunks: int) -> set:
    """Every distinct chunks-per-segment value of a split of n_chunks chunks: ceil(n_chunks / n)
    or n itself, for n up to sqrt(n_chunks) + 1 (O(sqrt) candidates instead of n_chunks)."""
    cands = set()
    for n in range(1, math.isqrt(n_chunks) + 2):
        cands.add(_cdiv(n_chunks, n))
        cands.add(min(n, n_chunks))
    return cands


@functools.lru_cache(maxsize=256)
def _seq_segments(L: int, bt: int, rows: int, resident: int, mode1_cost: float,
                  seg_cost: float = 0.0) -> tuple[int, int]:
    """(segments, chunks per segment) for L steps in chunks of bt: least waves x steps of the
    longest segment x (1 + mode1_cost if split) + seg_cost x (segments - 1); fewer segments on
    ties."""
    n_chunks = _cdiv(L, bt)
    best = None
    for cps in sorted(_cps_candidates(n_chunks), reverse=True):   # few segments first
        n_seg = _cdiv(n_chunks, cps)
        steps = min(cps * bt, L)
        cost = (_cdiv(rows * n_seg, resident) * steps * (1.0 + (mode1_cost if n_seg > 1 else 0.0))
                + seg_cost * (n_seg - 1))
        if best is None or cost < best[0] - 1e-9:
            best = (cost, n_seg, cps)
    return best[1], best[2]


@functools.lru_cache(maxsize=256)
def _bwd_segments(n_chunks: int, rows: int, resident: int) -> tuple[int, int]:
    """(segments, chunks per segment) of the sequential backward: the most segments whose
    rows x segments programs fill at most SEQ_BWD_WAVES waves of ``resident``, the last one at
    least SEQ_BWD_FILL full; where no split does, about two waves (_split_for_target)."""
    best = None
    for cps in _cps_candidates(n_chunks):
        n_seg = _cdiv(n_chunks, cps)
        programs = rows * n_seg
        waves = _cdiv(programs, resident)
        # most segments; of the chunk counts giving as many, the smallest (the shortest segments)
        if (waves <= SEQ_BWD_WAVES and programs >= SEQ_BWD_FILL * waves * resident
                and (best is None or (n_seg, -cps) > (best[0], -best[1]))):
            best = (n_seg, cps)
    return best or _split_for_target(n_chunks, rows, 2 * resident)


_RESIDENT: dict = {}


def _resident_programs(kernel, probe, kwargs, device: torch.device, dtypes: tuple) -> int | None:
    """How many programs of ``kernel`` (compiled for the arguments ``probe()`` gives; a
    torch.dtype stands for a buffer not allocated yet) the GPU holds at once, over all SMs: the
    occupancy calculator's count from the compiled kernel's registers, shared memory and warps.
    Cached per constexpr set and ``dtypes`` (of the input and output tensors), so that a launch
    that finds it builds no argument list. None where that cannot be read (the interpreter, or a
    Triton without these fields)."""
    key = (id(kernel), device.index, tuple(kwargs.items()), dtypes)
    if key in _RESIDENT:
        return _RESIDENT[key]
    args = probe()
    try:
        ck = kernel.warmup(*args, grid=(1,), **kwargs)     # compiles (or finds) it; launches nothing
        ck._init_handles()
        regs, smem, warps = int(ck.n_regs), int(ck.metadata.shared), int(ck.metadata.num_warps)
    except (AttributeError, TypeError):
        return None
    props = torch.cuda.get_device_properties(device)
    blocks = _blocks_per_sm(regs, smem, warps, getattr(props, "regs_per_multiprocessor", 65536),
                            getattr(props, "shared_memory_per_multiprocessor", 228 * 1024),
                            getattr(props, "max_threads_per_multi_processor", 2048))
    _RESIDENT[key] = blocks * props.multi_processor_count
    return _RESIDENT[key]


def _blocks_per_sm(regs: int, smem: int, warps: int, reg_file: int = 65536, smem_sm: int = 228 * 1024,
                   threads: int = 2048, max_blocks: int = 32) -> int:
    """Resident blocks per SM, as CUDA's occupancy calculator counts them on sm_90: registers
    are allocated per warp in units of 256, and each block reserves 1 KiB of shared memory."""
    per_warp = _cdiv(max(regs, 1) * 32, 256) * 256
    blocks = min(max_blocks, threads // (32 * warps), (reg_file // per_warp) // warps)
    if smem:
        blocks = min(blocks, smem_sm // (smem + 1024))
    return max(1, blocks)


def _segments(pr, which: int, rows: int, kernel, probe, kwargs, out_dtype) -> tuple[int, int]:
    """(segments, chunks per segment) of one launch (which: 0 forward, 1 backward) over ``rows``
    program rows (channel blocks x splits x batch rows); ``probe()`` gives the main pass's
    arguments (buffers sized by the split as dtypes), built only when the model needs them. The
    chunked kernels keep the plan's split (their backward reuses the forward's segment sums); the
    sequential ones on a GPU use the occupancy rules above; the interpreter runs one segment
    unless VSCAN_SCAN_TARGET_PROGRAMS forces more."""
    p = pr.p
    resident = None
    if p["kind"] != "sequential":
        split = p["n_seg"], p["cps"]
    elif (target := _target_override(which)) is not None:
        split = _split_for_target(p["n_chunks"], rows, target)
    elif pr.u.is_cuda and (resident := _resident_programs(kernel, probe, kwargs, pr.u.device,
                                                          (*pr.dtypes, out_dtype))):
        split = (_seq_segments(pr.L, p["bt"], rows, resident, SEQ_FWD_MODE1_COST, SEQ_FWD_SEG_COST) if which == 0
                 else _bwd_segments(p["n_chunks"], rows, resident))
    else:
        split = p["n_seg"], p["cps"]
    LAST_SPLIT[which] = dict(n_seg=split[0], cps=split[1], rows=rows, resident=resident, L=pr.L, bt=p["bt"])
    return split


# The last split chosen per launch kind (0 forward, 1 backward), for benchmarks to report.
LAST_SPLIT: dict = {}


def _block_d(dim: int, ch_per_group: int, pref: int) -> tuple[int, bool]:
    """Largest power-of-two block <= pref that stays inside one group; else a general block
    whose dB/dC reduction uses atomics."""
    bd = min(pref, _pow2(dim))
    while bd > 4 and ch_per_group % bd:
        bd //= 2
    if ch_per_group % bd == 0:
        return bd, True
    return min(pref, _pow2(dim)), False


# The environment variables _plan reads: part of its cache key.
_PLAN_ENV = ("VSCAN_SCAN_KERNEL", "VSCAN_SCAN_SEQ", "VSCAN_SCAN_TILES", "VSCAN_SCAN_BWD", "VSCAN_SCAN_LANESUM",
             "VSCAN_SCAN_TARGET_PROGRAMS", "VSCAN_SCAN_VEC_BC")


def _plan(L, dim, batch, N, ch_per_group, device, lean=False) -> dict:
    """The tile plan of a problem (cached: it runs on every call; treat the dict as read-only)."""
    return _plan_cached(L, dim, batch, N, ch_per_group, device, lean, tuple(map(os.environ.get, _PLAN_ENV)))


@functools.lru_cache(maxsize=1024)
def _plan_cached(L, dim, batch, N, ch_per_group, device, lean, _env):
    kind = _kernel_kind(N)
    bn = _pow2(N)
    nsplit, prefetch, maxnreg = 1, True, 0
    if kind == "sequential":   # ``lean``: the build with dt_proj inside the kernels (its own tile and cap)
        bt, warps, sub, per_sm, *extra = _seq_tile(lean)
        bd_pref, bwarps = (extra[0] if extra else 32 * warps), warps
        min_n = SEQ_NSPLIT_MIN_N_LEAN if lean else SEQ_NSPLIT_MIN_N
        nsplit = extra[1] if len(extra) > 1 else (SEQ_NSPLIT if bn >= min_n else 1)
        prefetch, maxnreg = _seq_bwd(lean)
    else:
        (bt, bd_pref, warps), (_bbt, _bbd, bwarps) = _tiles()   # backward reuses the forward T and D
        sub, per_sm = 0, 8
    bt = min(bt, max(16, _pow2(L)))
    bd, single = _block_d(dim, ch_per_group, bd_pref)
    n_chunks = _cdiv(L, bt)
    n_blk = _cdiv(dim, bd)
    n_seg, cps = _split_for_target(n_chunks, n_blk * batch, _target_programs(device, per_sm))
    if nsplit < 1 or nsplit & (nsplit - 1):
        raise ValueError(f"VSCAN_SCAN_SEQ: NSPLIT must be a power of two >= 1, got {nsplit}")
    nsplit = min(nsplit, bn)            # N = 1 cannot be split
    lane_sum = kind == "sequential" and _lane_sum(device, bd, bwarps)
    p = dict(kind=kind, bt=bt, bd=bd, warps=warps, bwarps=bwarps, sub=min(sub, bt), single=single,
             bn=bn, n_chunks=n_chunks, n_blk=n_blk, n_seg=n_seg, cps=cps, nsplit=nsplit,
             prefetch=prefetch, maxnreg=maxnreg, lane_sum=lane_sum)
    p["vec_bc"] = device.type == "cuda" and _vec_bc_on() and _vec_bc_tile_ok(p, N)
    return p


def _c(t):
    """B/C only need a unit stride over N (a slice of x_proj's output is fine)."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _bc_strides(X, vary, per_direction=False):
    """(batch, row, group, direction) strides of B or C; a direction axis sits where groups do."""
    if not vary:
        return (0, 0, 0, 0)
    s = X.stride()
    if per_direction:
        return (s[0], s[1], 0, s[2])
    return (s[0], s[1], s[2], 0)


def _row_strides(t, per_direction):
    """(batch, row, direction) strides of a token-major (b, L, d) or (b, L, K, d) tensor."""
    if t is None:
        return (0, 0, 0)
    s = t.stride()
    return (s[0], s[1], s[2] if per_direction else 0)


class _Problem:
    """What one launch pair (forward, backward) needs: the tensors, their strides and the tile
    plan. Program rows of the batch grid axis are (batch, direction) pairs, K of them per batch
    item; direction k reads rows ``idx[k, t]`` at step t (or t itself without ``idx``) and has
    its own A[k], D[k], delta_bias[k]. The single scan is K = 1 without an index. With ``W32``
    (K, d, R) float32, ``delta`` holds the low-rank dt (b, L, K, R) and the kernels apply dt_proj
    themselves: delta[c] = sum_r W[k, c, r] dt[r] (no (b, L, K, d) delta in memory)."""

    def __init__(self, u, delta, A32, B, C, D32, z, bias32, softplus, idx=None, u_per_dir=False,
                 bc_per_dir=False, W32=None, plan=None):
        self.b, self.L = u.shape[:2]
        self.K, self.dim, self.N = A32.shape
        self.u, self.delta, self.z, self.B, self.C = u, delta, z, B, C
        self.A32, self.D32, self.bias32, self.idx, self.softplus = A32, D32, bias32, idx, bool(softplus)
        self.B_vary, self.C_vary = B.dim() == 4, C.dim() == 4
        self.sB = _bc_strides(B, self.B_vary, bc_per_dir)
        self.sC = _bc_strides(C, self.C_vary, bc_per_dir)
        self.su = _row_strides(u, u_per_dir)
        self.sdt = _row_strides(delta, self.K > 1)
        self.sz = _row_strides(z, False)[:2]
        self.bc_per_dir = bc_per_dir
        self.W32 = W32
        self.rank = W32.shape[-1] if W32 is not None else 1
        if bc_per_dir:
            self.cpg = self.dim      # each direction's B/C is one group of all channels
        else:
            groups = B.shape[2] if self.B_vary else (C.shape[2] if self.C_vary else 1)
            self.cpg = self.dim // groups
        # the backward passes the forward's plan: the saved states are laid out by its tile
        self.p = plan if plan is not None else _plan(self.L, self.dim, self.b * self.K, self.N, self.cpg, u.device,
                                                     lean=W32 is not None)
        self.dtypes = tuple(None if t is None else t.dtype for t in (u, delta, B, C, z, W32, idx))
        self._flags = None

    def flags(self) -> dict:
        """The kernels' constexpr flags (built once; read-only: callers copy it)."""
        if self._flags is None:
            self._flags = self._build_flags()
        return self._flags

    def _build_flags(self):
        p = self.p
        f = dict(BLOCK_T=p["bt"], BLOCK_D=p["bd"], HAS_D=self.D32 is not None, HAS_Z=self.z is not None,
                 HAS_BIAS=self.bias32 is not None, SOFTPLUS=self.softplus, B_VARY=self.B_vary,
                 C_VARY=self.C_vary, SINGLE_GROUP=p["single"])
        if p["kind"] == "sequential":
            f.update(BLOCK_N=p["bn"], EVEN_N=p["bn"] == self.N, FAST_EXP=self.u.is_cuda, HAS_IDX=self.idx is not None,
                     LOWRANK=self.W32 is not None, BLOCK_R=_pow2(self.rank))
        return f

    def opt(self, t):
        """A dummy pointer for an absent optional tensor (never read: its flag is off)."""
        return t if t is not None else self.A32


# Buffers whose every slot the sequential kernels write before anything reads it (tests swap in
# a NaN-filled allocator to check that): no zero fill, which at the text shape with 16-step
# chunks was 60 us of memset per forward+backward (H100).
_uninit = torch.empty


def _forward(pr, out, s_out, out_atomic=False, out_scale=1.0, initial_state=None, save=True):
    """Run the forward kernels into ``out`` (strides s_out = (batch, row, direction)).
    Returns (states, dtsum, last_state); ``states`` holds the chunk-start states when save."""
    p, dev, bk = pr.p, pr.u.device, pr.b * pr.K
    seq = p["kind"] == "sequential"
    f32 = dict(device=dev, dtype=torch.float32)
    zz = pr.opt(pr.z)
    common = dict(pr.flags(), num_warps=p["warps"])
    # without an initial state the sequential kernels start from zeros themselves: no slot is filled
    zero_start = seq and initial_state is None
    if seq:
        kernel = scan_fwd_seq_kernel
        ins = (pr.u, pr.delta, pr.A32, pr.B, pr.C, pr.opt(pr.D32), zz, pr.opt(pr.bias32), out,
               pr.opt(pr.idx), pr.opt(pr.W32))
        vec = _vec_bc(pr)
        common.update(OUT_ATOMIC=out_atomic, ZERO_START=zero_start, VEC_BC=vec)
        if vec:
            common["maxnreg"] = SEQ_FWD_MAXNREG_VEC

        def scalars(n_seg, cps):
            return (pr.L, pr.dim, pr.N, p["n_chunks"], cps, n_seg, pr.cpg, pr.K, float(out_scale), pr.rank,
                    *pr.su, *pr.sdt, *pr.sz, *s_out, *pr.sB, *pr.sC)
    else:
        assert pr.K == 1 and pr.idx is None and not out_atomic and pr.W32 is None, \
            "the chunked kernels scan one direction with a full delta"
        kernel = scan_fwd_kernel
        ins = (pr.u, pr.delta, pr.A32, pr.B, pr.C, pr.opt(pr.D32), zz, pr.opt(pr.bias32), out)

        def scalars(n_seg, cps):
            return (pr.L, pr.dim, pr.N, p["n_chunks"], cps, n_seg, pr.cpg,
                    pr.su[0], pr.su[1], pr.sdt[0], pr.sdt[1], *pr.sz, s_out[0], s_out[1],
                    *pr.sB[:3], *pr.sC[:3])
    # the split is chosen for the compiled main pass (buffers it sizes stand in as dtypes)
    def probe():
        return (*ins, torch.float32, torch.float32, *scalars(p["n_seg"], p["cps"]), 0, pr.dim * pr.N)
    n_seg, cps = _segments(pr, 0, p["n_blk"] * bk, kernel, probe, dict(common, MODE=0, SAVE_ALL=save), out.dtype)
    n_slots = p["n_chunks"] + 1 if save else 2 * n_seg
    # the sequential kernels write every slot they (or the combine) read, except the initial state
    new = _uninit if seq else torch.zeros
    states = new(bk, n_slots, pr.dim, pr.N, **f32)
    if initial_state is not None:
        states[:, 0] = initial_state.float()
    dtsum = torch.empty(bk, n_seg, pr.dim, **f32)
    grid = (p["n_blk"], bk, n_seg)
    if n_seg > 1:
        loc = new(bk, 2 * n_seg, pr.dim, pr.N, **f32)
        # the combine reads the summaries of segments 0 .. n_seg - 2 only (sequential kernels)
        grid1 = (grid[0], grid[1], n_seg - 1) if seq else grid
        launch(kernel, grid1, *ins, loc, dtsum, *scalars(n_seg, cps), loc.stride(0), loc.stride(1), MODE=1,
               SAVE_ALL=False, **common)
        _combine(states, loc, dtsum, pr, n_seg, cps, save, reverse=False, zero_start=zero_start)
    launch(kernel, grid, *ins, states, dtsum, *scalars(n_seg, cps), states.stride(0), states.stride(1), MODE=0,
           SAVE_ALL=save, **common)
    last = states[:, p["n_chunks"]] if save else states[:, (n_seg - 1) * 2 + p["n_chunks"] % 2]
    return states, dtsum, last


def _combine(states, loc, dtsum, pr, n_seg, cps, save, reverse, zero_start=False):
    blk = 256
    launch(segment_combine_kernel, (_cdiv(pr.dim * pr.N, blk), pr.b * pr.K),
           states, loc, dtsum, pr.A32, pr.dim, pr.N, pr.p["n_chunks"], cps, n_seg, pr.K,
           states.stride(0), states.stride(1), loc.stride(0), loc.stride(1),
           BLOCK=blk, SAVE_ALL=save, REVERSE=reverse, ZERO_START=zero_start)


def _backward(pr, states, dtsum, dout, s_dout, dout_scale=1.0, dlast=None, du_atomic=False, merge_bc=False):
    """Run the backward kernels. Returns per-input gradient buffers (float32 partial sums for
    A, D, delta_bias and B/C, reduced by the caller) and the carry buffer (its slot 1 is the
    gradient of the initial state). The sequential kernels choose their own segment split (their
    summary pass sums dt per segment itself); the chunked ones reuse the forward's and its
    per-segment ``dtsum``."""
    p, dev, bk, dim, N, L = pr.p, pr.u.device, pr.b * pr.K, pr.dim, pr.N, pr.L
    n_chunks = p["n_chunks"]
    seq = p["kind"] == "sequential"
    f32 = dict(device=dev, dtype=torch.float32)
    # with the N states split over programs, du / ddelta / dz are sums of per-split parts
    nsplit = p["nsplit"] if seq else 1
    split = nsplit > 1
    du = torch.zeros(pr.u.shape, **f32) if (du_atomic or split) else torch.empty_like(pr.u)
    # the low-rank dt's gradient is summed over channels in the kernel (atomics: float32 zeros)
    ddelta = torch.zeros(pr.delta.shape, **f32) if (pr.W32 is not None or split) else torch.empty_like(pr.delta)
    dz = None
    if pr.z is not None:
        dz = torch.zeros(pr.z.shape, **f32) if split else torch.empty_like(pr.z)
    # the chunked kernels write one dB/dC partial per channel block of a group (summed below);
    # the sequential ones add into a single buffer
    bpg = max(1, pr.cpg // p["bd"]) if (p["single"] and not seq) else 1
    varying = {}
    dBC = None
    if merge_bc and seq and pr.B_vary and pr.C_vary and pr.B.shape == pr.C.shape:
        # one buffer (one fill, and in the caller one cast) for both; its peak is that of two
        dBC = torch.zeros(2, *pr.B.shape, **f32)
        varying = dict(dB=dBC[0:1], dC=dBC[1:2])
    for name, vary, X in (("dB", pr.B_vary, pr.B), ("dC", pr.C_vary, pr.C)):
        if vary and name not in varying:
            varying[name] = (torch.empty if (p["single"] and not seq) else torch.zeros)(bpg, *X.shape, **f32)
    pbuf = varying.get("dB", varying.get("dC"))
    if pbuf is not None:
        # (partial, batch, row, group, direction); per-direction B/C: the direction axis takes the group's place
        ps = (pbuf.stride(0), pbuf.stride(1), pbuf.stride(2), 0 if pr.bc_per_dir else pbuf.stride(3),
              pbuf.stride(3) if pr.bc_per_dir else 0)
    else:
        ps = (0, 0, 0, 0, 0)
    if len(varying) == 2:
        assert varying["dB"].stride() == varying["dC"].stride()
    common = dict(pr.flags(), num_warps=p["bwarps"])
    zz = pr.opt(pr.z)
    ins = (pr.u, pr.delta, pr.A32, pr.B, pr.C, pr.opt(pr.D32), zz, pr.opt(pr.bias32), dout)
    zero_end = seq and dlast is None      # no gradient of the last state: the kernels start from zeros
    if seq:
        common.update(SUB=p["sub"], DU_ATOMIC=du_atomic, PREFETCH_BC=p["prefetch"], LANE_SUM=p["lane_sum"],
                      ZERO_END=zero_end)
        if split:
            common.update(NSPLIT=nsplit, BLOCK_N=p["bn"] // nsplit)
        if p["maxnreg"]:
            common["maxnreg"] = p["maxnreg"]
        per_prog = (p["sub"] + p["bt"] // p["sub"]) * (p["bn"] // nsplit) * p["bd"]
    else:
        assert pr.K == 1 and pr.idx is None and not du_atomic and dout_scale == 1.0 and pr.W32 is None
        common["BLOCK_N"] = p["bn"]

    def args(b, n_seg, cps):
        """The kernel's arguments; ``b`` holds the buffers sized by the split (or their dtypes)."""
        outs = (du, ddelta, dz if dz is not None else du, b["dA"], b["dD"], b["dbias"], b["dB"], b["dC"])
        st = (states.stride(0), states.stride(1), b["s_cb"], dim * N)
        if seq:
            return (*ins, pr.opt(pr.idx), pr.opt(pr.W32), states, b["carry"], b["scratch"], b["dtsum"], *outs,
                    b["dW"] if pr.W32 is not None else b["dA"],
                    L, dim, N, n_chunks, cps, n_seg, pr.cpg, bpg, pr.K, float(dout_scale), pr.rank,
                    *pr.su, *pr.sdt, *pr.sz, *s_dout, *pr.sB, *pr.sC, *st, *ps, par_w)
        return (*ins, states, b["carry"], *outs, L, dim, N, n_chunks, cps, n_seg, pr.cpg, bpg,
                pr.su[0], pr.su[1], pr.sdt[0], pr.sdt[1], *pr.sz, s_dout[0], s_dout[1],
                *pr.sB[:3], *pr.sC[:3], *st, *ps[:4])

    kernel = scan_bwd_seq_kernel if seq else scan_bwd_kernel
    rows = p["n_blk"] * nsplit * bk
    par_w = dim * N + 2 * nsplit * dim      # sequential: one partial row holds dA, dD and delta_bias
    def probe():
        stand_in = dict(dA=torch.float32, dD=torch.float32, dbias=torch.float32, dW=torch.float32,
                        dB=varying.get("dB", torch.float32), dC=varying.get("dC", torch.float32),
                        carry=torch.float32, scratch=torch.float32, dtsum=torch.float32, s_cb=2 * dim * N)
        return args(stand_in, p["n_seg"], p["cps"])
    n_seg, cps = _segments(pr, 1, rows, kernel, probe, dict(common, MODE=0), dout.dtype)
    # as in _forward: only the carry into the end is read unwritten, and without a gradient of
    # the last state the kernels start from zeros there (ZERO_END)
    new = _uninit if seq else torch.zeros
    carry = new(bk, 2 * n_seg, dim, N, **f32)
    if dlast is not None:
        carry[:, (n_seg - 1) * 2 + (n_chunks - 1) % 2] = dlast.float()
    if seq:     # one buffer and, in _param_sums, one reduction for the three
        par = torch.empty(bk, n_seg, par_w, **f32)
        pars = dict(dA=par, dD=par[..., dim * N:], dbias=par[..., dim * N + nsplit * dim:])
    else:
        par = None
        pars = dict(dA=torch.empty(bk, n_seg, dim, N, **f32), dD=torch.empty(bk, n_seg * nsplit, dim, **f32),
                    dbias=torch.empty(bk, n_seg * nsplit, dim, **f32))
    b = dict(**pars,
             dW=torch.empty(bk, n_seg * nsplit, dim, pr.rank, **f32) if pr.W32 is not None else None,
             dB=varying.get("dB") if pr.B_vary else torch.empty(bk, n_seg, dim, N, **f32),
             dC=varying.get("dC") if pr.C_vary else torch.empty(bk, n_seg, dim, N, **f32),
             carry=carry, s_cb=carry.stride(0),
             scratch=torch.empty(bk * p["n_blk"] * nsplit * n_seg * per_prog, **f32) if seq else None,
             dtsum=torch.empty(bk, n_seg, dim, **f32) if seq else dtsum)
    grid = (p["n_blk"] * nsplit, bk, n_seg)

    def run_pass(mode, carry_buf):
        # the sequential summary pass (MODE 1) runs segments 1 .. n_seg - 1: the combine never reads segment 0's
        g = (grid[0], grid[1], n_seg - 1) if (seq and mode == 1) else grid
        launch(kernel, g, *args(dict(b, carry=carry_buf, s_cb=carry_buf.stride(0)), n_seg, cps), MODE=mode, **common)
    if n_seg > 1:
        loc = new(carry.shape, **f32)
        run_pass(1, loc)    # the sequential summary pass also writes the segments' dt sums into b["dtsum"]
        _combine(carry, loc, b["dtsum"], pr, n_seg, cps, False, reverse=True, zero_start=zero_end)
    run_pass(0, carry)
    if split:   # back to the dtypes of the unsplit kernel
        du = du if du_atomic else du.to(pr.u.dtype)
        ddelta = ddelta if pr.W32 is not None else ddelta.to(pr.delta.dtype)
        dz = dz.to(pr.z.dtype) if dz is not None else None
    return dict(du=du, ddelta=ddelta, dz=dz, dA=b["dA"], dD=b["dD"], dbias=b["dbias"], dB=b["dB"], dC=b["dC"],
                dW=b["dW"], carry=carry, par=par, nsplit=nsplit, dBC=dBC)


def _param_grad(buf, pr, shape, dtype):
    """Sum a (batch * K, segments, ...) partial buffer over batch and segments, per direction."""
    return buf.reshape(pr.b, pr.K, *buf.shape[1:]).sum((0, 2)).reshape(shape).to(dtype)


def _param_sums(g, pr):
    """(dA (K, dim, N), dD (K, dim), delta_bias (K, dim)), float32: the backward's partials
    summed over batch and segments; one reduction where they share a buffer (sequential)."""
    K, dim, N = pr.K, pr.dim, pr.N
    par = g["par"]
    if par is None:
        return tuple(_param_grad(g[k], pr, shape, torch.float32)
                     for k, shape in (("dA", (K, dim, N)), ("dD", (K, dim)), ("dbias", (K, dim))))
    ns = g["nsplit"]
    tot = par.view(pr.b, K, -1, par.shape[-1]).sum((0, 2))        # (K, dim * N + 2 * ns * dim)
    per_ch = tot[:, dim * N:].view(K, 2, ns, dim)
    per_ch = per_ch.sum(2) if ns > 1 else per_ch[:, :, 0]
    return tot[:, :dim * N].view(K, dim, N), per_ch[:, 0], per_ch[:, 1]


def _bc_grad(vary, buf, pr, X):
    if vary:   # one partial (the sequential kernels): no float32 sum copy before the cast
        return (buf[0] if buf.shape[0] == 1 else buf.sum(0)).to(X.dtype).reshape(X.shape)
    return _param_grad(buf, pr, X.shape, X.dtype)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, out_dtype, want_last):
        b, L, dim = u.shape
        u, delta = u.contiguous(), delta.contiguous()   # the kernels index u-shaped outputs like u
        z = z.contiguous() if z is not None else None
        B, C = _c(B), _c(C)
        if B.dim() == 4 and C.dim() == 4 and B.shape[2] != C.shape[2]:
            # B and C with different group counts: one channel per "group" for both
            B = B.repeat_interleave(dim // B.shape[2], 2)
            C = C.repeat_interleave(dim // C.shape[2], 2)
        A32 = A.float().contiguous()[None]
        D32 = D.float().contiguous()[None] if D is not None else None
        bias32 = delta_bias.float().contiguous()[None] if delta_bias is not None else None
        pr = _Problem(u, delta, A32, B, C, D32, z, bias32, softplus)
        save = any(ctx.needs_input_grad)   # (grad mode is always off inside Function.forward)
        out = torch.empty(b, L, dim, device=u.device, dtype=out_dtype)
        states, dtsum, last = _forward(pr, out, (out.stride(0), out.stride(1), 0),
                                       initial_state=initial_state, save=save)
        # the last state is a view of the saved states: returned (as a copy) only when asked for;
        # unused gradients stay None (no zeros from autograd, and ZERO_END in the kernels)
        last = last.clone() if want_last else None
        ctx.set_materialize_grads(False)
        if save:
            ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, states, dtsum)
            ctx.meta = (softplus, initial_state is not None, A.dtype,
                        None if D is None else D.dtype, None if delta_bias is None else delta_bias.dtype)
            ctx.plan = pr.p
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A32, B, C, D32, z, bias32, states, dtsum = ctx.saved_tensors
        softplus, has_init, A_dtype, D_dtype, bias_dtype = ctx.meta
        pr = _Problem(u, delta, A32, B, C, D32, z, bias32, softplus, plan=ctx.plan)
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        g = _backward(pr, states, dtsum, dout, (dout.stride(0), dout.stride(1), 0), dlast=dlast, merge_bc=True)
        nd = ctx.needs_input_grad
        dA, dD, dbias = _param_sums(g, pr)
        if g["dBC"] is not None and B.dtype == C.dtype:     # both in one cast
            dB, dC = g["dBC"].to(B.dtype).unbind(0)
        else:
            dB = _bc_grad(pr.B_vary, g["dB"], pr, B) if nd[3] else None
            dC = _bc_grad(pr.C_vary, g["dC"], pr, C) if nd[4] else None
        return (g["du"], g["ddelta"],
                dA[0].to(A_dtype) if nd[2] else None,
                dB if nd[3] else None,
                dC if nd[4] else None,
                dD[0].to(D_dtype) if (D32 is not None and nd[5]) else None,
                g["dz"],
                dbias[0].to(bias_dtype) if (bias32 is not None and nd[7]) else None,
                None,
                g["carry"][:, 1].clone() if (has_init and nd[9]) else None,
                None, None)


def selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, out_dtype,
                          return_last_state=True):
    """Canonical token-major arguments (see vscan.ops.selective_scan). Returns (out, last_state);
    last_state is None unless ``return_last_state``."""
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, out_dtype,
                                  return_last_state)
