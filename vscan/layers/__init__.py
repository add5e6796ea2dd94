"""nn.Modules built on vscan's operators."""
from .mamba import MambaMixer, MambaState, RMSNorm
from .bimamba import BidirectionalMamba
from .multidir import MultiDirMamba, MultiDirSSM
from .registry import build_mixer, list_mixers, register_mixer

__all__ = ["BidirectionalMamba", "MultiDirMamba", "MultiDirSSM", "MambaMixer", "MambaState", "RMSNorm", "build_mixer", "list_mixers", "register_mixer"]
