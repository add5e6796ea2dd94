"""``selective_state_update``: one recurrent step of the selective scan, for generation."""
from __future__ import annotations

import torch

from ._layout import normalize_update_args
from .backend import choose_backend
from .reference import selective_state_update_ref


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           backend: str | None = None):
    """Advance ``state`` (batch, channels, N) by one token in place and return y (batch, channels).

    x, dt, z: (batch, channels); A: (channels, N); B, C: (batch, N) or (batch, groups, N);
    D, dt_bias: (channels,). Equal to one step of :func:`selective_scan` with the same arguments.
    """
    state, x, dt, A, B, C, D, z, dt_bias = normalize_update_args(state, x, dt, A, B, C, D, z, dt_bias)
    f64 = torch.float64 in (state.dtype, x.dtype, A.dtype)
    if choose_backend(x.device, f64, backend) == "triton" and state.dtype == torch.float32:
        from vscan.kernels.state_update import selective_state_update_triton
        return selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
