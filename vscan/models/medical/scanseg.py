"""``ScanSegNet``: a SegMamba-style 3-D (and 2-D) segmentation network whose Mamba layers scan
the feature maps in a choice of orders from :mod:`vscan.scans`.

Layout (n = number of stages): a residual block at input resolution (the first skip), a
stride-2 stem, then n stages, each a MONAI ``UnetResBlock`` (stride 2 from the second stage on)
followed by ``depths[i]`` residual multi-direction Mamba blocks (:class:`ScanBlock`:
``x + MultiDirMamba(LayerNorm(x))``), then a decoder of transposed-conv + ``UnetResBlock`` up
blocks and a 1x1 head. Total stride 2**n.

Unlike SegMamba, whose inter-slice scan hard-codes the slice counts of a 128^3 input, the scan
orders' index maps come from each feature map's shape at run time, so any volume size works.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ._common import (ScanBlock, as_tuple, check_dropout, check_input, check_net_args, check_norm_act,
                      check_positive_int, crop_to, pad_to_multiple, per_stage, require_monai)

require_monai()
from monai.networks.blocks import UnetResBlock  # noqa: E402
from monai.networks.blocks.dynunet_block import get_conv_layer  # noqa: E402

from ._blocks import UNetDecoder  # noqa: E402

#: Names accepted by ``orders`` besides any vscan.scans order / set name (or a list of them).
ORDER_PRESETS = {
    "tri": "tri_orientation",            # SegMamba: forward, reverse, inter-slice (depth fastest)
    "cross": "cross",                    # VMamba: rows, columns, both reversed (N-D: axes reversed)
    "hilbert": ["hilbert", "hilbert_rev"],  # a Hilbert curve both ways
    "bidirectional": "bidirectional",    # raster both ways
    "alternating": None,                 # Mamba-ND: one direction per layer, W+ W- H+ H- D+ D- ...
}


def layer_orders(orders, spatial_dims: int, num_layers: int, name: str) -> list:
    """The scan-order spec of each of ``num_layers`` Mamba layers (validated now, so a bad name
    fails at construction)."""
    from vscan.scans import AlternatingSchedule, as_order_set
    if isinstance(orders, str) and orders == "alternating":
        sched = AlternatingSchedule(spatial_dims)
        return [sched(j) for j in range(num_layers)]
    spec = ORDER_PRESETS.get(orders, orders) if isinstance(orders, str) else orders
    try:
        as_order_set(spec)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: orders {orders!r} is not a preset {sorted(ORDER_PRESETS)} nor a vscan.scans "
                         f"order: {e}") from None
    return [spec] * num_layers


class ScanSegNet(nn.Module):
    """Multi-direction-scan segmentation network (see the module docstring).

    Args:
        spatial_dims: 3 (or 2).
        in_channels, out_channels: input channels; output channels (classes incl. background).
        features: channels per stage, e.g. (48, 96, 192, 384); when None ``feature_size * 2**i``
            for ``num_stages`` stages (capped at ``max_features``).
        depths: Mamba blocks per stage (int or per stage; 0 = conv only at that stage).
        orders: 'tri' (SegMamba tri-orientation), 'cross', 'hilbert', 'bidirectional',
            'alternating' (Mamba-ND, one direction per layer), or any vscan.scans order / set
            name or list of them (e.g. ['raster', 'slice_wise']).
        d_state, d_conv, expand: per-direction SSM states, depthwise conv size over the grid
            (0 = none), inner width ratio of the mixer.
        stem_kernel_size: kernel of the stride-2 stem conv (SegMamba: 7).
        norm_name, act, dropout: MONAI norm / activation / dropout for the conv blocks.
        deep_supervision, deep_supr_num: DynUNet-style extra outputs in training mode.
        mamba_fp32: run the scans in float32 outside autocast.
        pad_input: pad inputs to a multiple of 2**num_stages and crop back; False raises instead.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 features: Sequence[int] | None = None, feature_size: int = 48, num_stages: int = 4,
                 max_features: int = 768, depths=2, orders="tri", d_state: int = 16, d_conv: int = 3,
                 expand: float = 2.0, stem_kernel_size: int = 7, norm_name="instance",
                 act=("leakyrelu", {"inplace": True, "negative_slope": 0.01}), dropout=None,
                 deep_supervision: bool = False, deep_supr_num: int = 1, mamba_fp32: bool = True,
                 pad_input: bool = True):
        super().__init__()
        name, sd, self.in_channels, self.out_channels, feats = check_net_args(
            self, spatial_dims, in_channels, out_channels, features, feature_size, num_stages, max_features)
        self.spatial_dims, self.features = sd, feats
        n = len(feats)
        depths = [check_positive_int(d, "depths", name, minimum=0) for d in per_stage(depths, n, "depths", name)]
        stem_k = as_tuple(stem_kernel_size, sd, "stem_kernel_size", name)
        if any(k % 2 == 0 for k in stem_k):
            raise ValueError(f"{name}: stem_kernel_size must be odd, got {stem_kernel_size!r}")
        check_positive_int(d_state, "d_state", name)
        check_positive_int(d_conv, "d_conv", name, minimum=0)
        if not isinstance(expand, (int, float)) or isinstance(expand, bool) or expand <= 0:
            raise ValueError(f"{name}: expand must be a positive number, got {expand!r}")
        dropout = check_dropout(dropout, name)
        check_positive_int(deep_supr_num, "deep_supr_num", name)
        if deep_supervision and deep_supr_num > n - 1:
            raise ValueError(f"{name}: deep_supr_num must be <= num_stages - 1 = {n - 1}, got {deep_supr_num}")
        check_norm_act(norm_name, act, sd, feats, name)
        self.orders = orders
        self.depths = tuple(depths)
        self.total_stride = (2 ** n,) * sd
        self.pad_input = bool(pad_input)
        per_layer = iter(layer_orders(orders, sd, sum(depths), name))

        conv = dict(norm_name=norm_name, act_name=act, dropout=dropout)
        self.full_res = UnetResBlock(sd, in_channels, feats[0], kernel_size=3, stride=1, **conv)
        self.stem = get_conv_layer(sd, in_channels, feats[0], kernel_size=stem_k, stride=2, conv_only=True)
        self.stages = nn.ModuleList()
        for i, f in enumerate(feats):
            c_in = feats[max(i - 1, 0)]
            blocks = [UnetResBlock(sd, c_in, f, kernel_size=3, stride=1 if i == 0 else 2, **conv)]
            blocks += [ScanBlock(f, sd, next(per_layer), d_state=d_state, d_conv=d_conv, expand=expand,
                                 fp32=mamba_fp32) for _ in range(depths[i])]
            self.stages.append(nn.Sequential(*blocks))
        dec_feats = (feats[0],) + tuple(feats)
        dec_strides = [(1,) * sd] + [(2,) * sd] * n
        self.decoder = UNetDecoder(sd, dec_feats, dec_strides, [3] * (n + 1), out_channels, norm_name, act, dropout,
                                   deep_supervision, deep_supr_num)

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    def scan_blocks(self) -> list[ScanBlock]:
        return [m for m in self.modules() if isinstance(m, ScanBlock)]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Skips, finest first: the full-resolution block, then every stage's output."""
        skips = [self.full_res(x)]
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
            skips.append(h)
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.in_channels, type(self).__name__)
        x, size = pad_to_multiple(x, self.total_stride, self.pad_input, type(self).__name__)
        return crop_to(self.decoder(self.encode(x)), size)
