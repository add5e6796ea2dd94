"""Mamba-ND-style classifier for 3-D volumes (and any N-D grid) as a timm model.

Mamba-ND (arXiv 2402.05892) keeps the plain Mamba block and changes the token order from
layer to layer: layer i flattens the grid with a different axis fastest and walks it forwards
or backwards (W+, W-, H+, H-, D+, D-, ... for a (D, H, W) volume), so depth, not extra
directions per layer, gives every token a view of every axis. Here the schedule is data
(:class:`vscan.scans.AlternatingSchedule`) and each layer is a one-direction
:class:`vscan.layers.bimamba.BidirectionalMamba` (orders = [that layer's order]), with
RMSNorm pre-norm, float32 residual and drop path.

Layout: patch embedding (Conv{N}d, ``patch_size``), learned position embedding on the patch
grid (resampled for other sizes), the blocks on grid-order tokens, a final RMSNorm, and a
global-average-pool head. ``forward_features`` returns (B, C, *grid) channel-first maps.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from vscan.layers import RMSNorm
from vscan.scans import AlternatingSchedule, CyclicSchedule

from ._builder import build_nd_model
from ._api import PoolHeadMixin, TokenStackMixin
from ._common import (PoolHead, check_input, drop_path_rates, init_linear, reject_unknown, rescale_out_proj,
                      take_indices)
from .vim import DEFAULT_MIXER, VimBlock

__all__ = ["MambaND"]

_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _tuple(value, n: int, name: str) -> tuple:
    out = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),) * n
    if len(out) != n:
        raise ValueError(f"{name}: expected one int or {n} ints, got {value!r}")
    return out


@register_notrace_function
def add_grid_pos_embed(x: torch.Tensor, pos_embed: Optional[torch.Tensor]) -> torch.Tensor:
    """x (B, C, *grid) + pos_embed (1, C, *base_grid) resampled to the grid if it differs."""
    if pos_embed is None:
        return x
    if tuple(pos_embed.shape[2:]) != tuple(x.shape[2:]):
        mode = _INTERP.get(x.dim() - 2)
        if mode is None:
            raise ValueError(f"position embedding resampling supports 1-3-D grids, got {x.dim() - 2}-D")
        pos_embed = F.interpolate(pos_embed.float(), size=tuple(x.shape[2:]), mode=mode, align_corners=False)
    return x + pos_embed.to(x.dtype)


@register_notrace_function
def grid_to_tokens(x: torch.Tensor):
    """(B, C, *grid) -> ((B, L, C) tokens in grid order, grid shape)."""
    return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


@register_notrace_function
def tokens_to_grid(x: torch.Tensor, grid) -> torch.Tensor:
    """(B, L, C) tokens in grid order -> (B, C, *grid)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


