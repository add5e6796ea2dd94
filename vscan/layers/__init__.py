"""nn.Modules built on vscan's operators."""
from .mamba import MambaMixer, MambaState, RMSNorm
from .bimamba import BidirectionalMamba
from .multidir import MultiDirMamba, MultiDirSSM
from . import liquid, prob  # noqa: F401  (register the "liquid" and "cfc" mixers)
from .liquid import (NCP, AutoNCP, CfC, CfCCell, CfCMixer, FullyConnected, LiquidScan, LTC, LTCCell, Wiring,
                     liquid_scan)
from .prob import GaussianHead, GaussianNLLLoss, ProbFieldNet2d, ProbScan, coverage, gaussian_nll, prob_scan
from .registry import build_mixer, list_mixers, mixer_class, register_mixer

__all__ = ["LTC", "CfC", "LTCCell", "CfCCell", "CfCMixer", "LiquidScan", "liquid_scan", "Wiring", "FullyConnected", "NCP", "AutoNCP", "ProbScan", "prob_scan", "GaussianHead", "GaussianNLLLoss", "gaussian_nll", "coverage", "ProbFieldNet2d", "BidirectionalMamba", "MultiDirMamba", "MultiDirSSM", "MambaMixer", "MambaState", "RMSNorm", "build_mixer", "list_mixers", "mixer_class", "register_mixer"]
