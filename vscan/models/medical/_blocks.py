"""Decoder pieces shared by the U-shaped networks, built from MONAI blocks."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import require_monai

require_monai()
from monai.networks.blocks import UnetOutBlock, UnetResBlock  # noqa: E402
from monai.networks.blocks.dynunet_block import get_conv_layer  # noqa: E402


class UpBlock(nn.Module):
    """Transposed conv (kernel = stride) -> concatenate the skip -> MONAI ``UnetResBlock``.
    (MONAI's ``UnetrUpBlock`` with ``res_block=True``, plus ``act`` and ``dropout``.)"""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int,
                 kernel_size, up_stride, norm_name, act, dropout=None):
        super().__init__()
        self.up = get_conv_layer(spatial_dims, in_channels, out_channels, kernel_size=up_stride, stride=up_stride,
                                 conv_only=True, is_transposed=True)
        self.block = UnetResBlock(spatial_dims, out_channels + skip_channels, out_channels, kernel_size=kernel_size,
                                  stride=1, norm_name=norm_name, act_name=act, dropout=dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder(nn.Module):
    """Decoder over encoder outputs ``skips[0..n-1]`` (``skips[i]`` has ``features[i]``
    channels and is ``strides[i]`` coarser than ``skips[i-1]``): n-1 :class:`UpBlock`s, a 1x1
    head, and with ``deep_supervision`` ``deep_supr_num`` extra heads on the next-coarser decoder
    outputs. Training mode with deep supervision returns them stacked on dim 1 (upsampled,
    nearest, to the full output size), as MONAI's DynUNet; otherwise one tensor."""

    def __init__(self, spatial_dims: int, features: Sequence[int], strides: Sequence, kernel_sizes: Sequence,
                 out_channels: int, norm_name, act, dropout=None, deep_supervision: bool = False,
                 deep_supr_num: int = 1):
        super().__init__()
        n = len(features)
        self.ups = nn.ModuleList(
            UpBlock(spatial_dims, features[i], features[i - 1], features[i - 1], kernel_sizes[i - 1], strides[i],
                    norm_name, act, dropout) for i in range(n - 1, 0, -1))
        self.head = UnetOutBlock(spatial_dims, features[0], out_channels)
        self.deep_supervision = deep_supervision
        self.ds_heads = nn.ModuleList(
            UnetOutBlock(spatial_dims, features[k], out_channels) for k in range(1, deep_supr_num + 1)
        ) if deep_supervision else nn.ModuleList()

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        outs = []
        for j, up in enumerate(self.ups):
            x = up(x, skips[len(skips) - 2 - j])
            outs.append(x)                      # decoder levels n-2, ..., 0
        out = self.head(outs[-1])
        if self.training and self.deep_supervision:
            extra = [F.interpolate(h(outs[-1 - k]), size=out.shape[2:]) for k, h in enumerate(self.ds_heads, 1)]
            return torch.stack([out] + extra, dim=1)
        return out
