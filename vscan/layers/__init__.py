"""nn.Modules built on vscan's operators."""
from .mamba import MambaMixer, MambaState, RMSNorm
from .bimamba import BidirectionalMamba
from .multidir import MultiDirMamba, MultiDirSSM
from . import liquid, prob  # noqa: F401  (register the "liquid" and "cfc" mixers)
from .liquid import CfC, LTC, CfCCell, LTCCell, liquid_scan
from .registry import build_mixer, list_mixers, register_mixer

__all__ = ["LTC", "CfC", "LTCCell", "CfCCell", "liquid_scan", "BidirectionalMamba", "MultiDirMamba", "MultiDirSSM", "MambaMixer", "MambaState", "RMSNorm", "build_mixer", "list_mixers", "register_mixer"]
