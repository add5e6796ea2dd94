"""MambaVision-style hybrid backbone (arXiv 2407.08083) as a timm model.

Four stages: a stem of two 3x3 stride-2 conv + BN + ReLU (/4); stages 1-2 of residual conv
blocks (3x3 conv, BN, GELU, 3x3 conv, BN) on NCHW maps; stages 3-4 on tokens, where the
first half of each stage's blocks (ceil(N/2)) mix with a Mamba mixer and the second half with
multi-head self-attention (``F.scaled_dot_product_attention`` through ``timm.layers.Attention``),
each block ``x + gamma1 * mixer(LN(x))``, ``x + gamma2 * MLP(LN(x))``. 3x3 stride-2
convolutions downsample between stages; the head is BatchNorm -> average pool -> linear.

The Mamba mixer is MambaVision's: in-projection split into x and z halves, a non-causal
depthwise conv1d + SiLU on both, the selective scan on x only (one direction, no gate), and
the concatenation [y, z] into the out-projection. It scans the whole stage map in raster order
(MambaVision windows stages 3-4 by 14 / 7 tokens, which is global at 224 px; here it stays
global at every resolution, so larger inputs keep a global receptive field).

Sizes: T = depths (1, 3, 8, 4), dim 80, stem 32, heads (2, 4, 8, 16);
S = (3, 3, 7, 5), 96, 64; B = (3, 3, 10, 5), 128, 64 with layer scale 1e-5.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, ClassifierHead, DropPath, Mlp, register_notrace_module
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from vscan.layers.mamba import init_dt_proj_, s4d_real_A_log
from vscan.ops import selective_scan

from ._api import PoolHeadMixin, StageStackMixin
from ._common import drop_path_rates, init_linear, reject_unknown

__all__ = ["MambaHybrid", "HybridMambaMixer"]


@register_notrace_module
class HybridMambaMixer(nn.Module):
    """MambaVision's mixer on (B, L, C) tokens: scan the x half, keep a conv-only z half, concat."""

    def __init__(self, d_model: int, d_state: int = 8, d_conv: int = 3, expand: float = 1.0, dt_rank="auto",
                 conv_bias: bool = True, bias: bool = False, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        d_inner = int(expand * d_model)
        if d_inner % 2:
            raise ValueError(f"HybridMambaMixer: expand * d_model must be even (it is split in two), got {d_inner}")
        self.d_state, self.half = d_state, d_inner // 2
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        half = self.half
        self.in_proj = nn.Linear(d_model, d_inner, bias=bias, **dd)
        self.conv_x = nn.Conv1d(half, half, d_conv, padding="same", groups=half, bias=conv_bias, **dd)
        self.conv_z = nn.Conv1d(half, half, d_conv, padding="same", groups=half, bias=conv_bias, **dd)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True, **dd)
        self.A_log = nn.Parameter(torch.empty(half, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(half, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **dd)
        self._dt_range = (dt_min, dt_max)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        init_dt_proj_(self.dt_proj.weight, self.dt_proj.bias, self.dt_rank, *self._dt_range)
        self.A_log.copy_(s4d_real_A_log(self.d_state, self.half, device=self.A_log.device))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = F.silu(self.conv_x(xs.transpose(1, 2))).transpose(1, 2)
        z = F.silu(self.conv_z(z.transpose(1, 2))).transpose(1, 2)
        dt, B, C = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)
        y = selective_scan(xs, dt, -torch.exp(self.A_log.float()), B, C, self.D.float(),
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(torch.cat([y, z], dim=-1))


class ConvBlock(nn.Module):
    """Residual (conv3x3, BN, GELU, conv3x3, BN) on NCHW maps, optional layer scale."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: Optional[float] = None, device=None,
                 dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, **dd)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5, **dd)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, **dd)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5, **dd)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim, **dd)) if layer_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + self.drop_path(y)


class HybridBlock(nn.Module):
    """Token block: ``x + gamma1 * mixer(LN x)``, ``x + gamma2 * MLP(LN x)``; mixer = Mamba or attention."""

    def __init__(self, dim: int, use_attention: bool, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 d_state: int = 8, d_conv: int = 3, expand: float = 1.0, drop_path: float = 0.0,
                 attn_drop: float = 0.0, layer_scale: Optional[float] = None, norm_eps: float = 1e-5, device=None,
                 dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        if use_attention:
            self.mixer = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, **dd)
        else:
            self.mixer = HybridMambaMixer(dim, d_state=d_state, d_conv=d_conv, expand=expand, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim, **dd)) if layer_scale else None
        self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim, **dd)) if layer_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixer(self.norm1(x))
        x = x + self.drop_path(y * self.gamma1 if self.gamma1 is not None else y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y * self.gamma2 if self.gamma2 is not None else y)


class HybridStage(nn.Module):
    """Downsample, then conv blocks (NCHW) or token blocks (flattened to (B, H*W, C) and back)."""

    def __init__(self, dim_in: int, dim: int, depth: int, conv: bool, downsample: bool, num_heads: int,
                 drop_path: Sequence[float], layer_scale_conv: Optional[float], device=None, dtype=None,
                 **block_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = conv
        self.downsample = (nn.Conv2d(dim_in, dim, 3, stride=2, padding=1, bias=False, **dd) if downsample
                           else nn.Identity())
        n_mamba = (depth + 1) // 2     # first ceil(depth/2) blocks are Mamba, the rest attention
        if conv:
            blocks = [ConvBlock(dim, drop_path[i], layer_scale_conv, **dd) for i in range(depth)]
        else:
            blocks = [HybridBlock(dim, use_attention=i >= n_mamba, num_heads=num_heads, drop_path=drop_path[i],
                                  **block_kwargs, **dd) for i in range(depth)]
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if not self.conv:
            B, C, H, W = x.shape
            x = x.flatten(2).transpose(1, 2)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        if not self.conv:
            x = x.transpose(1, 2).reshape(B, C, H, W)
        return x


class MambaHybrid(StageStackMixin, PoolHeadMixin, nn.Module):
    """MambaVision-style hybrid classifier; every hyper-parameter is a keyword.

    Args:
        depths: blocks per stage; ``conv_stages``: how many leading stages are conv stages.
        dim: stage-1 width (doubled per stage); in_dim: stem hidden width.
        num_heads: attention heads per stage (only token stages use them).
        mlp_ratio, qkv_bias, d_state, d_conv, expand: token-block sizes.
        layer_scale / layer_scale_conv: initial layer-scale of token / conv blocks (None: off).
        global_pool, drop_rate, drop_path_rate, attn_drop_rate: as in timm.
    """

    head_input_fmt = "NCHW"

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 depths: Sequence[int] = (1, 3, 8, 4), dim: int = 80, in_dim: int = 32,
                 num_heads: Sequence[int] = (2, 4, 8, 16), conv_stages: int = 2, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, d_state: int = 8, d_conv: int = 3, expand: float = 1.0,
                 layer_scale: Optional[float] = None, layer_scale_conv: Optional[float] = None,
                 norm_eps: float = 1e-5, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, device=None, dtype=None, **kwargs):
        reject_unknown(type(self).__name__, kwargs)
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        depths = tuple(int(d) for d in depths)
        n = len(depths)
        if len(num_heads) != n:
            raise ValueError(f"num_heads needs one entry per stage ({n}), got {tuple(num_heads)}")
        if not 0 <= conv_stages <= n:
            raise ValueError(f"conv_stages must be in [0, {n}], got {conv_stages}")
        dims = [dim * 2 ** i for i in range(n)]
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(in_dim, eps=1e-4, **dd), nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(dim, eps=1e-4, **dd), nn.ReLU())
        dpr = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.Sequential(*[
            HybridStage(dims[max(i - 1, 0)], dims[i], depths[i], conv=i < conv_stages, downsample=i > 0,
                        num_heads=num_heads[i], drop_path=dpr[i], layer_scale_conv=layer_scale_conv,
                        mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, d_state=d_state, d_conv=d_conv, expand=expand,
                        attn_drop=attn_drop_rate, layer_scale=layer_scale, norm_eps=norm_eps, **dd)
            for i in range(n)])
        self.feature_info = [dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}") for i in range(n)]
        self.norm = nn.BatchNorm2d(dims[-1], **dd)
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        init_linear(self)


# --------------------------------------------------------------------------------------------
# registry


def _cfg(**kwargs):
    return {"num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
            "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "first_conv": "stem.0", "classifier": "head.fc", "license": "apache-2.0",
            "paper_ids": "arXiv:2407.08083", **kwargs}


default_cfgs = generate_default_cfgs({
    "vscan_hybrid_tiny": _cfg(),
    "vscan_hybrid_small": _cfg(),
    "vscan_hybrid_base": _cfg(),
    "vscan_hybrid_ci": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), notes="CI-sized"),
})


def _create(variant: str, pretrained: bool = False, **kwargs):
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(MambaHybrid, variant, pretrained,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


@register_model
def vscan_hybrid_tiny(pretrained: bool = False, **kwargs) -> MambaHybrid:
    """MambaVision-T-style: depths 1-3-8-4, dim 80, stem 32, heads 2-4-8-16 (~32M params)."""
    args = dict(depths=(1, 3, 8, 4), dim=80, in_dim=32, num_heads=(2, 4, 8, 16))
    return _create("vscan_hybrid_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vscan_hybrid_small(pretrained: bool = False, **kwargs) -> MambaHybrid:
    """MambaVision-S-style: depths 3-3-7-5, dim 96, stem 64 (~50M params)."""
    args = dict(depths=(3, 3, 7, 5), dim=96, in_dim=64, num_heads=(2, 4, 8, 16))
    return _create("vscan_hybrid_small", pretrained, **dict(args, **kwargs))


@register_model
def vscan_hybrid_base(pretrained: bool = False, **kwargs) -> MambaHybrid:
    """MambaVision-B-style: depths 3-3-10-5, dim 128, stem 64, layer scale 1e-5 (~98M params)."""
    args = dict(depths=(3, 3, 10, 5), dim=128, in_dim=64, num_heads=(2, 4, 8, 16), layer_scale=1e-5)
    return _create("vscan_hybrid_base", pretrained, **dict(args, **kwargs))


@register_model
def vscan_hybrid_ci(pretrained: bool = False, **kwargs) -> MambaHybrid:
    """CI-sized hybrid: depths 1-1-2-2 (one Mamba + one attention block in each token stage), dim 16."""
    args = dict(depths=(1, 1, 2, 2), dim=16, in_dim=8, num_heads=(1, 1, 2, 2), d_state=4)
    return _create("vscan_hybrid_ci", pretrained, **dict(args, **kwargs))
