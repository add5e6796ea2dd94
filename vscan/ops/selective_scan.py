"""``selective_scan``: the Mamba-1 (S6) selective scan, one semantics, two back ends."""
from __future__ import annotations

import torch

from ._layout import normalize_scan_args
from .backend import choose_backend
from .reference import compute_dtype, selective_scan_ref


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_last_state=False, layout: str = "bld",
                   out_dtype: torch.dtype | None = None, backend: str | None = None):
    """Selective scan over a sequence (superset of ``mamba_ssm.selective_scan_fn``).

    Args:
        u, delta, z: (batch, length, channels) with ``layout='bld'`` (default, token-major),
            or (batch, channels, length) with ``layout='bdl'`` (mamba_ssm's layout).
        A: (channels, N) float32, N <= 256. Usually negative (``-exp(A_log)``).
        B, C: input-dependent (batch, length, groups, N) [bld] / (batch, groups, N, length) [bdl]
            (a missing groups axis means one group), or constant (channels, N).
        D, delta_bias: (channels,) float32 or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        initial_state: (batch, channels, N) or None (zeros).
        return_last_state: also return the final state (batch, channels, N), float32.
        out_dtype: output dtype; default u's dtype (``torch.float32`` keeps full precision).
        backend: override the ``VSCAN_BACKEND`` choice for this call.

    Returns ``out`` in u's layout, or ``(out, last_state)``. Every tensor input gets gradients.
    """
    a = normalize_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, layout)
    out_dtype = out_dtype or u.dtype
    f64 = compute_dtype(a.u, a.delta, a.A) == torch.float64
    if choose_backend(a.u.device, f64, backend) == "triton":
        from vscan.kernels.selective_scan import selective_scan_triton
        out, last = selective_scan_triton(a.u, a.delta, a.A, a.B, a.C, a.D, a.z, a.delta_bias,
                                          delta_softplus, a.initial_state, out_dtype, return_last_state)
    else:
        out, last = selective_scan_ref(a.u, a.delta, a.A, a.B, a.C, a.D, a.z, a.delta_bias,
                                       delta_softplus, a.initial_state)
        out = out.to(out_dtype)
    if layout == "bdl":
        out = out.transpose(1, 2)
    return (out, last) if return_last_state else out