class MambaND(TokenStackMixin, PoolHeadMixin, nn.Module):
    """Mamba-ND-style classifier over (B, C, *spatial) inputs; every hyper-parameter is a keyword.

    Args:
        img_size, patch_size: default grid (one int per axis or one for all); other sizes
            divisible by the patch work, the position embedding is resampled.
        spatial_dims: number of spatial axes (3 for volumes; 2 for images; any N >= 1).
        schedule: 'alternating' (Mamba-ND's per-layer axis/direction alternation) or a list of
            scan-order names cycled over the layers (e.g. ['raster', 'raster_rev']).
        embed_dim, depth, d_state, d_conv, expand, dt_rank, pos_embed, residual_in_fp32, norm_eps.
        mixer, mixer_kwargs: as Vim's (a 1-D ``mixer`` runs along each layer's order).
        global_pool: 'avg', 'max' or ''; drop_rate, drop_path_rate.
    """

    stem_params = ("pos_embed",)

    def __init__(self, img_size: Union[int, Sequence[int]] = 64, patch_size: Union[int, Sequence[int]] = 8,
                 in_chans: int = 1, num_classes: int = 2, spatial_dims: int = 3, global_pool: str = "avg",
                 embed_dim: int = 192, depth: int = 12, d_state: int = 16, d_conv: int = 4, expand: float = 2.0,
                 dt_rank="auto", schedule="alternating", pos_embed: bool = True, residual_in_fp32: bool = True,
                 norm_eps: float = 1e-5, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 mixer: str = DEFAULT_MIXER, mixer_kwargs: Optional[dict] = None, device=None, dtype=None,
                 **kwargs):
        reject_unknown(type(self).__name__, kwargs)
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if spatial_dims < 1:
            raise ValueError(f"spatial_dims must be >= 1, got {spatial_dims}")
        img_size, patch = _tuple(img_size, spatial_dims, "img_size"), _tuple(patch_size, spatial_dims, "patch_size")
        if spatial_dims > 3:
            raise ValueError(f"spatial_dims={spatial_dims}: torch has convolutions (the patch embedding) up to 3-D")
        if isinstance(schedule, str):
            if schedule != "alternating":
                raise ValueError(f"schedule must be 'alternating' or a list of order names, got {schedule!r}")
            sched = AlternatingSchedule(spatial_dims)
        else:
            sched = CyclicSchedule(list(schedule))
        self.num_classes, self.in_chans, self.spatial_dims = num_classes, in_chans, spatial_dims
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.patch, self.residual_in_fp32 = patch, residual_in_fp32
        self.grid = tuple(s // p for s, p in zip(img_size, patch))
        self.grad_checkpointing = False
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial_dims - 1]
        self.patch_embed = conv(in_chans, embed_dim, kernel_size=patch, stride=patch, **dd)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.grid, **dd)) if pos_embed else None
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.ModuleList([
            VimBlock(embed_dim, [sched(i)], d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                     drop_path=dpr[i], norm_eps=norm_eps, mixer=mixer, mixer_kwargs=mixer_kwargs, **dd)
            for i in range(depth)])
        self.norm = RMSNorm(embed_dim, eps=norm_eps, **dd)
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch[0]) for i in range(depth)]
        self.head = PoolHead(embed_dim, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        init_linear(self)
        rescale_out_proj(self.blocks, depth)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)

    # -- forward --------------------------------------------------------------------------------

    def _tokens(self, x: torch.Tensor):
        x = check_input(type(self).__name__, x, self.spatial_dims + 2, self.in_chans, self.patch)
        x = add_grid_pos_embed(self.patch_embed(x), self.pos_embed)        # (B, C, *grid)
        dtype = x.dtype
        x, grid = grid_to_tokens(x)                                          # (B, L, C), grid order
        return (x.float() if self.residual_in_fp32 else x), grid, dtype

    def _features(self, x: torch.Tensor, grid, dtype) -> torch.Tensor:
        return tokens_to_grid(self.norm(x).to(dtype), grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # here, not in the mixin: see _api's docstring (FX)
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Block outputs as channel-first (B, C, *grid) maps ('NCHW' / 'NCDHW'), or 'NLC' tokens."""
        if output_fmt not in ("NCHW", "NCDHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NCDHW' (channels first) or 'NLC', got {output_fmt!r}")
        take, max_index = take_indices(len(self.blocks), indices)
        x, grid, dtype = self._tokens(x)
        blocks = self.blocks if not stop_early else self.blocks[:max_index + 1]
        out = []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x, grid)
            if i in take:
                y = (self.norm(x) if norm else x).to(dtype)
                out.append(y if output_fmt == "NLC" else tokens_to_grid(y, grid))
        if intermediates_only:
            return out
        return self._features(x, grid, dtype), out


# --------------------------------------------------------------------------------------------
# registry


def _cfg(**kwargs):
    return {"num_classes": 2, "input_size": (1, 64, 64, 64), "pool_size": (8, 8, 8), "crop_pct": 1.0,
            "interpolation": "trilinear", "mean": (0.5,), "std": (0.5,), "first_conv": "patch_embed",
            "classifier": "head.fc", "license": "apache-2.0", "paper_ids": "arXiv:2402.05892", **kwargs}


default_cfgs = generate_default_cfgs({
    "vscan_mamba3d_tiny": _cfg(),
    "vscan_mamba3d_small": _cfg(),
    "vscan_mamba3d_ci": _cfg(input_size=(1, 32, 32, 32), pool_size=(4, 4, 4), notes="CI-sized"),
})


def _create(variant: str, pretrained: bool = False, **kwargs):
    return build_nd_model(MambaND, variant, pretrained, **kwargs)


@register_model
def vscan_mamba3d_tiny(pretrained: bool = False, **kwargs) -> MambaND:
    """3-D Mamba-ND: 64^3 volumes, 8^3 patches, 192 wide, 12 alternating layers (two full cycles)."""
    return _create("vscan_mamba3d_tiny", pretrained, **dict(dict(embed_dim=192, depth=12), **kwargs))


@register_model
def vscan_mamba3d_small(pretrained: bool = False, **kwargs) -> MambaND:
    """3-D Mamba-ND: 384 wide, 24 alternating layers."""
    return _create("vscan_mamba3d_small", pretrained, **dict(dict(embed_dim=384, depth=24), **kwargs))


@register_model
def vscan_mamba3d_ci(pretrained: bool = False, **kwargs) -> MambaND:
    """CI-sized 3-D Mamba-ND: 32^3 volumes, 32 wide, 6 layers (one W+ W- H+ H- D+ D- cycle)."""
    args = dict(img_size=32, embed_dim=32, depth=6, d_state=4)
    return _create("vscan_mamba3d_ci", pretrained, **dict(args, **kwargs))
