"""Synthetic tasks for the liquid and probability-field layers; generated here from fixed seeds.

* :func:`spiral_series` -- irregularly sampled trajectories of a known linear ODE (a damped
  2-D spiral / oscillator with per-trajectory frequency and damping), observed at random times
  with noise, with hidden points inside the observed window (interpolation) and a held-out
  window after it (extrapolation).
* :func:`heteroscedastic_fields` -- 2-D regression whose target noise level varies per pixel
  with the (unseen) clean signal, for testing predictive variances and their calibration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["IrregularSeries", "spiral_solution", "spiral_series", "heteroscedastic_fields",
           "OBSERVED", "INTERP", "EXTRAP"]

OBSERVED, INTERP, EXTRAP = 0, 1, 2


def spiral_solution(z0: torch.Tensor, omega: torch.Tensor, alpha: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Closed-form solution of ``dz/dt = [[-alpha, omega], [-omega, -alpha]] z``.

    z0 (n, 2), omega / alpha (n,), t (n, L) -> z(t) (n, L, 2) = exp(-alpha t) R(-omega t) z0."""
    c, s = torch.cos(omega[:, None] * t), torch.sin(omega[:, None] * t)
    decay = torch.exp(-alpha[:, None] * t)
    x = decay * (c * z0[:, None, 0] + s * z0[:, None, 1])
    y = decay * (-s * z0[:, None, 0] + c * z0[:, None, 1])
    return torch.stack([x, y], dim=-1)


@dataclass
class IrregularSeries:
    """A batch of irregularly sampled trajectories; all tensors are (n, length[, ...]).

    ``times``: sample times, increasing; ``gaps``: time since the previous sample (the first one:
    since t=0); ``values``: the clean state (n, L, 2) (the prediction target);
    ``observed``: noisy observations, 0 where hidden; ``mask``: 1 where observed;
    ``split``: OBSERVED / INTERP (hidden inside the observed window) / EXTRAP (after it).
    """
    times: torch.Tensor
    gaps: torch.Tensor
    values: torch.Tensor
    observed: torch.Tensor
    mask: torch.Tensor
    split: torch.Tensor
    omega: torch.Tensor
    alpha: torch.Tensor

    def __len__(self):
        return self.times.shape[0]

    @property
    def n_features(self) -> int:
        return self.inputs().shape[-1]

    def inputs(self) -> torch.Tensor:
        """Model input per step: [observation (2), observed flag, time gap] -> (n, L, 4)."""
        return torch.cat([self.observed, self.mask.unsqueeze(-1), self.gaps.unsqueeze(-1)], dim=-1)

    def subset(self, idx) -> "IrregularSeries":
        return IrregularSeries(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def spiral_series(n: int, n_obs: int = 48, n_extrap: int = 16, t_obs: float = 10.0, t_end: float = 14.0,
                  hide_frac: float = 0.25, noise: float = 0.02, omega_range=(1.0, 2.5),
                  alpha_range=(0.05, 0.3), radius_range=(0.5, 1.5), seed: int = 0,
                  dtype=torch.float32) -> IrregularSeries:
    """Damped spirals observed at random times.

    Each trajectory draws frequency ``omega``, damping ``alpha`` and a start point on a ring; its
    ``n_obs`` times are uniform in (0, t_obs) (sorted) and ``n_extrap`` more in (t_obs, t_end).
    A fraction ``hide_frac`` of the first window is hidden (INTERP), the second window is hidden
    entirely (EXTRAP). Observations carry Gaussian noise of std ``noise``; targets are clean.
    """
    if n < 1 or n_obs < 2 or n_extrap < 0:
        raise ValueError(f"n, n_obs, n_extrap: expected n >= 1, n_obs >= 2, n_extrap >= 0, got {n}, {n_obs}, {n_extrap}")
    if t_obs <= 0 or (n_extrap > 0 and t_end <= t_obs):
        raise ValueError(f"t_obs, t_end: expected 0 < t_obs < t_end, got {t_obs}, {t_end}")
    if not 0.0 <= hide_frac < 1.0:
        raise ValueError(f"hide_frac: expected a fraction in [0, 1), got {hide_frac}")
    g = torch.Generator().manual_seed(seed)

    def uni(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    omega = uni(*omega_range, n)
    alpha = uni(*alpha_range, n)
    phase = uni(0.0, 2 * math.pi, n)
    radius = uni(*radius_range, n)
    z0 = torch.stack([radius * torch.cos(phase), radius * torch.sin(phase)], dim=-1)
    t1 = torch.sort(uni(0.0, t_obs, n, n_obs), dim=1).values
    t2 = torch.sort(uni(t_obs, t_end, n, n_extrap), dim=1).values
    times = torch.cat([t1, t2], dim=1)
    gaps = torch.diff(times, dim=1, prepend=torch.zeros(n, 1, dtype=torch.float64))
    values = spiral_solution(z0, omega, alpha, times)
    split = torch.full((n, n_obs + n_extrap), OBSERVED, dtype=torch.long)
    n_hide = int(round(hide_frac * n_obs))
    if n_hide:
        # never hide the first two samples: the model needs a start
        hide = torch.argsort(torch.rand(n, n_obs - 2, generator=g), dim=1)[:, :n_hide] + 2
        split[:, :n_obs].scatter_(1, hide, INTERP)
    split[:, n_obs:] = EXTRAP
    mask = (split == OBSERVED).to(torch.float64)
    observed = (values + noise * torch.randn(values.shape, generator=g, dtype=torch.float64)) * mask.unsqueeze(-1)
    cast = dict(dtype=dtype)
    return IrregularSeries(times.to(**cast), gaps.to(**cast), values.to(**cast), observed.to(**cast),
                           mask.to(**cast), split, omega.to(**cast), alpha.to(**cast))


def _smooth_fields(n: int, size: int, g: torch.Generator, n_bumps: int = 4) -> torch.Tensor:
    """Random smooth fields (n, size, size): Gaussian bumps of random sign plus a plane wave."""
    coords = torch.linspace(0.0, 1.0, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    c = torch.zeros(n, size, size, dtype=torch.float64)
    for _ in range(n_bumps):
        cx = torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
        cy = torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
        w = 0.08 + 0.17 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
        amp = 2.0 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64) - 1.0
        c = c + 1.5 * amp * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * w * w))
    k = 2 * math.pi * (0.5 + 1.5 * torch.rand(n, 2, 1, 1, generator=g, dtype=torch.float64))
    ph = 2 * math.pi * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    return c + 0.3 * torch.sin(k[:, 0] * xx + k[:, 1] * yy + ph)


