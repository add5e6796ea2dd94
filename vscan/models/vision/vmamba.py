"""VMamba-style hierarchical backbone (VMamba v2, arXiv 2401.10166) as a timm model.

Four stages on channel-last (B, H, W, C) maps: a stem of two 3x3 stride-2 convolutions
(/4), then stages of VSS blocks ``x + DropPath(SS2D(LN(x)))`` and ``x + DropPath(MLP(LN(x)))``,
with a 3x3 stride-2 convolution + LayerNorm between stages (/8, /16, /32), a final LayerNorm
and an average-pool + linear head. The SS2D mixer is :class:`vscan.layers.multidir.MultiDirMamba`:
state size 1, no z gate, a depthwise 3x3 conv and, by default, the four-way 'cross' scan
(any ``orders`` works: 'zigzag', 'hilbert', ['local4', 'local4_rev', ...]).

Sizes follow the released v2 configurations (forward type 'v05_noz'):
T = depths (2, 2, 8, 2), dim 96, ssm_ratio 1.0; S = (2, 2, 15, 2), 96, 2.0;
B = (2, 2, 15, 2), 128, 2.0; all with d_state 1 and MLP ratio 4.

``forward_features`` returns NHWC maps (``output_fmt = 'NHWC'``), like timm's MambaOut.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, Mlp, register_notrace_module
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from vscan.layers.multidir import MultiDirMamba
from vscan.layers.ordered import OrderedMixer
from vscan.layers.registry import list_mixers

from ._api import PoolHeadMixin, StageStackMixin
from ._common import block_mixer, drop_path_rates, init_linear, reject_unknown

__all__ = ["VMamba", "VSSBlock"]

register_notrace_module(MultiDirMamba)
register_notrace_module(OrderedMixer)
DEFAULT_MIXER = "ss2d"


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class Stem(nn.Module):
    """Image (B, C, H, W) -> (B, H/4, W/4, dim): conv3x3/2, LN, GELU, conv3x3/2, LN (VMamba's v2 stem)."""

    def __init__(self, in_chans: int, dim: int, norm_eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1, **dd)
        self.norm1 = LayerNorm2d(dim // 2, eps=norm_eps, **dd)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.act(self.norm1(self.conv1(x))))
        return self.norm2(_to_nhwc(x))


class Downsample(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, C_out): conv3x3/2 + LayerNorm."""

    def __init__(self, dim: int, dim_out: int, norm_eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1, **dd)
        self.norm = nn.LayerNorm(dim_out, eps=norm_eps, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_to_nhwc(self.conv(_to_nchw(x))))


class VSSBlock(nn.Module):
    """VMamba's VSS block on (B, H, W, C): multi-direction SSM, then an MLP (if mlp_ratio > 0).

    ``mixer``: 'ss2d' (VMamba's SS2D, :class:`MultiDirMamba`, sized by d_state / ssm_ratio /
    dt_rank / d_conv, with ``mixer_kwargs`` on top) or a registered mixer
    (:func:`vscan.layers.list_mixers`) built with ``mixer_kwargs`` alone, run on the H*W tokens
    along each of ``orders`` (:func:`vscan.layers.ordered.build_grid_mixer`); such a mixer keeps
    its own initialisation."""

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0, dt_rank="auto", d_conv: int = 3,
                 orders="cross", mlp_ratio: float = 4.0, drop_path: float = 0.0, norm_eps: float = 1e-5,
                 mixer: str = DEFAULT_MIXER, mixer_kwargs: Optional[dict] = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mixer_on_tokens = mixer != DEFAULT_MIXER
        if mixer == DEFAULT_MIXER:
            kwargs = dict(dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv),
                          **(mixer_kwargs or {}))
            for fixed in ("orders", "spatial_dims"):
                if fixed in kwargs:
                    raise ValueError(f"mixer_kwargs: {fixed!r} is set by the model, not a mixer keyword")
            self.mixer = MultiDirMamba(dim, orders=orders, spatial_dims=2, **kwargs, **dd)
        elif mixer not in list_mixers():
            raise ValueError(f"mixer: unknown name {mixer!r}; VMamba takes {DEFAULT_MIXER!r} (its SS2D, the "
                             f"default) or a registered mixer {list_mixers()}")
        else:
            self.mixer = block_mixer(mixer, dim, orders, mixer_kwargs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        else:
            self.norm2 = self.mlp = None

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixer_on_tokens:                       # registry mixers read (B, H*W, C) tokens + the grid
            B, H, W, C = x.shape
            return self.mixer(x.reshape(B, H * W, C), (H, W)).reshape(B, H, W, C)
        return self.mixer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._mix(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VMambaStage(nn.Module):
    def __init__(self, dim_in: int, dim: int, depth: int, downsample: bool, drop_path: Sequence[float],
                 norm_eps: float = 1e-5, device=None, dtype=None, **block_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.downsample = Downsample(dim_in, dim, norm_eps, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[VSSBlock(dim, drop_path=drop_path[i], norm_eps=norm_eps, **block_kwargs, **dd)
                                      for i in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _per_stage(value, n: int, name: str) -> tuple:
    out = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
    if len(out) != n:
        raise ValueError(f"{name}: expected one value or {n} (one per stage), got {value!r}")
    return out


class VMamba(StageStackMixin, PoolHeadMixin, nn.Module):
    """VMamba-style hierarchical classifier; every hyper-parameter is a keyword.

    Args:
        depths: blocks per stage; dims: one width or one per stage (default doubles: d, 2d, 4d, 8d).
        d_state, ssm_ratio, dt_rank, d_conv: SS2D sizes (ssm_ratio = d_inner / dim).
        orders: scan orders of every block (default 'cross', VMamba's four directions).
        mixer, mixer_kwargs: the blocks' token mixer: 'ss2d' (VMamba's SS2D, sized by the
            SS2D arguments above; ``mixer_kwargs`` are added to them) or another registered mixer
            (``vscan.layers.list_mixers()``, e.g. 'liquid', 'cfc'), built with ``mixer_kwargs``
            alone; a 1-D one runs along each of ``orders`` and the directions are averaged
            (:class:`vscan.layers.ordered.OrderedMixer`).
        mlp_ratio: MLP hidden ratio (0 = no MLP, VMamba v0).
        global_pool: 'avg', 'max', 'avgmax' or '' (timm ClassifierHead).
        drop_rate, drop_path_rate: head dropout, stochastic depth (linear over all blocks).
    """

    output_fmt = "NHWC"
    head_input_fmt = "NHWC"

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 depths: Sequence[int] = (2, 2, 8, 2), dims: Union[int, Sequence[int]] = 96, d_state: int = 1,
                 ssm_ratio: float = 1.0, dt_rank="auto", d_conv: int = 3, orders="cross", mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-5, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 mixer: str = DEFAULT_MIXER, mixer_kwargs: Optional[dict] = None, device=None, dtype=None,
                 **kwargs):
        reject_unknown(type(self).__name__, kwargs)
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        depths = tuple(int(d) for d in depths)
        if not depths or min(depths) < 1:
            raise ValueError(f"depths must be positive, got {depths}")
        n = len(depths)
        dims = tuple(dims * 2 ** i for i in range(n)) if isinstance(dims, int) else _per_stage(dims, n, "dims")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = Stem(in_chans, dims[0], norm_eps, **dd)
        dpr = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.Sequential(*[
            VMambaStage(dims[max(i - 1, 0)], dims[i], depths[i], downsample=i > 0, drop_path=dpr[i],
                        norm_eps=norm_eps, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv,
                        orders=orders, mlp_ratio=mlp_ratio, mixer=mixer, mixer_kwargs=mixer_kwargs, **dd)
            for i in range(n)])
        self.feature_info = [dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}") for i in range(n)]
        self.norm = nn.LayerNorm(dims[-1], eps=norm_eps, **dd)
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt=self.head_input_fmt, **dd)
        init_linear(self)


# --------------------------------------------------------------------------------------------
# registry


def _cfg(**kwargs):
    return {"num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
            "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "first_conv": "stem.conv1", "classifier": "head.fc", "license": "apache-2.0",
            "paper_ids": "arXiv:2401.10166", **kwargs}


default_cfgs = generate_default_cfgs({
    "vscan_vmamba_tiny": _cfg(),
    "vscan_vmamba_small": _cfg(),
    "vscan_vmamba_base": _cfg(),
    "vscan_vmamba_ci": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), notes="CI-sized"),
})


def _create(variant: str, pretrained: bool = False, **kwargs):
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(VMamba, variant, pretrained,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


@register_model
def vscan_vmamba_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T (v2 's1l8'): depths 2-2-8-2, dim 96, ssm_ratio 1, d_state 1 (~30M params)."""
    args = dict(depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0)
    return _create("vscan_vmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vscan_vmamba_small(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S (v2 's2l15'): depths 2-2-15-2, dim 96, ssm_ratio 2 (~50M params)."""
    args = dict(depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0)
    return _create("vscan_vmamba_small", pretrained, **dict(args, **kwargs))


@register_model
def vscan_vmamba_base(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B (v2 's2l15'): depths 2-2-15-2, dim 128, ssm_ratio 2 (~89M params)."""
    args = dict(depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0)
    return _create("vscan_vmamba_base", pretrained, **dict(args, **kwargs))


@register_model
def vscan_vmamba_ci(pretrained: bool = False, **kwargs) -> VMamba:
    """CI-sized VMamba: one block per stage, dim 24."""
    args = dict(depths=(1, 1, 1, 1), dims=24, ssm_ratio=1.0, mlp_ratio=2.0)
    return _create("vscan_vmamba_ci", pretrained, **dict(args, **kwargs))
