"""The Mamba-1 mixer (in-projection, causal depthwise conv, selective scan, gate, out-projection)
with a constant-size recurrent cache for generation."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vscan.ops import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update

from .registry import register_mixer


@dataclass
class MambaState:
    """Recurrent cache of one Mamba layer: its size does not depend on the sequence length."""
    conv: torch.Tensor   # (batch, d_inner, d_conv - 1)
    ssm: torch.Tensor    # (batch, d_inner, d_state), float32

    def nbytes(self) -> int:
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * self.ssm.element_size()


def init_dt_bias(d_inner: int, dt_min=1e-3, dt_max=1e-1, dt_floor=1e-4, device=None) -> torch.Tensor:
    """Inverse-softplus of dt drawn log-uniformly in [dt_min, dt_max] (Mamba's init)."""
    dt = torch.exp(torch.rand(d_inner, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_floor)
    return dt + torch.log(-torch.expm1(-dt))


def s4d_real_A_log(d_state: int, *rows: int, device=None) -> torch.Tensor:
    """log(1..N) broadcast to (*rows, N): A = -exp(A_log) = -(1..N), Mamba's S4D-real init."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32, device=device)).expand(*rows, d_state)


@torch.no_grad()
def init_dt_proj_(weight: torch.Tensor, bias: torch.Tensor, dt_rank: int, dt_min: float = 1e-3,
                  dt_max: float = 1e-1, dt_floor: float = 1e-4, scale: float = 1.0) -> None:
    """Mamba's dt projection: weight uniform in +-scale/sqrt(rank), bias the inverse softplus
    of a log-uniform dt (any bias shape, e.g. stacked per direction)."""
    std = dt_rank ** -0.5 * scale
    nn.init.uniform_(weight, -std, std)
    bias.copy_(init_dt_bias(bias.numel(), dt_min, dt_max, dt_floor, device=bias.device).view_as(bias))


@torch.no_grad()
def init_conv_(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """The depthwise short conv: nn.Conv1d's default weight init, zero bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bias.zero_()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


@register_mixer("mamba")
class MambaMixer(nn.Module):
    """Mamba-1 block mixer on token-major (batch, length, d_model) input.

    ``bcdt_norm=True`` adds RMSNorm on dt, B and C inside the mixer (Jamba).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2.0,
                 dt_rank: int | str = "auto", conv_bias: bool = True, bias: bool = False,
                 bcdt_norm: bool = False, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **dd)
        self.conv_weight = nn.Parameter(torch.empty(self.d_inner, d_conv, **dd))
        self.conv_bias = nn.Parameter(torch.zeros(self.d_inner, **dd)) if conv_bias else None
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **dd)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **dd)
        self.bcdt_norm = bcdt_norm
        if bcdt_norm:
            self.dt_norm = RMSNorm(self.dt_rank, **dd)
            self.B_norm = RMSNorm(d_state, **dd)
            self.C_norm = RMSNorm(d_state, **dd)
        self._dt_range = (dt_min, dt_max)
        if device is None or torch.device(device).type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        init_conv_(self.conv_weight, self.conv_bias)
        init_dt_proj_(self.dt_proj.weight, self.dt_proj.bias, self.dt_rank, *self._dt_range)
        self.A_log.copy_(s4d_real_A_log(self.d_state, self.d_inner, device=self.A_log.device))
        self.D.fill_(1.0)

    def _ssm_params(self, x):
        """x (..., d_inner) -> dt (..., d_inner) pre-bias, B, C (..., N)."""
        dbc = self.x_proj(x)
        dt, B, C = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.bcdt_norm:
            dt, B, C = self.dt_norm(dt), self.B_norm(B), self.C_norm(C)
        return F.linear(dt, self.dt_proj.weight), B, C

    def allocate_state(self, batch: int, device=None, dtype=None) -> MambaState:
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return MambaState(torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                          torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32))

    def forward(self, x: torch.Tensor, state: MambaState | None = None) -> torch.Tensor:
        """x (batch, length, d_model). With ``state``, the sequence continues from it and the
        state is advanced in place (a length-1 input takes the single-step decode path)."""
        if state is not None and x.shape[1] == 1:
            return self.step(x[:, 0], state).unsqueeze(1)
        xz = self.in_proj(x)
        xs, z = xz.chunk(2, dim=-1)
        conv_init = state.conv if state is not None else None
        xc = causal_conv1d(xs, self.conv_weight, self.conv_bias, "silu", initial_state=conv_init)
        dt, B, C = self._ssm_params(xc)
        A = -torch.exp(self.A_log.float())
        y, last = selective_scan(xc, dt, A, B.unsqueeze(2), C.unsqueeze(2), self.D, z=z,
                                 delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                                 initial_state=state.ssm if state is not None else None,
                                 return_last_state=True)
        if state is not None:
            w = self.d_conv - 1
            hist = torch.cat([state.conv, xs.transpose(1, 2).to(state.conv.dtype)], dim=2)
            state.conv.copy_(hist[..., -w:])
            state.ssm.copy_(last)
        return self.out_proj(y)

    def step(self, x: torch.Tensor, state: MambaState) -> torch.Tensor:
        """One token: x (batch, d_model) -> (batch, d_model); advances ``state`` in place."""
        xz = self.in_proj(x)
        xs, z = xz.chunk(2, dim=-1)
        xc = causal_conv1d_update(xs, state.conv, self.conv_weight, self.conv_bias, "silu")
        dt, B, C = self._ssm_params(xc)
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(state.ssm, xc, dt, A, B, C, self.D, z=z,
                                   dt_bias=self.dt_proj.bias.float(), dt_softplus=True)
        return self.out_proj(y)