def heteroscedastic_fields(n: int, size: int = 16, input_noise: float = 0.05, sigma_min: float = 0.05,
                           sigma_max: float = 0.6, seed: int = 0, dtype=torch.float32) -> dict:
    """Heteroscedastic 2-D regression / denoising.

    A clean smooth field ``c`` (n, 1, size, size) is seen through mild homoscedastic sensor
    noise: ``x = c + input_noise * eps1``. The target is ``y = c + sigma(c) * eps2`` with
    ``sigma(c) = sigma_min + (sigma_max - sigma_min) * sigmoid(3 c)``: bright regions are noisy,
    dark regions clean, so a calibrated model must predict a per-pixel variance.

    Returns a dict with ``x``, ``y``, ``mean`` (= c, the noise-free target) and ``sigma``.
    """
    if n < 1 or size < 2:
        raise ValueError(f"n, size: expected n >= 1 and size >= 2, got {n}, {size}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"sigma_min, sigma_max: expected 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if input_noise < 0:
        raise ValueError(f"input_noise: expected >= 0, got {input_noise}")
    g = torch.Generator().manual_seed(seed)
    c = _smooth_fields(n, size, g).unsqueeze(1)
    sigma = sigma_min + (sigma_max - sigma_min) * torch.sigmoid(3.0 * c)
    x = c + input_noise * torch.randn(c.shape, generator=g, dtype=torch.float64)
    y = c + sigma * torch.randn(c.shape, generator=g, dtype=torch.float64)
    return {k: v.to(dtype) for k, v in dict(x=x, y=y, mean=c, sigma=sigma).items()}
