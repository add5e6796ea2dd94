"""vscan: scan orders, one selective-scan operator, and Mamba-style models for timm and MONAI.

``import vscan`` registers vscan's models with timm (so ``timm.create_model('vscan_...')`` works).
"""
__version__ = "0.1.0"

from . import ops  # noqa: E402,F401

try:  # models register themselves with timm on import
    from . import models  # noqa: F401
except ImportError as e:  # pragma: no cover - surfaced by tests
    if "vscan" in str(e):
        raise
