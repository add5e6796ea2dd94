"""Probability-field scan: a selective scan that carries a mean *and* a variance per state.

The layer is the diagonal linear-Gaussian state-space model (batch b, channel d, state n)::

    h[t,n] = exp(dt[t] A[n]) h[t-1,n] + dt[t] B[t,n] u[t] + w[t,n],
    w[t,n] ~ N(0, dt[t] B[t,n]^2 q[t]),   independent over t and n,
    y[t]   = sum_n C[t,n] h[t,n] + D u[t].

``q[t] >= 0`` is an input-dependent process-noise intensity per unit time: it is the variance
of white noise added to the input ``u`` and driven into every state through its own ``B``
(diagonal process noise). Both moments are closed-form scans:

* mean     ``m[t] = exp(dt A) m[t-1] + dt B u``      -> ``selective_scan(u, dt, A, B, C, D)``
* variance ``P[t] = exp(2 dt A) P[t-1] + dt B^2 q``  -> ``selective_scan(q, dt, 2A, B^2, C^2)``

i.e. the variance is the *same* operator with ``A -> 2A`` (the squared decay
``exp(dt A)^2``), ``B -> B^2`` and ``u -> q``, so that its ``dt * B * u`` input term is exactly
the process-noise variance ``dt B^2 q``; reading out with ``C^2`` gives
``Var y[t] = sum_n C^2 P[t,n]``, exact because the states are independent. An optional input
variance ``u_var`` (from an upstream probabilistic layer) enters as ``u -> q + dt u_var``
(``Var(dt B u) = dt^2 B^2 u_var``) plus ``D^2 u_var`` on the output; that part is the usual
assumed-density (mean-field) approximation: it ignores the covariance that one shared input
induces between states. A gate ``z`` multiplies the mean by ``silu(z)`` and the variance by
``silu(z)^2``.

On top: :class:`ProbScan` (a Mamba-style block returning ``(mean, variance)``),
:class:`GaussianHead` (per-pixel / per-voxel predictive mean and softplus-positive variance),
:func:`gaussian_nll` / :class:`GaussianNLLLoss`, :func:`coverage` (calibration), and
:class:`ProbFieldNet2d`, a small 2-D regression / denoising net that returns an uncertainty
field next to its prediction.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vscan.ops import causal_conv1d, selective_scan
from vscan.ops._checks import describe

from .mamba import MambaMixer, RMSNorm, init_conv_, init_dt_proj_, s4d_real_A_log

__all__ = ["prob_scan", "ProbScan", "GaussianHead", "gaussian_nll", "GaussianNLLLoss", "coverage",
           "ProbFieldNet2d"]


def _check_like(name: str, t, ref: torch.Tensor, optional: bool = True):
    if t is None:
        if optional:
            return None
        raise TypeError(f"{name}: expected a tensor, got None")
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {describe(t)}")
    if t.shape != ref.shape:
        raise ValueError(f"{name}: expected the shape of u {tuple(ref.shape)}, got {describe(t)}")
    return t


def _nonneg(name: str, t: torch.Tensor):
    if t is not None and t.device.type != "meta" and bool((t < 0).any()):
        raise ValueError(f"{name}: a variance / noise intensity must be >= 0, got a minimum of {float(t.min()):.4g}")


def _square_bc(X: torch.Tensor) -> torch.Tensor:
    return X * X


def prob_scan(u, delta, A, B, C, D=None, noise=None, u_var=None, z=None, delta_bias=None,
              delta_softplus: bool = False, initial_state=None, initial_var=None,
              return_last_state: bool = False):
    """Mean and variance of the diagonal linear-Gaussian scan (see the module docstring).

    Args:
        u, delta, z: (batch, length, channels) as in :func:`vscan.ops.selective_scan`.
        A: (channels, N), negative. B, C: (batch, length[, groups], N) or constant (channels, N).
        D, delta_bias: (channels,) or None.
        noise: (batch, length, channels) process-noise intensity q >= 0 (None = 0).
        u_var: (batch, length, channels) variance of the input u >= 0 (None = deterministic u).
        initial_state / initial_var: (batch, channels, N) mean / variance of h[-1] (zeros).
    Returns ``(mean, var)`` of y (batch, length, channels), and with ``return_last_state`` also
    ``(last_mean, last_var)`` of the state, each (batch, channels, N).
    """
    if not isinstance(u, torch.Tensor) or not u.is_floating_point() or u.dim() != 3:
        raise TypeError(f"u: expected a 3-D floating (batch, length, channels) tensor, got {describe(u)}")
    _check_like("delta", delta, u, optional=False)
    noise = _check_like("noise", noise, u)
    u_var = _check_like("u_var", u_var, u)
    z = _check_like("z", z, u)
    _nonneg("noise", noise)
    _nonneg("u_var", u_var)
    _nonneg("initial_var", initial_var)
    # the step size, computed once and shared by both moments
    dt = delta if delta_bias is None else delta + delta_bias
    if delta_softplus:
        dt = F.softplus(dt)
    mean, last_m = selective_scan(u, dt, A, B, C, D=D, initial_state=initial_state, return_last_state=True)
    q = noise if noise is not None else torch.zeros_like(u)
    if u_var is not None:
        q = q + dt * u_var
    B2 = _square_bc(B)
    C2 = _square_bc(C)
    var, last_v = selective_scan(q, dt, 2.0 * A, B2, C2, initial_state=initial_var, return_last_state=True)
    if u_var is not None and D is not None:
        var = var + (D * D) * u_var
    if z is not None:
        g = F.silu(z.to(mean.dtype))
        mean, var = mean * g, var * (g * g)
    return ((mean, var), (last_m, last_v)) if return_last_state else (mean, var)


class ProbScan(nn.Module):
    """Probability-field scan block: (batch, length, dim) -> (mean, variance), each (batch, length, dim).

    A Mamba-1 block (in-projection to ``x`` and gate ``z``, causal depthwise conv, selective
    dt/B/C, skip D, out-projection) whose scan is :func:`prob_scan`, with an input-dependent
    process noise ``q = softplus(noise_proj(x) + noise_bias)``. The variance passes the output
    projection ``W`` as ``W^2 var`` (channels treated as independent).
    """

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, d_conv: int = 4,
                 dt_rank: int | str = "auto", conv_bias: bool = True, bias: bool = False,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, noise_init: float = 1e-2,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim < 1 or d_state < 1:
            raise ValueError(f"dim, d_state: expected >= 1, got {dim}, {d_state}")
        if d_conv not in (0, 2, 3, 4):
            raise ValueError(f"d_conv: expected 0 (no conv) or a width in 2..4, got {d_conv}")
        if noise_init <= 0:
            raise ValueError(f"noise_init: expected > 0, got {noise_init!r}")
        self.dim, self.d_state, self.d_conv = dim, d_state, d_conv
        self.d_inner = max(int(expand * dim), 1)
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self._init = (dt_min, dt_max, noise_init)
        di = self.d_inner
        self.in_proj = nn.Linear(dim, 2 * di, bias=bias, **dd)
        if d_conv:
            self.conv_weight = nn.Parameter(torch.empty(di, d_conv, **dd))
            self.conv_bias = nn.Parameter(torch.zeros(di, **dd)) if conv_bias else None
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True, **dd)
        self.noise_proj = nn.Linear(di, di, bias=True, **dd)
        self.A_log = nn.Parameter(torch.empty(di, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.ones(di, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(di, dim, bias=bias, **dd)
        if device is None or torch.device(device).type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        dt_min, dt_max, noise_init = self._init
        if self.d_conv:
            init_conv_(self.conv_weight, self.conv_bias)
        init_dt_proj_(self.dt_proj.weight, self.dt_proj.bias, self.dt_rank, dt_min, dt_max)
        nn.init.zeros_(self.noise_proj.weight)
        self.noise_proj.bias.fill_(math.log(math.expm1(noise_init)))
        self.A_log.copy_(s4d_real_A_log(self.d_state, self.d_inner, device=self.A_log.device))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got {describe(x)}")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x: expected (batch, length, {self.dim}), got {describe(x)}")
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = causal_conv1d(xs, self.conv_weight, self.conv_bias, "silu") if self.d_conv else F.silu(xs)
        dt, B, C = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)
        q = F.softplus(self.noise_proj(xs))
        A = -torch.exp(self.A_log.float())
        mean, var = prob_scan(xs, dt, A, B.unsqueeze(2), C.unsqueeze(2), D=self.D, noise=q, z=z,
                              delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        mean = self.out_proj(mean.to(x.dtype))
        var = F.linear(var.to(x.dtype), self.out_proj.weight * self.out_proj.weight)
        return mean, var


class GaussianHead(nn.Module):
    """Per-token (per-pixel / per-voxel) predictive Gaussian from a (mean, variance) feature field.

    ``mean = W m + b``; ``var = W^2 v + softplus(W_s m + b_s) + min_var``: the feature variance
    propagated through the linear map plus a learned input-dependent (aleatoric) term; every
    part is >= 0 and ``min_var`` keeps the NLL finite. ``v`` may be None (deterministic features).
    Works on any (..., dim) layout; see :class:`ProbFieldNet2d` for the image layout.
    """

    def __init__(self, dim: int, out_chans: int = 1, min_var: float = 1e-4, init_var: float = 0.1):
        super().__init__()
        if min_var <= 0 or init_var <= 0:
            raise ValueError(f"min_var, init_var: expected > 0, got {min_var!r}, {init_var!r}")
        self.min_var = float(min_var)
        self.mean = nn.Linear(dim, out_chans)
        self.raw_var = nn.Linear(dim, out_chans)
        with torch.no_grad():
            self.raw_var.weight.mul_(0.1)
            self.raw_var.bias.fill_(math.log(math.expm1(init_var)))

    def forward(self, m: torch.Tensor, v: torch.Tensor | None = None):
        mean = self.mean(m)
        var = F.softplus(self.raw_var(m)) + self.min_var
        if v is not None:
            if v.shape != m.shape:
                raise ValueError(f"v: expected the shape of m {tuple(m.shape)}, got {describe(v)}")
            var = var + F.linear(v, self.mean.weight * self.mean.weight)
        return mean, var


def gaussian_nll(mean: torch.Tensor, var, target: torch.Tensor, reduction: str = "mean",
                 eps: float = 1e-6, full: bool = True) -> torch.Tensor:
    """Gaussian negative log-likelihood ``0.5 (log var + (target - mean)^2 / var) [+ 0.5 log 2 pi]``.

    Wraps :func:`torch.nn.functional.gaussian_nll_loss` (``full=True`` by default, so values are
    true NLLs in nats and comparable across models). ``var`` is a tensor of the target's shape or
    broadcastable to it, or a number (a fixed variance)."""
    for nm, t in (("mean", mean), ("target", target)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{nm}: expected a floating-point tensor, got {describe(t)}")
    if mean.shape != target.shape:
        raise ValueError(f"mean: expected the shape of target {tuple(target.shape)}, got {describe(mean)}")
    if not isinstance(var, torch.Tensor):
        if isinstance(var, bool) or not isinstance(var, (int, float)):
            raise TypeError(f"var: expected a tensor or a number, got {describe(var)}")
        var = torch.tensor(float(var), dtype=mean.dtype, device=mean.device)
    try:
        var = var.expand_as(target)
    except RuntimeError:
        raise ValueError(f"var: expected a shape broadcastable to {tuple(target.shape)}, got {describe(var)}") from None
    _nonneg("var", var)
    return F.gaussian_nll_loss(mean, target, var, full=full, eps=eps, reduction=reduction)


class GaussianNLLLoss(nn.Module):
    """Module form of :func:`gaussian_nll`: ``loss(mean, var, target)``."""

    def __init__(self, reduction: str = "mean", eps: float = 1e-6, full: bool = True):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction, self.eps, self.full = reduction, eps, full

    def forward(self, mean, var, target):
        return gaussian_nll(mean, var, target, self.reduction, self.eps, self.full)


@torch.no_grad()
def coverage(mean: torch.Tensor, var, target: torch.Tensor, sigmas=(1.0, 2.0)) -> dict:
    """Fraction of targets within ``k`` predicted standard deviations of the mean, per ``k``.
    A calibrated Gaussian gives about 0.683 (1 sigma) and 0.954 (2 sigma)."""
    if mean.shape != target.shape:
        raise ValueError(f"mean: expected the shape of target {tuple(target.shape)}, got {describe(mean)}")
    var = torch.as_tensor(var, dtype=mean.dtype, device=mean.device).expand_as(target)
    z = (target - mean).abs() / var.clamp_min(0).sqrt()
    return {float(k): float((z <= k).float().mean()) for k in sigmas}


class _BiMamba(nn.Module):
    """Pre-norm residual block scanning the token sequence forwards and backwards."""

    def __init__(self, dim, d_state, expand):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.fwd = MambaMixer(dim, d_state=d_state, expand=expand)
        self.bwd = MambaMixer(dim, d_state=d_state, expand=expand)

    def forward(self, x):
        h = self.norm(x)
        return x + self.fwd(h) + self.bwd(h.flip(1)).flip(1)


class _BiProbScan(nn.Module):
    """Residual probability-field block over both scan directions (independent: variances add)."""

    def __init__(self, dim, d_state, expand, noise_init):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.fwd = ProbScan(dim, d_state=d_state, expand=expand, noise_init=noise_init)
        self.bwd = ProbScan(dim, d_state=d_state, expand=expand, noise_init=noise_init)

    def forward(self, x):
        h = self.norm(x)
        mf, vf = self.fwd(h)
        mb, vb = self.bwd(h.flip(1))
        return x + mf + mb.flip(1), vf + vb.flip(1)


class ProbFieldNet2d(nn.Module):
    """Small 2-D regression / denoising net: image (b, in_chans, H, W) -> (mean, var), each
    (b, out_chans, H, W).

    conv stem -> ``depth`` bidirectional Mamba blocks over the raster token order -> one
    bidirectional :class:`ProbScan` block -> :class:`GaussianHead`. With
    ``probabilistic=False`` the last block is a plain Mamba block, the head predicts the mean
    only and the variance is the constant buffer ``fixed_var`` (set it with
    :meth:`set_fixed_variance`, e.g. to the training MSE): the deterministic baseline.
    """

    def __init__(self, in_chans: int = 1, out_chans: int = 1, dim: int = 32, depth: int = 1,
                 d_state: int = 8, expand: float = 1.0, stem_kernel: int = 3, min_var: float = 1e-4,
                 noise_init: float = 1e-2, probabilistic: bool = True):
        super().__init__()
        if stem_kernel < 1 or stem_kernel % 2 == 0:
            raise ValueError(f"stem_kernel: expected an odd int >= 1, got {stem_kernel}")
        self.in_chans, self.out_chans, self.probabilistic = in_chans, out_chans, bool(probabilistic)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dim, stem_kernel, padding=stem_kernel // 2), nn.GELU(),
                                  nn.Conv2d(dim, dim, stem_kernel, padding=stem_kernel // 2))
        self.blocks = nn.ModuleList(_BiMamba(dim, d_state, expand) for _ in range(depth))
        if self.probabilistic:
            self.last = _BiProbScan(dim, d_state, expand, noise_init)
            self.head = GaussianHead(dim, out_chans, min_var=min_var)
        else:
            self.last = _BiMamba(dim, d_state, expand)
            self.head = nn.Linear(dim, out_chans)
        self.norm = RMSNorm(dim)
        self.register_buffer("fixed_var", torch.tensor(1.0))

    @torch.no_grad()
    def set_fixed_variance(self, value: float):
        if not value > 0:
            raise ValueError(f"value: expected a variance > 0, got {value!r}")
        self.fixed_var.fill_(float(value))

    def forward(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point image tensor, got {describe(x)}")
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x: expected (batch, {self.in_chans}, H, W), got {describe(x)}")
        b, _, H, W = x.shape
        t = self.stem(x).flatten(2).transpose(1, 2)            # (b, H*W, dim), raster order
        for blk in self.blocks:
            t = blk(t)
        if self.probabilistic:
            m, v = self.last(t)
            # RMSNorm with its per-token scale taken as deterministic: m -> s m, v -> s^2 v
            s = torch.rsqrt(m.pow(2).mean(-1, keepdim=True) + self.norm.eps) * self.norm.weight
            mean, var = self.head(m * s, v * (s * s))
        else:
            mean = self.head(self.norm(self.last(t)))
            var = self.fixed_var.to(mean.dtype).expand_as(mean)

        def to_img(y):
            return y.transpose(1, 2).reshape(b, self.out_chans, H, W)
        return to_img(mean), to_img(var)
