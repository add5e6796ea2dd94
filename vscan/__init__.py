"""vscan: scan orders, one selective-scan operator, and Mamba-style models for timm and MONAI.

``import vscan`` registers vscan's models with timm (so ``timm.create_model('vscan_...')`` works).
"""
__version__ = "0.1.0"


def _map_kernels_from_checkout():
    """The Triton kernels live in the top-level kernels/ folder, installed as ``vscan.kernels``
    (pyproject's package-dir). In a plain checkout that is not pip-installed (e.g. a GPU machine
    running ``PYTHONPATH=. python tools/bench_scan.py``) map the folder to that name here."""
    import importlib.util
    import sys
    from pathlib import Path
    if "vscan.kernels" in sys.modules or importlib.util.find_spec("vscan.kernels") is not None:
        return
    init = Path(__file__).resolve().parents[1] / "kernels" / "__init__.py"
    if not init.is_file():
        return
    spec = importlib.util.spec_from_file_location("vscan.kernels", init,
                                                  submodule_search_locations=[str(init.parent)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vscan.kernels"] = mod
    spec.loader.exec_module(mod)


_map_kernels_from_checkout()

from . import ops  # noqa: E402,F401

try:  # models register themselves with timm on import
    from . import models  # noqa: F401
except ImportError as e:  # pragma: no cover - surfaced by tests
    if "vscan" in str(e):
        raise
