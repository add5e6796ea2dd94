"""Triton kernels only (no nn.Module, no model logic). Installed as ``vscan.kernels``.

Without a CUDA device the kernels run under the Triton interpreter: ``TRITON_INTERPRET=1`` is
set here, before triton is imported, unless the caller already chose a value.
"""
import os

if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch
        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except Exception:  # pragma: no cover
        pass
