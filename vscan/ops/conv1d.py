"""Depthwise causal 1-D convolution (Mamba's short conv), token-major."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_same_device, check_shape, check_tensor, describe
from .backend import choose_backend
from .reference import causal_conv1d_ref

ACTIVATIONS = (None, "silu", "swish")


def _check_conv(x, weight, bias, activation):
    check_tensor("weight", weight, rank=2)
    d, w = weight.shape
    if not 2 <= w <= 4:
        raise ValueError(f"weight: kernel width must be 2 to 4, got weight of shape {tuple(weight.shape)}")
    check_tensor("bias", bias, rank=1, optional=True)
    if bias is not None:
        check_shape("bias", bias, (d,), "channels")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return d, w


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, layout: str = "bld",
                  backend: str | None = None):
    """y[t] = act(sum_k weight[:, k] * x[t - w + 1 + k] + bias), zero (or ``initial_state``) before t=0.

    x: (batch, length, channels) for ``layout='bld'`` or (batch, channels, length) for 'bdl';
    weight: (channels, width), width 2..4; initial_state: (batch, channels, width-1).
    """
    check_tensor("x", x, rank=3)
    if layout not in ("bld", "bdl"):
        raise ValueError(f"layout: expected 'bld' or 'bdl', got {layout!r}")
    xt = x if layout == "bld" else x.transpose(1, 2)
    d, w = _check_conv(xt, weight, bias, activation)
    if xt.shape[2] != d:
        raise ValueError(f"x: expected {d} channels (from weight), got {describe(x)} with layout {layout!r}")
    check_tensor("initial_state", initial_state, rank=3, optional=True)
    if initial_state is not None:
        check_shape("initial_state", initial_state, (xt.shape[0], d, w - 1), "batch, channels, width-1")
    check_same_device(x=x, weight=weight, bias=bias, initial_state=initial_state)
    # One path on every device: F.conv1d with groups=channels is cuDNN's depthwise kernel on
    # GPU and has not been the bottleneck in measurements so far, so no Triton version yet.
    choose_backend(x.device, x.dtype == torch.float64, backend)  # validates the request
    y = causal_conv1d_ref(xt, weight, bias, activation, initial_state)
    return y if layout == "bld" else y.transpose(1, 2)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One decode step. x (batch, channels); conv_state (batch, channels, width-1) holds the
    previous inputs and is shifted in place. Returns y (batch, channels)."""
    check_tensor("x", x, rank=2)
    d, w = _check_conv(x, weight, bias, activation)
    check_tensor("conv_state", conv_state, rank=3)
    check_shape("conv_state", conv_state, (x.shape[0], d, w - 1), "batch, channels, width-1")
    window = torch.cat([conv_state, x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)   # (b, d, w)
    y = (window * weight.to(window.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(y.dtype)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    conv_state.copy_(window[..., 1:])
    return y.to(x.dtype)
