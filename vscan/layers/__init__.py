"""nn.Modules built on vscan's operators."""
from .mamba import MambaMixer, MambaState, RMSNorm
from .registry import build_mixer, list_mixers, register_mixer

__all__ = ["MambaMixer", "MambaState", "RMSNorm", "build_mixer", "list_mixers", "register_mixer"]
