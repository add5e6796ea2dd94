"""vscan.models.vision: timm-registered vision backbones (importing this registers them).

Families (timm module names in brackets): Vision Mamba [vim], VMamba-style hierarchical
[vmamba], MambaVision-style hybrid [mamba_hybrid], VideoMamba-style video [videomamba] and
Mamba-ND volumes [mamba_nd]. Every family has a CI-sized ``vscan_*_ci`` variant.
``timm.list_models('vscan_*')`` lists them all.
"""
from .mamba_hybrid import MambaHybrid
from .mamba_nd import MambaND
from .videomamba import VideoMamba
from .vim import VisionMamba
from .vmamba import VMamba

__all__ = ["VisionMamba", "VMamba", "MambaHybrid", "VideoMamba", "MambaND"]
