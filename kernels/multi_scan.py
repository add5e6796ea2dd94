"""Host side of the fused multi-direction scan: K scan orders of one grid in one launch.

The sequential scan kernels (scan_seq.py) run with the batch grid axis over (batch, direction)
pairs. Direction k reads its tokens through row k of the index map (one scalar load per step,
prefetched with the rest), uses its own A[k], D[k], delta_bias[k], and writes straight into
grid order: for merge 'sum' / 'mean' it adds into one float32 (batch, L, d) output with
atomics, for 'concat' it stores its slice of (batch, L, K, d). No permuted copy of u, delta,
B or C and no per-direction output is ever written. Backward mirrors this; when u is shared
by the directions its gradient is accumulated the same way.

The chunked kernels (N > SEQ_MAX_N) scan one direction at a time only: such calls return
None and ``vscan.ops.multi_scan`` takes the reference path.
"""
from __future__ import annotations

import torch

from .selective_scan import _backward, _bc_grad, _forward, _kernel_kind, _param_grad, _param_sums, _Problem


def _out_layout(merge, b, L, K, d, device, dtype):
    """Output buffer, its (batch, row, direction) strides and whether directions add atomically."""
    if merge == "concat":
        out = torch.empty(b, L, K, d, device=device, dtype=dtype)
        return out, (out.stride(0), out.stride(1), out.stride(2)), False
    out = torch.zeros(b, L, d, device=device, dtype=torch.float32)
    return out, (out.stride(0), out.stride(1), 0), True


class _MultiScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus, idx, merge, dt_weight):
        b, L = u.shape[:2]
        K, d, _ = A.shape
        u, delta = u.contiguous(), delta.contiguous()
        B, C = B.contiguous(), C.contiguous()
        A32 = A.float().contiguous()
        D32 = D.float().contiguous() if D is not None else None
        bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
        W32 = dt_weight.float().contiguous() if dt_weight is not None else None
        per_dir = u.dim() == 4
        pr = _Problem(u, delta, A32, B, C, D32, None, bias32, softplus, idx=idx, u_per_dir=per_dir,
                      bc_per_dir=True, W32=W32)
        save = any(ctx.needs_input_grad)   # (grad mode is always off inside Function.forward)
        out, s_out, atomic = _out_layout(merge, b, L, K, d, u.device, u.dtype)
        scale = 1.0 / K if merge == "mean" else 1.0
        states, dtsum, _ = _forward(pr, out, s_out, out_atomic=atomic, out_scale=scale, save=save)
        out = out.to(u.dtype)     # in here, so backward gets dout in u's dtype (half the bytes of float32)
        if save:
            ctx.save_for_backward(u, delta, A32, B, C, D32, bias32, idx, W32, states, dtsum)
            ctx.meta = (softplus, merge, A.dtype, None if D is None else D.dtype,
                        None if delta_bias is None else delta_bias.dtype,
                        None if dt_weight is None else dt_weight.dtype)
            ctx.plan = pr.p
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A32, B, C, D32, bias32, idx, W32, states, dtsum = ctx.saved_tensors
        softplus, merge, A_dtype, D_dtype, bias_dtype, W_dtype = ctx.meta
        per_dir = u.dim() == 4
        pr = _Problem(u, delta, A32, B, C, D32, None, bias32, softplus, idx=idx, u_per_dir=per_dir,
                      bc_per_dir=True, W32=W32, plan=ctx.plan)
        dout = dout.contiguous()
        if merge == "concat":
            s_dout, scale = (dout.stride(0), dout.stride(1), dout.stride(2)), 1.0
        else:
            s_dout, scale = (dout.stride(0), dout.stride(1), 0), (1.0 / pr.K if merge == "mean" else 1.0)
        g = _backward(pr, states, dtsum, dout, s_dout, dout_scale=scale, du_atomic=not per_dir)
        nd = ctx.needs_input_grad
        # each float32 buffer is dropped as soon as it is cast (pop), so the casts do not stack up:
        # at N = 16 the float32 du and dB / dC buffers alive beside their casts were the peak
        du = g.pop("du").to(u.dtype) if not per_dir else g.pop("du")
        ddelta = g.pop("ddelta").to(delta.dtype)
        dB = _bc_grad(True, g.pop("dB"), pr, B) if nd[3] else None
        dC = _bc_grad(True, g.pop("dC"), pr, C) if nd[4] else None
        dW = _param_grad(g["dW"], pr, W32.shape, W_dtype) if (W32 is not None and nd[10]) else None
        dA, dD, dbias = _param_sums(g, pr)
        return (du, ddelta,
                dA.to(A_dtype) if nd[2] else None,
                dB, dC,
                dD.to(D_dtype) if (D32 is not None and nd[5]) else None,
                dbias.to(bias_dtype) if (bias32 is not None and nd[6]) else None,
                None, None, None, dW)


def fused_supported(N: int) -> bool:
    """The fused path needs the sequential kernels (state size N <= SEQ_MAX_N, or not forced off)."""
    try:
        return _kernel_kind(N) == "sequential"
    except ValueError:          # VSCAN_SCAN_KERNEL=sequential with N > SEQ_MAX_N
        return False


def multi_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus, index, merge, dt_weight=None):
    """Canonical arguments of ``vscan.ops.multi_scan`` (already checked there). Returns the merged
    output in u's dtype (accumulated in float32), or None when the fused path
    does not cover the call (then the caller takes the reference path). With ``dt_weight``
    (K, d, R), ``delta`` is the low-rank dt (b, L, K, R) and dt_proj runs inside the kernels."""
    if not fused_supported(A.shape[-1]):
        return None
    idx = index.to(torch.int32).contiguous()
    return _MultiScanFn.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, idx, merge, dt_weight)
