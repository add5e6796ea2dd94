"""Vision Mamba (Vim): a plain (isotropic) stack of bidirectional Mamba blocks as a timm model.

Layout (Vim, arXiv 2401.09417; sizes Ti/S/B = 192/384/768 wide, 24 deep): conv patch
embedding, learned absolute position embedding (resampled for any input size divisible by
the patch), a class token in the middle of the sequence, pre-norm blocks
``x + DropPath(BidirectionalMamba(RMSNorm(x)))`` with the residual stream kept in float32,
a final RMSNorm and a linear head on the class token.

The class token's place in each scan is given by the scan order
(:func:`vscan.scans.with_cls_token`), not by the model: with the default 'bidirectional'
order the forward branch meets it halfway and the backward branch likewise, as in Vim.
Any other order set works too (``orders='cross'`` scans the patch grid four ways).

``forward_features`` returns the normalised tokens (batch, 1 + H*W, dim) with the class
token at its sequence position, like timm's ViTs; ``forward_intermediates`` returns
(batch, dim, H, W) maps of the patch tokens.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import (DropPath, PatchEmbed, register_notrace_function, register_notrace_module,
                         resample_abs_pos_embed, trunc_normal_)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from vscan.layers import RMSNorm
from vscan.layers.bimamba import BidirectionalMamba
from vscan.layers.ordered import OrderedMixer
from vscan.scans import cls_position, with_cls_token

from ._api import LinearTokenHeadMixin, TokenStackMixin
from ._common import (block_mixer, check_input, drop_path_rates, init_linear, reject_unknown, rescale_out_proj,
                      take_indices)

__all__ = ["VisionMamba", "VimBlock"]

register_notrace_module(BidirectionalMamba)    # data-dependent scan loops: one opaque call under FX
register_notrace_module(OrderedMixer)
CLS_POSITIONS = ("start", "middle", "end")
DEFAULT_MIXER = "bimamba"


class VimBlock(nn.Module):
    """``x + DropPath(mixer(RMSNorm(x)))``; the mixer runs in the parameters' dtype, the
    residual stream keeps the dtype it arrives in (float32 in Vim).

    ``mixer``: 'bimamba' (Vim's bidirectional Mamba, sized by d_state / d_conv / expand /
    dt_rank, with ``mixer_kwargs`` on top) or any other registered mixer
    (:func:`vscan.layers.list_mixers`), built with ``mixer_kwargs`` only and run along each of
    ``orders`` (:func:`vscan.layers.ordered.build_grid_mixer`); such a mixer keeps its own
    initialisation."""

    def __init__(self, dim: int, orders, d_state: int = 16, d_conv: int = 4, expand: float = 2.0,
                 dt_rank="auto", drop_path: float = 0.0, norm_eps: float = 1e-5, mixer: str = DEFAULT_MIXER,
                 mixer_kwargs: Optional[dict] = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm = RMSNorm(dim, eps=norm_eps, **dd)
        if mixer == DEFAULT_MIXER:
            kwargs = dict(dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank), **(mixer_kwargs or {}))
            self.mixer = block_mixer(mixer, dim, orders, kwargs, own_init=False, **dd)
        else:
            self.mixer = block_mixer(mixer, dim, orders, mixer_kwargs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid_shape: Tuple[int, ...]) -> torch.Tensor:
        h = self.norm(x)
        if isinstance(x, torch.fx.Proxy):        # under FX tracing (timm's features) dtypes are symbolic
            h = h.to(self.norm.weight.dtype)
        else:
            h = h.to(_mixer_input_dtype(self.mixer, x.device, self.norm.weight.dtype))
        m = self.drop_path(self.mixer(h, grid_shape))
        del h
        # x + m in x's dtype (the float32 residual stream); when x's dtype already wins the type
        # promotion, m is promoted inside the add, without a float32 copy of it
        if not isinstance(x, torch.fx.Proxy) and torch.promote_types(x.dtype, m.dtype) == x.dtype:
            return x + m
        return x + m.to(x.dtype)


def _mixer_input_dtype(mixer: nn.Module, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype to hand the mixer its normalised input in: the autocast dtype when autocast is on
    and the mixer declares ``input_autocast_safe`` (it only feeds its input to autocast-cast
    linears, so the result is the same and the held copy is half the size); else ``dtype``."""
    if not (getattr(mixer, "input_autocast_safe", False) and dtype == torch.float32):
        return dtype
    try:
        on = torch.is_autocast_enabled(device.type)
    except RuntimeError:          # a device type without autocast (meta)
        return dtype
    return torch.get_autocast_dtype(device.type) if on else dtype


