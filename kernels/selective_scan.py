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
import os

import torch
import triton

from .scan_bwd import scan_bwd_kernel
from .scan_fwd import scan_fwd_kernel, segment_combine_kernel
from .scan_seq import scan_bwd_seq_kernel, scan_fwd_seq_kernel

SEQ_MAX_N = 32
# Chunked tiles: (BLOCK_T, BLOCK_D, num_warps) for forward and backward. Chosen on an H100, see
# tools/bench_scan.py; overridable with VSCAN_SCAN_TILES="T,D,W;T,D,W".
FWD_TILE = (64, 16, 2)
BWD_TILE = (32, 16, 2)
# Sequential: (BLOCK_T = chunk-state interval, num_warps, backward SUB, programs per SM);
# BLOCK_D = 32 * num_warps. Overridable with VSCAN_SCAN_SEQ="T,W,SUB,P[,BLOCK_D]" (a smaller
# BLOCK_D gives tests several channel blocks on tiny shapes).
SEQ_TILE = (64, 1, 8, 16)


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


def _seq_tile():
    env = os.environ.get("VSCAN_SCAN_SEQ")
    return tuple(map(int, env.split(","))) if env else SEQ_TILE


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _target_programs(device: torch.device, per_sm: int) -> int:
    env = os.environ.get("VSCAN_SCAN_TARGET_PROGRAMS")
    if env:
        return int(env)
    if device.type == "cuda":
        return per_sm * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 1


def _block_d(dim: int, ch_per_group: int, pref: int) -> tuple[int, bool]:
    """Largest power-of-two block <= pref that stays inside one group; else a general block
    whose dB/dC reduction uses atomics."""
    bd = min(pref, triton.next_power_of_2(dim))
    while bd > 4 and ch_per_group % bd:
        bd //= 2
    if ch_per_group % bd == 0:
        return bd, True
    return min(pref, triton.next_power_of_2(dim)), False


def _plan(L, dim, batch, N, ch_per_group, device):
    kind = _kernel_kind(N)
    if kind == "sequential":
        bt, warps, sub, per_sm, *bd_env = _seq_tile()
        bd_pref, bwarps = (bd_env[0] if bd_env else 32 * warps), warps
    else:
        (bt, bd_pref, warps), (_bbt, _bbd, bwarps) = _tiles()   # backward reuses the forward T and D
        sub, per_sm = 0, 8
    bt = min(bt, max(16, triton.next_power_of_2(L)))
    bd, single = _block_d(dim, ch_per_group, bd_pref)
    n_chunks = triton.cdiv(L, bt)
    n_blk = triton.cdiv(dim, bd)
    want = max(1, triton.cdiv(_target_programs(device, per_sm), n_blk * batch))
    n_seg = max(1, min(n_chunks, want))
    cps = triton.cdiv(n_chunks, n_seg)
    n_seg = triton.cdiv(n_chunks, cps)
    return dict(kind=kind, bt=bt, bd=bd, warps=warps, bwarps=bwarps, sub=min(sub, bt), single=single,
                bn=triton.next_power_of_2(N), n_chunks=n_chunks, n_blk=n_blk, n_seg=n_seg, cps=cps)


