"""VideoMamba-style video classifier (arXiv 2403.06977) as a timm model.

Input (B, C, T, H, W). A 3-D patch embedding (``tubelet_size`` frames x ``patch_size``^2
pixels) makes a (T', H', W') token grid; a learned spatial position embedding (resampled for
other frame sizes) plus a learned temporal one (interpolated for other clip lengths) are
added; a class token is prepended (VideoMamba puts it first). Vim blocks
(bidirectional Mamba, RMSNorm, float32 residual, drop path) then scan the tokens in a
spatiotemporal order given as data: ``scan_order='spatial_first'`` (frame by frame, as
VideoMamba) or 'temporal_first' (all frames of one pixel, then the next), or any
:mod:`vscan.scans` order of a 3-D grid, walked forwards and backwards.

Sizes (VideoMamba): Ti 192 x 24, S 384 x 24, M 576 x 32; 8 frames at 224 px.
``forward_features`` returns (B, 1 + T'H'W', dim); intermediates are (B, dim, T', H', W').
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from vscan.layers import RMSNorm
from vscan.scans import ScanOrderSet, get_order, with_cls_token

from ._builder import build_nd_model
from ._api import LinearTokenHeadMixin, TokenStackMixin
from ._common import check_input, drop_path_rates, init_linear, reject_unknown, rescale_out_proj, take_indices
from .vim import CLS_POSITIONS, DEFAULT_MIXER, VimBlock, split_cls

__all__ = ["VideoMamba"]


def bidirectional(order_name) -> ScanOrderSet:
    """An order and the same path walked backwards."""
    order = get_order(order_name)
    if isinstance(order, ScanOrderSet):
        return order
    return ScanOrderSet([order, order.reversed()], name=f"{order.name}+rev")


@register_notrace_function
def embed_video_tokens(x: torch.Tensor, pos_spatial: torch.Tensor, pos_temporal: torch.Tensor,
                       cls_token: Optional[torch.Tensor], base_grid: Tuple[int, int, int], position: str):
    """(B, C, T, H, W) patch grid -> (B, [1 +] T*H*W, C) tokens in grid order with spatial and
    temporal position embeddings (resampled when the grid differs) and the class token placed."""
    B, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1)                                            # (B, T, H, W, C)
    ps = pos_spatial
    if (H, W) != tuple(base_grid[1:]):
        ps = resample_abs_pos_embed(ps, new_size=[H, W], old_size=list(base_grid[1:]), num_prefix_tokens=1)
    pt = pos_temporal
    if T != base_grid[0]:
        pt = F.interpolate(pt.transpose(1, 2).float(), size=T, mode="linear", align_corners=False)
        pt = pt.transpose(1, 2).to(pos_temporal.dtype)
    x = x + ps[:, 1:].reshape(1, 1, H, W, C).to(x.dtype) + pt.reshape(1, T, 1, 1, C).to(x.dtype)
    x = x.reshape(B, T * H * W, C)
    if cls_token is None:
        return x
    cls = (cls_token + ps[:, :1]).expand(B, -1, -1).to(x.dtype)
    p = {"start": 0, "middle": (T * H * W) // 2, "end": T * H * W}[position]
    return torch.cat([x[:, :p], cls, x[:, p:]], dim=1)


class VideoMamba(TokenStackMixin, LinearTokenHeadMixin, nn.Module):
    """VideoMamba-style classifier over clips (B, C, T, H, W); every hyper-parameter is a keyword.

    Args:
        img_size, patch_size, num_frames, tubelet_size: default clip geometry (position
            embeddings are sized for it and resampled for other sizes / lengths).
        scan_order: spatiotemporal order of the (T', H', W') grid, walked both ways.
        cls_position: 'start' (VideoMamba), 'middle' or 'end'; global_pool 'token' / 'avg' / ''.
        embed_dim, depth, d_state, d_conv, expand, dt_rank, mixer, mixer_kwargs, residual_in_fp32,
            norm_eps: as Vim (a 1-D ``mixer`` runs along ``scan_order`` both ways).
    """

    stem_params = ("cls_token", "pos_embed", "temporal_pos_embed")

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, num_frames: int = 8,
                 tubelet_size: int = 1, in_chans: int = 3, num_classes: int = 400, global_pool: str = "token",
                 embed_dim: int = 192, depth: int = 24, d_state: int = 16, d_conv: int = 4, expand: float = 2.0,
                 dt_rank="auto", scan_order: str = "spatial_first", cls_position: str = "start",
                 residual_in_fp32: bool = True, norm_eps: float = 1e-5, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, drop_path_rate: float = 0.0, mixer: str = DEFAULT_MIXER,
                 mixer_kwargs: Optional[dict] = None, device=None, dtype=None, **kwargs):
        reject_unknown(type(self).__name__, kwargs)
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if cls_position not in CLS_POSITIONS:
            raise ValueError(f"cls_position must be one of {CLS_POSITIONS}, got {cls_position!r}")
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames ({num_frames}) must be divisible by tubelet_size ({tubelet_size})")
        img_size, patch = to_2tuple(img_size), to_2tuple(patch_size)
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.cls_position, self.residual_in_fp32 = cls_position, residual_in_fp32
        self.has_class_token, self.num_prefix_tokens = True, 1
        self.patch = (tubelet_size, *patch)
        self.grid = (num_frames // tubelet_size, img_size[0] // patch[0], img_size[1] // patch[1])
        self.grad_checkpointing = False

        self.patch_embed = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch, stride=self.patch, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[1] * self.grid[2], embed_dim, **dd))
        self.temporal_pos_embed = nn.Parameter(torch.zeros(1, self.grid[0], embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        orders = with_cls_token(bidirectional(scan_order), cls_position)
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.ModuleList([
            VimBlock(embed_dim, orders, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                     drop_path=dpr[i], norm_eps=norm_eps, mixer=mixer, mixer_kwargs=mixer_kwargs, **dd)
            for i in range(depth)])
        self.norm = RMSNorm(embed_dim, eps=norm_eps, **dd)
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch[0])
                             for i in range(depth)]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        init_linear(self)
        rescale_out_proj(self.blocks, depth)
        for p in (self.pos_embed, self.temporal_pos_embed, self.cls_token):
            trunc_normal_(p, std=0.02)

    # -- forward --------------------------------------------------------------------------------

    def _tokens(self, x: torch.Tensor):
        x = check_input(type(self).__name__, x, 5, self.in_chans, self.patch)
        x = self.patch_embed(x)                                               # (B, C, T, H, W)
        grid = (x.shape[2], x.shape[3], x.shape[4])
        x = embed_video_tokens(x, self.pos_embed, self.temporal_pos_embed, self.cls_token, self.grid,
                               self.cls_position)
        x = self.pos_drop(x)
        dtype = x.dtype
        return (x.float() if self.residual_in_fp32 else x), grid, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # here, not in the mixin: see _api's docstring (FX)
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCTHW",
                              intermediates_only: bool = False):
        """Block outputs as (B, C, T', H', W') maps ('NCTHW'/'NCHW' = channels first,
        'NTHWC'/'NHWC' = channels last, 'NLC' = tokens)."""
        fmts = ("NCTHW", "NCHW", "NTHWC", "NHWC", "NLC")
        if output_fmt not in fmts:
            raise ValueError(f"output_fmt must be one of {fmts}, got {output_fmt!r}")
        take, max_index = take_indices(len(self.blocks), indices)
        x, grid, dtype = self._tokens(x)
        blocks = self.blocks if not stop_early else self.blocks[:max_index + 1]
        out = []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x, grid)
            if i in take:
                y = (self.norm(x) if norm else x).to(dtype)
                _, tokens = split_cls(y, grid, self.cls_position, True)
                if output_fmt != "NLC":
                    tokens = tokens.reshape(tokens.shape[0], *grid, -1)
                    if output_fmt in ("NCTHW", "NCHW"):
                        tokens = tokens.permute(0, 4, 1, 2, 3).contiguous()
                out.append(tokens)
        if intermediates_only:
            return out
        return self._features(x, grid, dtype), out


# --------------------------------------------------------------------------------------------
# registry


def _cfg(**kwargs):
    return {"num_classes": 400, "input_size": (3, 8, 224, 224), "pool_size": None, "crop_pct": 0.875,
            "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "first_conv": "patch_embed", "classifier": "head", "license": "apache-2.0",
            "paper_ids": "arXiv:2403.06977", **kwargs}


default_cfgs = generate_default_cfgs({
    "vscan_videomamba_tiny": _cfg(),
    "vscan_videomamba_small": _cfg(),
    "vscan_videomamba_ci": _cfg(input_size=(3, 4, 64, 64), notes="CI-sized"),
})


def _create(variant: str, pretrained: bool = False, **kwargs):
    return build_nd_model(VideoMamba, variant, pretrained, **kwargs)


@register_model
def vscan_videomamba_tiny(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-Ti: 192 wide, 24 blocks, 8 x 224 x 224 clips, spatial-first order."""
    return _create("vscan_videomamba_tiny", pretrained, **dict(dict(embed_dim=192, depth=24), **kwargs))


@register_model
def vscan_videomamba_small(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-S: 384 wide, 24 blocks."""
    return _create("vscan_videomamba_small", pretrained, **dict(dict(embed_dim=384, depth=24), **kwargs))


@register_model
def vscan_videomamba_ci(pretrained: bool = False, **kwargs) -> VideoMamba:
    """CI-sized VideoMamba: 4 frames of 64 px, 32 wide, 3 blocks."""
    args = dict(img_size=64, num_frames=4, embed_dim=32, depth=3, d_state=4)
    return _create("vscan_videomamba_ci", pretrained, **dict(args, **kwargs))
