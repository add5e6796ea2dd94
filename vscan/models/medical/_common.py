"""Helpers shared by the MONAI networks: the MONAI import guard, argument checks that raise
``ValueError`` naming the fix, padding to the total stride, and the channel-first Mamba layer.

Nothing here imports MONAI at module import time; :func:`require_monai` does, when a network
is built.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

MONAI_HINT = "vscan's medical networks need MONAI: pip install 'vscan[medical]' (monai>=1.4, nibabel)"


def require_monai():
    """Import and return ``monai``; a clear ImportError when it is missing."""
    try:
        import monai  # noqa: F401
        import monai.networks.blocks  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{MONAI_HINT} ({e})") from e
    return monai


# ----------------------------------------------------------------------------- argument checks
def check_spatial_dims(spatial_dims, name: str, allowed=(2, 3)) -> int:
    if isinstance(spatial_dims, bool) or spatial_dims not in allowed:
        raise ValueError(f"{name}: spatial_dims must be one of {allowed}, got {spatial_dims!r}")
    return int(spatial_dims)


def check_positive_int(value, arg: str, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {arg} must be an int >= {minimum}, got {value!r}")
    return value


def resolve_features(features, feature_size, num_stages, max_features, name: str) -> tuple[int, ...]:
    """``features`` (explicit widths per stage) wins; otherwise ``feature_size * 2**i`` capped at
    ``max_features`` for ``num_stages`` stages."""
    if features is None:
        check_positive_int(feature_size, "feature_size", name)
        check_positive_int(num_stages, "num_stages", name, minimum=2)
        check_positive_int(max_features, "max_features", name)
        return tuple(min(feature_size * 2 ** i, max_features) for i in range(num_stages))
    try:
        feats = tuple(features)
    except TypeError:
        raise ValueError(f"{name}: features must be a sequence of channel counts, got {features!r}") from None
    if len(feats) < 2 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in feats):
        raise ValueError(f"{name}: features must hold at least 2 positive ints (one per stage), got {features!r}")
    return feats


class NetArgs(NamedTuple):
    """What :func:`check_net_args` hands back to a network's constructor."""
    name: str                   # the network's class name, used in every error message
    spatial_dims: int
    in_channels: int
    out_channels: int
    features: tuple[int, ...]   # channels per stage


def check_net_args(net: nn.Module, spatial_dims, in_channels, out_channels, features, feature_size, num_stages,
                   max_features) -> NetArgs:
    """The constructor prologue of the stage-based MONAI networks: ensure MONAI is importable,
    check ``spatial_dims`` and ``in_channels`` / ``out_channels`` and resolve the per-stage widths
    (:func:`resolve_features`). Errors name ``type(net).__name__``, the argument, what was
    expected and what was given."""
    name = type(net).__name__
    require_monai()
    return NetArgs(name=name,
                   spatial_dims=check_spatial_dims(spatial_dims, name),
                   in_channels=check_positive_int(in_channels, "in_channels", name),
                   out_channels=check_positive_int(out_channels, "out_channels", name),
                   features=resolve_features(features, feature_size, num_stages, max_features, name))


def per_stage(value, n: int, arg: str, name: str) -> list:
    """One int for every stage, or a sequence with exactly one entry per stage (each entry an
    int or a per-axis tuple)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * n
    try:
        vals = list(value)
    except TypeError:
        raise ValueError(f"{name}: {arg} must be an int or a sequence with one entry per stage, got {value!r}") from None
    if len(vals) != n:
        raise ValueError(f"{name}: {arg} needs one entry per stage ({n} stages), got {len(vals)}: {value!r}")
    return vals


def as_tuple(v, spatial_dims: int, arg: str, name: str, minimum: int = 1) -> tuple[int, ...]:
    """An int or a per-axis sequence -> a tuple of ``spatial_dims`` ints >= ``minimum``."""
    t = (v,) * spatial_dims if isinstance(v, int) and not isinstance(v, bool) else tuple(v) \
        if isinstance(v, (tuple, list)) else None
    if t is None or len(t) != spatial_dims or any(isinstance(i, bool) or not isinstance(i, int) or i < minimum
                                                   for i in t):
        raise ValueError(f"{name}: {arg} entries must be an int >= {minimum} or {spatial_dims} such ints, got {v!r}")
    return t


def check_dropout(dropout, name: str):
    """None, a float in [0, 1), or a MONAI (name, kwargs) tuple."""
    if dropout is None or isinstance(dropout, (tuple, str)):
        return dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{name}: dropout must be None or a float in [0, 1), got {dropout!r}")
    return float(dropout) if dropout else None


def check_norm_act(norm_name, act, spatial_dims: int, channels: Sequence[int], name: str):
    """Build the MONAI norm / activation once, turning MONAI's KeyError / TypeError into a ValueError."""
    from monai.networks.layers.utils import get_act_layer, get_norm_layer
    for c in sorted(set(channels)):
        try:
            get_norm_layer(name=norm_name, spatial_dims=spatial_dims, channels=c)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{name}: norm_name {norm_name!r} does not build a norm for {c} channels: {e} "
                             f"(use a MONAI name such as 'instance', 'batch', ('group', {{'num_groups': 8}}))"
                             ) from None
    try:
        get_act_layer(act)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{name}: act {act!r} is not a MONAI activation: {e} "
                         f"(e.g. 'relu', ('leakyrelu', {{'negative_slope': 0.01}}))") from None