@register_notrace_function
def embed_tokens(x: torch.Tensor, pos_embed: Optional[torch.Tensor], cls_token: Optional[torch.Tensor],
                 base_grid: Tuple[int, int], position: str) -> torch.Tensor:
    """(B, H, W, C) patch grid -> (B, H*W [+1], C) tokens with position embeddings added and the
    class token inserted at its sequence position (pos_embed is timm-layout: class slot first)."""
    B, H, W, C = x.shape
    x = x.reshape(B, H * W, C)
    num_prefix = 1 if cls_token is not None else 0
    if pos_embed is not None:
        if (H, W) != tuple(base_grid):
            pos_embed = resample_abs_pos_embed(pos_embed, new_size=[H, W], old_size=list(base_grid),
                                               num_prefix_tokens=num_prefix)
        x = x + pos_embed[:, num_prefix:].to(x.dtype)
    if cls_token is None:
        return x
    cls = cls_token.expand(B, -1, -1).to(x.dtype)
    if pos_embed is not None:
        cls = cls + pos_embed[:, :1].to(x.dtype)
    p = cls_position((H, W), position)
    return torch.cat([x[:, :p], cls, x[:, p:]], dim=1)


@register_notrace_function
def split_cls(x: torch.Tensor, grid: Tuple[int, int], position: str, has_cls: bool):
    """(B, 1+H*W, C) -> (class token (B, C) or None, patch tokens (B, H*W, C))."""
    if not has_cls:
        return None, x
    p = cls_position(tuple(grid), position)
    return x[:, p], torch.cat([x[:, :p], x[:, p + 1:]], dim=1)


class VisionMamba(TokenStackMixin, LinearTokenHeadMixin, nn.Module):
    """Vision Mamba (Vim) classifier; every hyper-parameter is a keyword.

    Args:
        img_size: default input size (the position embedding's grid); other sizes divisible by
            ``patch_size`` work, the embedding is resampled.
        patch_size, in_chans, num_classes, embed_dim, depth: as in ViT.
        global_pool: 'token' (the class token), 'avg' (mean of patch tokens) or '' (none).
        class_token: use a class token; ``cls_position``: 'middle' (Vim), 'start' or 'end'.
        orders: scan order set of every block ('bidirectional' = Vim's bimamba v2).
        d_state, d_conv, expand, dt_rank: Mamba mixer sizes.
        mixer, mixer_kwargs: the blocks' token mixer: 'bimamba' (Vim's, sized by the four
            arguments above; ``mixer_kwargs`` are added to them) or another registered mixer
            (``vscan.layers.list_mixers()``, e.g. 'liquid', 'cfc'), built with ``mixer_kwargs``
            alone; a 1-D one runs along each of ``orders`` (class token included) and the
            directions are averaged (:class:`vscan.layers.ordered.OrderedMixer`).
        residual_in_fp32: keep the residual stream in float32 under bf16/fp16.
        pos_embed: learned absolute position embedding.
        drop_rate, pos_drop_rate, drop_path_rate: dropout before the head, after the
            position embedding, and stochastic depth (linear over depth).
    """

    stem_params = ("cls_token", "pos_embed")

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "token", embed_dim: int = 192, depth: int = 24,
                 d_state: int = 16, d_conv: int = 4, expand: float = 2.0, dt_rank="auto",
                 orders="bidirectional", class_token: bool = True, cls_position: str = "middle",
                 pos_embed: bool = True, residual_in_fp32: bool = True, norm_eps: float = 1e-5,
                 drop_rate: float = 0.0, pos_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 mixer: str = DEFAULT_MIXER, mixer_kwargs: Optional[dict] = None, device=None, dtype=None,
                 **kwargs):
        reject_unknown(type(self).__name__, kwargs)
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg'")
        if cls_position not in CLS_POSITIONS:
            raise ValueError(f"cls_position must be one of {CLS_POSITIONS}, got {cls_position!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.has_class_token, self.cls_position = class_token, cls_position
        self.num_prefix_tokens = 1 if class_token else 0
        self.residual_in_fp32 = residual_in_fp32
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, output_fmt="NHWC", strict_img_size=False, **dd)
        self.patch_size = self.patch_embed.patch_size
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd)) if class_token else None
        self.pos_embed = (nn.Parameter(torch.zeros(1, self.num_prefix_tokens + grid[0] * grid[1], embed_dim, **dd))
                          if pos_embed else None)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        block_orders = with_cls_token(orders, cls_position) if class_token else orders
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.ModuleList([
            VimBlock(embed_dim, block_orders, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                     drop_path=dpr[i], norm_eps=norm_eps, mixer=mixer, mixer_kwargs=mixer_kwargs, **dd)
            for i in range(depth)])
        self.norm = RMSNorm(embed_dim, eps=norm_eps, **dd)
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=self.patch_size[0])
                             for i in range(depth)]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        init_linear(self)
        rescale_out_proj(self.blocks, len(self.blocks))
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)

    # -- timm model API (the rest is in _api's mixins) -----------------------------------------

    def set_input_size(self, img_size=None, patch_size=None):
        """Change the default input size (and patch size); the position embedding is resampled."""
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        self.patch_size = self.patch_embed.patch_size
        new_grid = self.patch_embed.grid_size
        if self.pos_embed is not None and tuple(new_grid) != tuple(old_grid):
            with torch.no_grad():
                new = resample_abs_pos_embed(self.pos_embed, new_size=list(new_grid), old_size=list(old_grid),
                                             num_prefix_tokens=self.num_prefix_tokens)
            requires_grad = self.pos_embed.requires_grad
            self.pos_embed = nn.Parameter(new, requires_grad=requires_grad)
        for info in self.feature_info:
            info["reduction"] = self.patch_size[0]

    # -- forward --------------------------------------------------------------------------------

    def _tokens(self, x: torch.Tensor):
        """Image -> (float32-or-not token stream, patch grid (H, W), compute dtype)."""
        x = check_input(type(self).__name__, x, 4, self.in_chans, self.patch_size)
        x = self.patch_embed(x)                                     # (B, H, W, C)
        grid = (x.shape[1], x.shape[2])
        x = embed_tokens(x, self.pos_embed, self.cls_token, self.patch_embed.grid_size, self.cls_position)
        x = self.pos_drop(x)
        dtype = x.dtype
        if self.residual_in_fp32:
            x = x.float()
        return x, grid, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # here, not in the mixin: see _api's docstring (FX)
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Block outputs as (B, C, H, W) maps ('NHWC' / 'NLC' also), and the final features."""
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        take, max_index = take_indices(len(self.blocks), indices)
        x, grid, dtype = self._tokens(x)
        blocks = self.blocks if not stop_early else self.blocks[:max_index + 1]
        intermediates, prefixes = [], []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x, grid)
            if i in take:
                y = (self.norm(x) if norm else x).to(dtype)
                cls, patches = split_cls(y, grid, self.cls_position, self.has_class_token)
                prefixes.append(cls)
                if output_fmt != "NLC":
                    patches = patches.reshape(patches.shape[0], grid[0], grid[1], -1)
                    if output_fmt == "NCHW":
                        patches = patches.permute(0, 3, 1, 2).contiguous()
                intermediates.append(patches)
        if return_prefix_tokens and self.has_class_token:
            intermediates = list(zip(intermediates, prefixes))
        if intermediates_only:
            return intermediates
        return self._features(x, grid, dtype), intermediates


# --------------------------------------------------------------------------------------------
# registry


def _cfg(**kwargs):
    return {"num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
            "interpolation": "bicubic", "fixed_input_size": False, "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "first_conv": "patch_embed.proj", "classifier": "head",
            "license": "apache-2.0", "paper_ids": "arXiv:2401.09417", **kwargs}


default_cfgs = generate_default_cfgs({
    "vscan_vim_tiny_patch16_224": _cfg(),
    "vscan_vim_small_patch16_224": _cfg(),
    "vscan_vim_base_patch16_224": _cfg(),
    "vscan_vim_micro_patch8_32": _cfg(input_size=(3, 32, 32), crop_pct=1.0, num_classes=10,
                                      notes="small Vim for 32x32 images (the CPU digits demo)"),
    "vscan_vim_ci": _cfg(input_size=(3, 64, 64), notes="CI-sized"),
})


def _create(variant: str, pretrained: bool = False, **kwargs):
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(VisionMamba, variant, pretrained,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


@register_model
def vscan_vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti: 192 wide, 24 bidirectional blocks, middle class token (~7M params)."""
    return _create("vscan_vim_tiny_patch16_224", pretrained, **dict(dict(embed_dim=192, depth=24), **kwargs))


