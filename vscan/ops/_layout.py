"""Normalise the accepted input layouts of the selective scan to one canonical form.

Canonical (token-major) form: u, delta, z are (batch, length, channels); input-dependent
B and C are (batch, length, groups, N); constant B and C are (channels, N).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_finite, check_same_device, check_shape, check_tensor, describe

MAX_STATE = 256
LAYOUTS = ("bld", "bdl")


@dataclass
class ScanArgs:
    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    z: torch.Tensor | None
    delta_bias: torch.Tensor | None
    initial_state: torch.Tensor | None
    layout: str

    @property
    def batch(self):
        return self.u.shape[0]

    @property
    def length(self):
        return self.u.shape[1]

    @property
    def channels(self):
        return self.u.shape[2]

    @property
    def dstate(self):
        return self.A.shape[1]

    @property
    def B_varying(self):
        return self.B.dim() == 4

    @property
    def C_varying(self):
        return self.C.dim() == 4


def _bc(name, t, layout, b, L, d, N):
    check_tensor(name, t)
    if t.dim() == 2:
        check_shape(name, t, (d, N), "constant (channels, N)")
        return t
    if layout == "bld":
        if t.dim() == 3:
            t = t.unsqueeze(2)
        if t.dim() != 4 or t.shape[0] != b or t.shape[1] != L or t.shape[3] != N:
            raise ValueError(
                f"{name}: expected (channels, N)=({d}, {N}) constant, or (batch, length, N)=({b}, {L}, {N}) / "
                f"(batch, length, groups, N)=({b}, {L}, G, {N}) input-dependent, got {describe(t)}"
            )
    else:
        if t.dim() == 3:
            t = t.unsqueeze(1)
        if t.dim() != 4 or t.shape[0] != b or t.shape[2] != N or t.shape[3] != L:
            raise ValueError(
                f"{name}: expected (channels, N)=({d}, {N}) constant, or (batch, N, length)=({b}, {N}, {L}) / "
                f"(batch, groups, N, length)=({b}, G, {N}, {L}) input-dependent (layout='bdl'), got {describe(t)}"
            )
        t = t.permute(0, 3, 1, 2)
    G = t.shape[2]
    if G < 1 or d % G != 0:
        raise ValueError(f"{name}: the number of groups ({G}) must divide the number of channels ({d})")
    return t


def normalize_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                        layout: str = "bld") -> ScanArgs:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    check_tensor("u", u, rank=3)
    check_tensor("delta", delta, rank=3)
    if delta.shape != u.shape:
        raise ValueError(f"delta: expected the shape of u {tuple(u.shape)}, got {describe(delta)}")
    check_tensor("z", z, rank=3, optional=True)
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z: expected the shape of u {tuple(u.shape)}, got {describe(z)}")
    if layout == "bdl":
        u, delta = u.transpose(1, 2), delta.transpose(1, 2)
        z = z.transpose(1, 2) if z is not None else None
    b, L, d = u.shape
    check_tensor("A", A, rank=2)
    if A.shape[0] != d:
        raise ValueError(f"A: expected shape (channels, N) with channels={d}, got {describe(A)}")
    N = A.shape[1]
    if not 1 <= N <= MAX_STATE:
        raise ValueError(f"A: the state size N must be in [1, {MAX_STATE}], got N={N}")
    B = _bc("B", B, layout, b, L, d, N)
    C = _bc("C", C, layout, b, L, d, N)
    check_tensor("D", D, rank=1, optional=True)
    if D is not None:
        check_shape("D", D, (d,), "channels")
    check_tensor("delta_bias", delta_bias, rank=1, optional=True)
    if delta_bias is not None:
        check_shape("delta_bias", delta_bias, (d,), "channels")
    check_tensor("initial_state", initial_state, rank=3, optional=True)
    if initial_state is not None:
        check_shape("initial_state", initial_state, (b, d, N), "batch, channels, N")
    check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                      initial_state=initial_state)
    check_finite("A", A)
    return ScanArgs(u, delta, A, B, C, D, z, delta_bias, initial_state, layout)


def normalize_update_args(state, x, dt, A, B, C, D=None, z=None, dt_bias=None):
    """Checks for one decode step. state (b, d, N); x, dt, z (b, d); B, C (b, N) or (b, G, N)."""
    check_tensor("state", state, rank=3)
    b, d, N = state.shape
    check_tensor("x", x, rank=2)
    check_shape("x", x, (b, d), "batch, channels")
    check_tensor("dt", dt, rank=2)
    check_shape("dt", dt, (b, d), "batch, channels")
    check_tensor("A", A, rank=2)
    check_shape("A", A, (d, N), "channels, N")
    out = []
    for name, t in (("B", B), ("C", C)):
        check_tensor(name, t)
        if t.dim() == 2:
            t = t.unsqueeze(1)
        if t.dim() != 3 or t.shape[0] != b or t.shape[2] != N or d % t.shape[1] != 0:
            raise ValueError(f"{name}: expected (batch, N)=({b}, {N}) or (batch, groups, N) with groups "
                             f"dividing {d}, got {describe(t)}")
        out.append(t)
    B, C = out
    check_tensor("z", z, rank=2, optional=True)
    if z is not None:
        check_shape("z", z, (b, d), "batch, channels")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        check_tensor(name, t, rank=1, optional=True)
        if t is not None:
            check_shape(name, t, (d,), "channels")
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    check_finite("A", A)
    return state, x, dt, A, B, C, D, z, dt_bias
