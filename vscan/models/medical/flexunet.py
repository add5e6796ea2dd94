"""vscan encoders for MONAI's ``FlexibleUNet``.

``register_flexunet_backbones()`` (run on import of this module, and whenever a vscan medical
network is first used) registers :class:`VScanEncoder` with ``FLEXUNET_BACKBONE``, so

    >>> from monai.networks.nets import FlexibleUNet
    >>> import vscan.models.medical.flexunet  # or vscan.models.medical.register_flexunet_backbones()
    >>> net = FlexibleUNet(in_channels=1, out_channels=3, backbone="vscan-umamba-tiny", spatial_dims=3)

The encoder gives FlexibleUNet its 5 feature maps at strides 2, 4, 8, 16, 32: a U-Mamba_Enc
style residual encoder (``vscan-umamba-*``: a Mamba layer after the stages at strides 8, 16
and 32) or a multi-direction-scan encoder (``vscan-scan-*``: tri-orientation ScanBlocks).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ._common import (MambaLayer, ScanBlock, check_dropout, check_norm_act, check_positive_int, check_spatial_dims,
                      require_monai)

require_monai()
from monai.networks.blocks import BaseEncoder, UnetResBlock  # noqa: E402

#: name -> (kind, features) of the registered backbones.
BACKBONES = {
    "vscan-umamba-tiny": ("umamba", (16, 32, 64, 128, 256)),
    "vscan-umamba-small": ("umamba", (32, 64, 128, 256, 512)),
    "vscan-umamba-base": ("umamba", (48, 96, 192, 384, 768)),
    "vscan-scan-tiny": ("scan", (16, 32, 64, 128, 256)),
    "vscan-scan-small": ("scan", (32, 64, 128, 256, 512)),
}


class VScanEncoder(nn.Module, BaseEncoder):
    """Five-stage encoder, each stage a stride-2 MONAI ``UnetResBlock`` (+ Mamba on the coarse
    stages). ``forward(x)`` returns the 5 feature maps, finest first.

    Args:
        model_name: a key of :data:`BACKBONES` (sets ``kind`` and ``features`` unless given).
        spatial_dims, in_channels, pretrained: as FlexibleUNet passes them (no pretrained weights
            exist: ``pretrained=True`` is a ValueError).
        kind: 'umamba' (raster Mamba layer) or 'scan' (multi-direction ScanBlock with ``orders``).
        features: 5 channel counts.
        mamba_stages: stage indices (0..4) followed by a Mamba layer; default (2, 3, 4).
        orders: scan orders of the 'scan' kind (default tri-orientation).
        norm_name, act, dropout, d_state, d_conv, expand: as the vscan networks.
    """

    def __init__(self, model_name: str = "vscan-umamba-tiny", spatial_dims: int = 3, in_channels: int = 1,
                 pretrained: bool = False, kind: str | None = None, features: Sequence[int] | None = None,
                 mamba_stages: Sequence[int] = (2, 3, 4), orders="tri_orientation",
                 norm_name=("INSTANCE", {"affine": True}), act=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
                 dropout=None, d_state: int = 16, d_conv: int | None = None, expand: float = 2.0):
        super().__init__()
        name = f"VScanEncoder({model_name!r})"
        if model_name not in BACKBONES:
            raise ValueError(f"{name}: unknown model_name; choose from {sorted(BACKBONES)}")
        if pretrained:
            raise ValueError(f"{name}: no pretrained weights are published for vscan encoders; use pretrained=False")
        default_kind, default_feats = BACKBONES[model_name]
        kind = kind or default_kind
        if kind not in ("umamba", "scan"):
            raise ValueError(f"{name}: kind must be 'umamba' or 'scan', got {kind!r}")
        feats = tuple(features) if features is not None else default_feats
        if len(feats) != 5 or any(not isinstance(f, int) or f < 1 for f in feats):
            raise ValueError(f"{name}: features must be 5 positive ints (FlexibleUNet takes 5 maps), got {features!r}")
        sd = check_spatial_dims(spatial_dims, name)
        check_positive_int(in_channels, "in_channels", name)
        if any(not 0 <= int(i) < 5 for i in mamba_stages):
            raise ValueError(f"{name}: mamba_stages must be stage indices in 0..4, got {mamba_stages!r}")
        dropout = check_dropout(dropout, name)
        check_norm_act(norm_name, act, sd, feats, name)
        self.features, self.mamba_stages = feats, tuple(sorted({int(i) for i in mamba_stages}))
        self.stages = nn.ModuleList()
        self.mixers = nn.ModuleDict()
        c_in = in_channels
        for i, f in enumerate(feats):
            self.stages.append(UnetResBlock(sd, c_in, f, kernel_size=3, stride=2, norm_name=norm_name, act_name=act,
                                            dropout=dropout))
            if i in self.mamba_stages:
                self.mixers[str(i)] = (MambaLayer(f, d_state=d_state, d_conv=d_conv or 4, expand=expand)
                                       if kind == "umamba" else
                                       ScanBlock(f, sd, orders, d_state=d_state, d_conv=3 if d_conv is None else d_conv,
                                                 expand=expand))
            c_in = f

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if str(i) in self.mixers:
                x = self.mixers[str(i)](x)
            outs.append(x)
        return outs

    # ---- BaseEncoder interface: one entry per registered name
    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return list(BACKBONES)

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"model_name": n, "spatial_dims": 3, "in_channels": 1, "pretrained": False} for n in BACKBONES]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [tuple(BACKBONES[n][1]) for n in BACKBONES]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5] * len(BACKBONES)


def register_flexunet_backbones() -> list[str]:
    """Register :class:`VScanEncoder` with MONAI's ``FLEXUNET_BACKBONE`` (idempotent); returns the names."""
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
    if not all(n in FLEXUNET_BACKBONE.register_dict for n in BACKBONES):
        FLEXUNET_BACKBONE.register_class(VScanEncoder)
    return list(BACKBONES)


register_flexunet_backbones()
