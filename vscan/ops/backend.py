"""Back-end choice for every operator. Models never choose: the op does, here.

``VSCAN_BACKEND`` = ``auto`` (default) | ``reference`` | ``triton``.
``auto`` runs the Triton kernels for CUDA tensors (float16/bfloat16/float32) and the PyTorch
reference everywhere else (CPU, meta, float64). ``triton`` forces the kernels; on CPU
tensors they run under the Triton interpreter (``TRITON_INTERPRET=1``, set automatically by
``vscan.kernels`` when no CUDA device is present).
"""
from __future__ import annotations

import functools
import os

import torch

ENV_VAR = "VSCAN_BACKEND"
BACKENDS = ("auto", "reference", "triton")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def requested_backend(override: str | None = None) -> str:
    name = (override or os.environ.get(ENV_VAR, "auto")).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR} / backend: expected one of {BACKENDS}, got {name!r}")
    return name


def choose_backend(device: torch.device, float64: bool, override: str | None = None) -> str:
    name = requested_backend(override)
    if name == "reference" or device.type == "meta":
        return "reference"
    if name == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but triton is not importable; install triton or use 'reference'")
        if float64:
            raise TypeError("the triton back end computes in float32; float64 inputs need the 'reference' back end")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1" and torch.cuda.is_available():
            raise RuntimeError("triton on CPU tensors needs TRITON_INTERPRET=1 set before vscan is imported")
        return "triton"
    if device.type == "cuda" and not float64 and triton_available():
        return "triton"
    return "reference"