def _c(t):
    """B/C only need a unit stride over N (a slice of x_proj's output is fine)."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _bc_strides(X, vary):
    return (X.stride(0), X.stride(1), X.stride(2)) if vary else (0, 0, 0)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, out_dtype):
        b, L, dim = u.shape
        N = A.shape[1]
        u, delta = u.contiguous(), delta.contiguous()   # the kernels index u-shaped outputs like u
        z = z.contiguous() if z is not None else None
        B, C = _c(B), _c(C)
        A32 = A.float().contiguous()
        D32 = D.float().contiguous() if D is not None else None
        bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
        B_vary, C_vary = B.dim() == 4, C.dim() == 4
        G = B.shape[2] if B_vary else (C.shape[2] if C_vary else 1)
        if B_vary and C_vary and B.shape[2] != C.shape[2]:
            G = 0
        cpg = dim // G if G else 1
        if not G:  # B and C with different group counts: fall back to one channel per "group"
            G, cpg = dim, 1
            B = B.repeat_interleave(dim // B.shape[2], 2) if B_vary else B
            C = C.repeat_interleave(dim // C.shape[2], 2) if C_vary else C
        p = _plan(L, dim, b, N, cpg, u.device)
        seq = p["kind"] == "sequential"
        fwd_kernel = scan_fwd_seq_kernel if seq else scan_fwd_kernel
        save = torch.is_grad_enabled() or any(ctx.needs_input_grad)
        n_slots = p["n_chunks"] + 1 if save else 2 * p["n_seg"]
        states = torch.zeros(b, n_slots, dim, N, device=u.device, dtype=torch.float32)
        if initial_state is not None:
            states[:, 0] = initial_state.float()
        out = torch.empty(b, L, dim, device=u.device, dtype=out_dtype)
        dtsum = torch.empty(b, p["n_seg"], dim, device=u.device, dtype=torch.float32)
        grid = (p["n_blk"], b, p["n_seg"])
        sB, sC = _bc_strides(B, B_vary), _bc_strides(C, C_vary)
        common = dict(BLOCK_T=p["bt"], BLOCK_D=p["bd"], HAS_D=D is not None, HAS_Z=z is not None,
                      HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus), B_VARY=B_vary, C_VARY=C_vary,
                      SINGLE_GROUP=p["single"], num_warps=p["warps"])
        if seq:
            common.update(BLOCK_N=p["bn"], EVEN_N=p["bn"] == N, FAST_EXP=u.is_cuda)
        zz = z if z is not None else u
        args_tail = (L, dim, N, p["n_chunks"], p["cps"], p["n_seg"], cpg,
                     u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
                     out.stride(0), out.stride(1), *sB, *sC)
        dummy = A32
        if p["n_seg"] > 1:
            loc = torch.zeros(b, 2 * p["n_seg"], dim, N, device=u.device, dtype=torch.float32)
            fwd_kernel[grid](u, delta, A32, B, C, D32 if D32 is not None else dummy, zz,
                             bias32 if bias32 is not None else dummy, out, loc, dtsum, *args_tail,
                             loc.stride(0), loc.stride(1), MODE=1, SAVE_ALL=False, **common)
            blk = 256
            segment_combine_kernel[(triton.cdiv(dim * N, blk), b)](
                states, loc, dtsum, A32, dim, N, p["n_chunks"], p["cps"], p["n_seg"],
                states.stride(0), states.stride(1), loc.stride(0), loc.stride(1),
                BLOCK=blk, SAVE_ALL=save, REVERSE=False)
        fwd_kernel[grid](u, delta, A32, B, C, D32 if D32 is not None else dummy, zz,
                         bias32 if bias32 is not None else dummy, out, states, dtsum, *args_tail,
                         states.stride(0), states.stride(1), MODE=0, SAVE_ALL=save, **common)
        last = states[:, p["n_chunks"]] if save else states[:, (p["n_seg"] - 1) * 2 + p["n_chunks"] % 2]
        last = last.clone()
        if save:
            ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, states, dtsum)
            ctx.meta = (softplus, p, cpg, G, initial_state is not None, A.dtype,
                        None if D is None else D.dtype, None if delta_bias is None else delta_bias.dtype)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A32, B, C, D32, z, bias32, states, dtsum = ctx.saved_tensors
        softplus, p, cpg, G, has_init, A_dtype, D_dtype, bias_dtype = ctx.meta
        b, L, dim = u.shape
        N = A32.shape[1]
        B_vary, C_vary = B.dim() == 4, C.dim() == 4
        dout = dout.contiguous()
        n_seg, n_chunks, cps = p["n_seg"], p["n_chunks"], p["cps"]
        bt, bd, warps = p["bt"], p["bd"], p["bwarps"]
        seq = p["kind"] == "sequential"
        n_blk = p["n_blk"]
        dev = u.device
        carry = torch.zeros(b, 2 * n_seg, dim, N, device=dev, dtype=torch.float32)
        if dlast is not None:
            carry[:, (n_seg - 1) * 2 + (n_chunks - 1) % 2] = dlast.float()
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        f32 = dict(device=dev, dtype=torch.float32)
        dA = torch.empty(b, n_seg, dim, N, **f32)
        dD = torch.empty(b, n_seg, dim, **f32)
        dbias = torch.empty(b, n_seg, dim, **f32)
        blocks_per_group = max(1, cpg // bd) if p["single"] else 1

        def grad_buf(vary, X):
            if not vary:
                return torch.empty(b, n_seg, dim, N, **f32)
            if p["single"]:
                return torch.empty(blocks_per_group, b, L, X.shape[2], N, **f32)
            return torch.zeros(1, b, L, X.shape[2], N, **f32)
        dB, dC = grad_buf(B_vary, B), grad_buf(C_vary, C)
        pbuf = dB if B_vary else (dC if C_vary else dA)
        ps = (pbuf.stride(0), pbuf.stride(1), pbuf.stride(2), pbuf.stride(3)) if pbuf.dim() == 5 else (0, 0, 0, 0)
        if B_vary and C_vary:
            assert dB.stride() == dC.stride()
        sB, sC = _bc_strides(B, B_vary), _bc_strides(C, C_vary)
        zz = z if z is not None else u
        dummy = A32
        common = dict(BLOCK_T=bt, BLOCK_D=bd, BLOCK_N=p["bn"], HAS_D=D32 is not None,
                      HAS_Z=z is not None, HAS_BIAS=bias32 is not None, SOFTPLUS=bool(softplus),
                      B_VARY=B_vary, C_VARY=C_vary, SINGLE_GROUP=p["single"], num_warps=warps)
        grid = (n_blk, b, n_seg)
        if seq:
            common.update(SUB=p["sub"], EVEN_N=p["bn"] == N, FAST_EXP=u.is_cuda)
            scratch = torch.empty(b * n_blk * n_seg * (p["sub"] + bt // p["sub"]) * p["bn"] * bd, **f32)

        def launch(mode, carry_buf):
            kernel, extra = (scan_bwd_seq_kernel, (scratch,)) if seq else (scan_bwd_kernel, ())
            kernel[grid](
                u, delta, A32, B, C, D32 if D32 is not None else dummy, zz,
                bias32 if bias32 is not None else dummy, dout, states, carry_buf, *extra,
                du, ddelta, dz if dz is not None else du, dA, dD, dbias, dB, dC,
                L, dim, N, n_chunks, cps, n_seg, cpg, blocks_per_group,
                u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
                dout.stride(0), dout.stride(1), *sB, *sC,
                states.stride(0), states.stride(1), carry_buf.stride(0), carry_buf.stride(1), *ps,
                MODE=mode, **common)
        if n_seg > 1:
            loc = torch.zeros_like(carry)
            launch(1, loc)
            blk = 256
            segment_combine_kernel[(triton.cdiv(dim * N, blk), b)](
                carry, loc, dtsum, A32, dim, N, n_chunks, cps, n_seg,
                carry.stride(0), carry.stride(1), loc.stride(0), loc.stride(1),
                BLOCK=blk, SAVE_ALL=False, REVERSE=True)
        launch(0, carry)
        ndone = ctx.needs_input_grad
        dA_out = dA.sum((0, 1)).to(A_dtype) if ndone[2] else None

        def finish(vary, buf, X):
            if vary:
                return buf.sum(0).to(X.dtype).reshape(X.shape)
            return buf.sum((0, 1)).to(X.dtype)
        dB_out = finish(B_vary, dB, B) if ndone[3] else None
        dC_out = finish(C_vary, dC, C) if ndone[4] else None
        dD_out = dD.sum((0, 1)).to(D_dtype) if (D32 is not None and ndone[5]) else None
        dbias_out = dbias.sum((0, 1)).to(bias_dtype) if (bias32 is not None and ndone[7]) else None
        dinit = carry[:, 1].clone() if (has_init and ndone[9]) else None
        return du, ddelta, dA_out, dB_out, dC_out, dD_out, dz, dbias_out, None, dinit, None


def selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, out_dtype):
    """Canonical token-major arguments (see vscan.ops.selective_scan). Returns (out, last_state)."""
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, out_dtype)
