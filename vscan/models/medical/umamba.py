"""U-Mamba (Ma, Li, Wang 2024) as MONAI networks: a residual conv encoder / decoder of MONAI
``UnetResBlock``s with U-Mamba's Mamba layer (LayerNorm + Mamba over the raster-flattened
feature map) on the bottleneck (:class:`UMambaBot`) or after encoder stages
(:class:`UMambaEnc`), in 2-D and 3-D.

Both return raw logits (batch, out_channels, *input spatial size); inputs whose size is not a
multiple of the total stride are padded and cropped back (``pad_input=True``) or refused
with a ValueError listing the valid sizes. With ``deep_supervision`` they return, in training
mode only, ``deep_supr_num + 1`` outputs stacked on dim 1, as MONAI's ``DynUNet``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ._common import (MambaLayer, as_tuple, check_dropout, check_input, check_net_args, check_norm_act,
                      check_positive_int, crop_to, pad_to_multiple, per_stage, require_monai, total_stride)

require_monai()
from monai.networks.blocks import UnetResBlock  # noqa: E402

from ._blocks import UNetDecoder  # noqa: E402

DEFAULT_NORM = ("INSTANCE", {"affine": True})
DEFAULT_ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


def resolve_mamba_stages(mamba_stages, n: int, name: str) -> tuple[int, ...]:
    """'bottleneck' -> (n-1,), 'all' -> every stage, 'none' -> (), or explicit stage indices
    (negative ones count from the end)."""
    if isinstance(mamba_stages, str):
        table = {"bottleneck": (n - 1,), "all": tuple(range(n)), "none": ()}
        if mamba_stages not in table:
            raise ValueError(f"{name}: mamba_stages must be 'bottleneck', 'all', 'none' or stage indices, "
                             f"got {mamba_stages!r}")
        return table[mamba_stages]
    try:
        idx = [int(i) for i in mamba_stages]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: mamba_stages must be 'bottleneck', 'all', 'none' or a list of stage indices, "
                         f"got {mamba_stages!r}") from None
    if any(not -n <= i < n for i in idx):
        raise ValueError(f"{name}: mamba_stages {mamba_stages!r} out of range for {n} stages")
    return tuple(sorted({i % n for i in idx}))


class UMamba(nn.Module):
    """Residual U-Net with U-Mamba layers after the encoder stages listed in ``mamba_stages``.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: input channels; output channels (classes incl. background).
        features: channels per stage, e.g. (32, 64, 128, 256, 320). When None, ``feature_size *
            2**i`` capped at ``max_features`` for ``num_stages`` stages.
        kernel_size: conv kernel, one for all stages or one per stage (int or per-axis tuple).
        strides: per-stage downsampling (int or per-axis tuple); default (1, 2, 2, ...). Stage 0
            works at input resolution when its stride is 1.
        blocks_per_stage: residual blocks per encoder stage (int or per stage).
        norm_name, act: MONAI norm / activation names or (name, kwargs) tuples.
        dropout: None or a float in [0, 1) (or a MONAI dropout tuple), in every residual block.
        deep_supervision, deep_supr_num: DynUNet-style extra outputs in training mode.
        mamba_stages: 'bottleneck', 'all', 'none' or stage indices; None takes the class default
            (UMamba / UMambaBot: 'bottleneck', UMambaEnc: 'all').
        d_state, d_conv, expand: Mamba mixer size.
        mamba_residual: add the layer's input back (U-Mamba: False, the output replaces it).
        mamba_fp32: run the Mamba layers in float32 outside autocast.
        pad_input: pad inputs to a multiple of the total stride and crop back; False raises instead.
    """

    default_mamba_stages = "bottleneck"

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 features: Sequence[int] | None = None, feature_size: int = 32, num_stages: int = 5,
                 max_features: int = 320, kernel_size=3, strides=None, blocks_per_stage=1,
                 norm_name=DEFAULT_NORM, act=DEFAULT_ACT, dropout=None, deep_supervision: bool = False,
                 deep_supr_num: int = 1, mamba_stages=None, d_state: int = 16, d_conv: int = 4,
                 expand: float = 2.0, mamba_residual: bool = False, mamba_fp32: bool = True,
                 pad_input: bool = True):
        super().__init__()
        name, sd, self.in_channels, self.out_channels, feats = check_net_args(
            self, spatial_dims, in_channels, out_channels, features, feature_size, num_stages, max_features)
        self.spatial_dims, self.features = sd, feats
        n = len(feats)
        kernels = [as_tuple(k, sd, "kernel_size", name) for k in per_stage(kernel_size, n, "kernel_size", name)]
        if any(k % 2 == 0 for kk in kernels for k in kk):
            raise ValueError(f"{name}: kernel_size must be odd (same padding), got {kernel_size!r}")
        strides = [1] + [2] * (n - 1) if strides is None else strides
        self.strides = [as_tuple(s, sd, "strides", name) for s in per_stage(strides, n, "strides", name)]
        blocks = per_stage(blocks_per_stage, n, "blocks_per_stage", name)
        for b in blocks:
            check_positive_int(b, "blocks_per_stage", name)
        dropout = check_dropout(dropout, name)
        check_positive_int(deep_supr_num, "deep_supr_num", name)
        if deep_supervision and deep_supr_num > n - 2:
            raise ValueError(f"{name}: deep_supr_num must be <= num_stages - 2 = {n - 2}, got {deep_supr_num}")
        for arg, v in (("d_state", d_state), ("d_conv", d_conv)):
            check_positive_int(v, arg, name)
        if not isinstance(expand, (int, float)) or isinstance(expand, bool) or expand <= 0:
            raise ValueError(f"{name}: expand must be a positive number, got {expand!r}")
        check_norm_act(norm_name, act, sd, feats, name)
        if mamba_stages is None:
            mamba_stages = self.default_mamba_stages
        self.mamba_stages = resolve_mamba_stages(mamba_stages, n, name)
        self.total_stride = total_stride(self.strides)
        self.pad_input = bool(pad_input)

        self.stages = nn.ModuleList()
        c_in = in_channels
        for i, (f, k, s, nb) in enumerate(zip(feats, kernels, self.strides, blocks)):
            layers = [UnetResBlock(sd, c_in if j == 0 else f, f, kernel_size=k, stride=s if j == 0 else 1,
                                   norm_name=norm_name, act_name=act, dropout=dropout) for j in range(nb)]
            self.stages.append(nn.Sequential(*layers))
            c_in = f
        self.mamba = nn.ModuleDict({
            str(i): MambaLayer(feats[i], d_state=d_state, d_conv=d_conv, expand=expand, residual=mamba_residual,
                               fp32=mamba_fp32) for i in self.mamba_stages})
        self.decoder = UNetDecoder(sd, feats, self.strides, kernels, out_channels, norm_name, act, dropout,
                                   deep_supervision, deep_supr_num)

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder outputs (after their Mamba layers), finest first."""
        skips = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if str(i) in self.mamba:
                x = self.mamba[str(i)](x)
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.in_channels, type(self).__name__)
        x, size = pad_to_multiple(x, self.total_stride, self.pad_input, type(self).__name__)
        return crop_to(self.decoder(self.encode(x)), size)


class UMambaBot(UMamba):
    """U-Mamba_Bot: one Mamba layer on the bottleneck. Arguments as :class:`UMamba`."""

    default_mamba_stages = "bottleneck"


class UMambaEnc(UMamba):
    """U-Mamba_Enc: a Mamba layer after every encoder stage. The finest stages scan the longest
    sequences; pass e.g. ``mamba_stages=(2, 3, 4)`` to skip them. Arguments as :class:`UMamba`."""

    default_mamba_stages = "all"
