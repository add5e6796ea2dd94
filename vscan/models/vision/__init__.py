"""vscan.models.vision: timm-registered vision backbones (importing this registers them).

Families: Vision Mamba (``vim``), VMamba-style hierarchical (``vmamba``), MambaVision-style
hybrid (``mamba_hybrid``), VideoMamba-style video (``videomamba``) and Mamba-ND volumes
(``mamba_nd``); every family also has a CI-sized ``*_ci`` variant.
"""
from .vim import VisionMamba  # noqa: F401

__all__ = ["VisionMamba"]