@register_model
def vscan_vim_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S: 384 wide, 24 blocks (~26M params)."""
    return _create("vscan_vim_small_patch16_224", pretrained, **dict(dict(embed_dim=384, depth=24), **kwargs))


@register_model
def vscan_vim_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-B: 768 wide, 24 blocks (~98M params)."""
    return _create("vscan_vim_base_patch16_224", pretrained, **dict(dict(embed_dim=768, depth=24), **kwargs))


@register_model
def vscan_vim_micro_patch8_32(pretrained: bool = False, **kwargs) -> VisionMamba:
    """A small Vim for 32x32 inputs, sized for the CPU digits demo: patch 8 (16 tokens + class
    token), 96 wide, 4 blocks, d_state 4, expand 1 (~0.2M params)."""
    args = dict(img_size=32, patch_size=8, embed_dim=96, depth=4, d_state=4, expand=1.0)
    return _create("vscan_vim_micro_patch8_32", pretrained, **dict(args, **kwargs))


@register_model
def vscan_vim_ci(pretrained: bool = False, **kwargs) -> VisionMamba:
    """CI-sized Vim (32 wide, 3 blocks, d_state 4) for fast CPU tests."""
    args = dict(img_size=64, patch_size=16, embed_dim=32, depth=3, d_state=4)
    return _create("vscan_vim_ci", pretrained, **dict(args, **kwargs))