def check_input(x: torch.Tensor, spatial_dims: int, in_channels: int, name: str):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor (batch, {in_channels}, *spatial), got {type(x).__name__}")
    if x.dim() != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(f"{name}: expected input (batch, {in_channels}, {spatial_dims} spatial sizes), "
                         f"got shape {tuple(x.shape)}")


# ----------------------------------------------------------------------------- padding
def valid_size_hint(size: int, multiple: int) -> str:
    lo, hi = (size // multiple) * multiple, -(-size // multiple) * multiple
    return f"{lo} or {hi}" if lo > 0 else f"{hi}"


def pad_to_multiple(x: torch.Tensor, multiple: Sequence[int], pad_input: bool, name: str,
                    mode: str = "constant") -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """Pad the spatial axes of ``x`` (b, c, *spatial) at their far end up to a multiple of
    ``multiple``; returns (padded, original spatial size or None when no padding was needed).
    With ``pad_input=False`` a size that does not divide raises a ValueError listing valid sizes."""
    spatial = tuple(x.shape[2:])
    extra = [(-s) % m for s, m in zip(spatial, multiple)]
    if not any(extra):
        return x, None
    if not pad_input:
        bad = [f"axis {i}: {s} -> {valid_size_hint(s, m)}" for i, (s, m) in enumerate(zip(spatial, multiple))
               if s % m]
        raise ValueError(f"{name}: input spatial size {spatial} is not a multiple of the network's total stride "
                         f"{tuple(multiple)}; valid sizes are multiples of it ({'; '.join(bad)}), "
                         f"or build the network with pad_input=True to pad and crop back automatically")
    pad = []
    for e in reversed(extra):
        pad += [0, e]
    return F.pad(x, pad, mode=mode), spatial


def crop_to(x: torch.Tensor, spatial: tuple[int, ...] | None) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on a (b, c, *spatial) or deep-supervision (b, k, c, *spatial) tensor."""
    if spatial is None:
        return x
    idx = (Ellipsis,) + tuple(slice(0, s) for s in spatial)
    return x[idx]


def total_stride(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    return tuple(math.prod(s[i] for s in strides) for i in range(len(strides[0])))


# ----------------------------------------------------------------------------- Mamba on feature maps
class _FP32Region:
    """Context: autocast off, so the selective scan runs in float32 (U-Mamba saw NaNs under AMP)."""

    def __init__(self, x: torch.Tensor, enabled: bool):
        self.ctx = torch.autocast(device_type=x.device.type, enabled=False) if enabled else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


class MambaLayer(nn.Module):
    """U-Mamba's layer on a channel-first feature map (b, c, *spatial): flatten the grid in raster
    order (last axis fastest) -> LayerNorm -> Mamba mixer -> back to (b, c, *spatial).

    U-Mamba uses no residual (``residual=False``: the output replaces the features); with
    ``fp32=True`` the layer runs outside autocast in the parameters' dtype.
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: float = 2.0,
                 residual: bool = False, fp32: bool = True):
        super().__init__()
        from vscan.layers import MambaMixer
        self.norm = nn.LayerNorm(dim)
        self.mixer = MambaMixer(dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.residual, self.fp32 = residual, fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        with _FP32Region(x, self.fp32):
            t = x.flatten(2).transpose(1, 2)
            if self.fp32:
                t = t.to(self.norm.weight.dtype)
            y = self.mixer(self.norm(t))
            if self.residual:
                y = y + t
        return y.transpose(1, 2).reshape(b, c, *spatial).to(x.dtype)


class ScanBlock(nn.Module):
    """Pre-norm residual multi-direction Mamba on a channel-first map (b, c, *spatial):
    ``x + MultiDirMamba(LayerNorm(x))`` with the mixer on the channel-last grid. The scan
    orders' index maps are computed from the grid shape at run time, so any size works."""

    def __init__(self, dim: int, spatial_dims: int, orders, d_state: int = 16, d_conv: int = 3,
                 expand: float = 2.0, fp32: bool = True):
        super().__init__()
        from vscan.layers.multidir import MultiDirMamba
        self.norm = nn.LayerNorm(dim)
        self.mixer = MultiDirMamba(dim, d_state=d_state, ssm_ratio=expand, d_conv=d_conv, orders=orders,
                                   spatial_dims=spatial_dims)
        self.fp32 = fp32

    @property
    def orders(self):
        return self.mixer.orders

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _FP32Region(x, self.fp32):
            t = x.movedim(1, -1)
            if self.fp32:
                t = t.to(self.norm.weight.dtype)
            y = t + self.mixer(self.norm(t))
        return y.movedim(-1, 1).to(x.dtype)
