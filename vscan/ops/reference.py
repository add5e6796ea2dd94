"""The PyTorch definition of vscan's operators. Every fast path is tested against these.

Math (per batch b, channel d, state n, step t), as in Mamba-1 / ``selective_scan_ref``:

    dt[t]  = softplus(delta[t] + delta_bias)  (or delta[t] + delta_bias)
    h[t]   = exp(dt[t] * A[d, n]) * h[t-1] + dt[t] * B[t, g(d), n] * u[t]
    y[t]   = sum_n C[t, g(d), n] * h[t] + D[d] * u[t]
    out[t] = y[t] * silu(z[t])                (when z is given)

g(d) = d // (channels / groups). State and accumulation are float32 (float64 when the
inputs are float64). The sequence is processed in chunks under activation
checkpointing, so memory holds one chunk of (batch, chunk, channels, N) at a time,
never the whole (batch, length, channels, N).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

REFERENCE_CHUNK = 256


def compute_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _expand_groups(X: torch.Tensor, d: int) -> torch.Tensor:
    """(b, T, G, N) -> (b, T, d, N): channel k reads group k // (d // G)."""
    G = X.shape[2]
    return X if G == d else X.repeat_interleave(d // G, dim=2)


def _scan_chunk(h, u, dt, A, B, C):
    """One chunk of the recurrence. h (b, d, N); u, dt (b, T, d); B, C (b, T, d, N) or (d, N)."""
    dA = torch.exp(dt.unsqueeze(-1) * A)                       # (b, T, d, N)
    dBu = (dt * u).unsqueeze(-1) * (B if B.dim() == 4 else B.unsqueeze(0).unsqueeze(0))
    # unbind once: per-step slicing would make backward quadratic in the chunk length
    dA_t, dBu_t = dA.unbind(1), dBu.unbind(1)
    hs = []
    for t in range(u.shape[1]):
        h = torch.addcmul(dBu_t[t], dA_t[t], h)
        hs.append(h)
    return (torch.stack(hs, dim=1) * C).sum(-1), h   # constant C (d, N) broadcasts


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, chunk_size: int = REFERENCE_CHUNK):
    """Canonical token-major inputs (see module docstring). Returns (out, last_state) in the
    compute dtype (float32, or float64 for float64 inputs)."""
    cdt = compute_dtype(u, delta, A)
    b, L, d = u.shape
    N = A.shape[1]
    uf, dtf = u.to(cdt), delta.to(cdt)
    if delta_bias is not None:
        dtf = dtf + delta_bias.to(cdt)
    if delta_softplus:
        dtf = F.softplus(dtf)  # threshold 20, as the CUDA kernel
    Af = A.to(cdt)
    Bf = B.to(cdt) if B.dim() == 2 else _expand_groups(B.to(cdt), d)
    Cf = C.to(cdt) if C.dim() == 2 else _expand_groups(C.to(cdt), d)
    h = (initial_state.to(cdt) if initial_state is not None
         else torch.zeros(b, d, N, dtype=cdt, device=u.device))
    if u.device.type == "meta":
        # meta tensors carry shapes only (timm builds and checks models there): skip the time loop
        y = uf * dtf
        return _finish(y, uf, D, z, cdt), h
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, delta_bias, initial_state))
    ys = []
    for s in range(0, L, chunk_size):
        e = min(L, s + chunk_size)
        Bc = Bf[:, s:e] if Bf.dim() == 4 else Bf
        Cc = Cf[:, s:e] if Cf.dim() == 4 else Cf
        if needs_grad and L > chunk_size:
            y, h = checkpoint(_scan_chunk, h, uf[:, s:e], dtf[:, s:e], Af, Bc, Cc, use_reentrant=False)
        else:
            y, h = _scan_chunk(h, uf[:, s:e], dtf[:, s:e], Af, Bc, Cc)
        ys.append(y)
    y = torch.cat(ys, dim=1) if ys else uf.new_zeros(b, 0, d)
    return _finish(y, uf, D, z, cdt), h


def _finish(y, uf, D, z, cdt):
    """The skip term D*u and the silu(z) gate."""
    if D is not None:
        y = y + uf * D.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step; updates ``state`` (b, d, N) in place and returns y (b, d) in x's dtype.
    B, C are (b, G, N)."""
    cdt = compute_dtype(state, x, A)
    d = x.shape[1]
    dtf = dt.to(cdt)
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(cdt)
    if dt_softplus:
        dtf = F.softplus(dtf)
    Bf = B.to(cdt).repeat_interleave(d // B.shape[1], dim=1)   # (b, d, N)
    Cf = C.to(cdt).repeat_interleave(d // C.shape[1], dim=1)
    xf = x.to(cdt)
    dA = torch.exp(dtf.unsqueeze(-1) * A.to(cdt))
    new = state.to(cdt) * dA + (dtf * xf).unsqueeze(-1) * Bf
    state.copy_(new.to(state.dtype))
    return _finish((new * Cf).sum(-1), xf, D, z, cdt).to(x.dtype)


def causal_conv1d_ref(x, weight, bias=None, activation=None, initial_state=None):
    """Depthwise causal conv over token-major x (b, L, d); weight (d, w). ``initial_state``
    (b, d, w-1) holds the w-1 inputs before the first step (zeros when None)."""
    b, L, d = x.shape
    w = weight.shape[1]
    xc = x.transpose(1, 2)
    if initial_state is None:
        xc = F.pad(xc, (w - 1, 0))
    else:
        xc = torch.cat([initial_state.to(x.dtype), xc], dim=2)
    y = F.conv1d(xc, weight.unsqueeze(1).to(x.dtype), bias.to(x.dtype) if bias is not None else None, groups=d)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    return y.transpose(1, 2)
