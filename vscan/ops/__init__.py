"""Operators that layers call. Each dispatches to a Triton kernel for CUDA tensors and to
the PyTorch reference elsewhere (see :mod:`vscan.ops.backend`)."""
from .backend import choose_backend, requested_backend
from .conv1d import causal_conv1d, causal_conv1d_update
from .multi_scan import multi_scan
from .selective_scan import selective_scan
from .state_update import selective_state_update

__all__ = ["selective_scan", "multi_scan", "selective_state_update", "causal_conv1d", "causal_conv1d_update",
           "choose_backend", "requested_backend"]
