"""MONAI segmentation networks: U-Mamba (``UMambaBot``, ``UMambaEnc``), the multi-direction
scanning ``ScanSegNet``, and ``VScanEncoder`` backbones for MONAI's ``FlexibleUNet``.

MONAI takes seconds to import, so nothing here imports it until a name below is first used
(``import vscan`` stays fast and works without MONAI; using a network without MONAI raises an
ImportError saying what to install). The first use also registers the ``vscan-*`` FlexibleUNet
backbones; ``register_flexunet_backbones()`` does it explicitly. When MONAI is already imported
before vscan, the backbones are registered at import.

    >>> from vscan.models.medical import UMambaBot
    >>> net = UMambaBot(spatial_dims=3, in_channels=1, out_channels=4, features=(16, 32, 64, 128))
"""
from __future__ import annotations

import importlib
import sys

_EXPORTS = {
    "UMamba": "umamba", "UMambaBot": "umamba", "UMambaEnc": "umamba",
    "ScanSegNet": "scanseg", "ORDER_PRESETS": "scanseg",
    "VScanEncoder": "flexunet", "register_flexunet_backbones": "flexunet", "BACKBONES": "flexunet",
    "MambaLayer": "_common", "ScanBlock": "_common", "pad_to_multiple": "_common", "crop_to": "_common",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    if mod != "_common":
        importlib.import_module(f"{__name__}.flexunet")   # registers the FlexibleUNet backbones
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if "monai.networks.nets.flexible_unet" in sys.modules:  # MONAI already loaded: register now, never fail import
    try:
        importlib.import_module(f"{__name__}.flexunet")
    except Exception as _e:  # pragma: no cover
        import warnings
        warnings.warn(f"vscan: could not register the FlexibleUNet backbones: {_e}")
