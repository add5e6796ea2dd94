"""Argument checks shared by the operators: every bad input gets a TypeError or
ValueError that names the argument, what was expected and what came in."""
from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"tensor of shape {tuple(t.shape)} and dtype {t.dtype} on {t.device}"
    return f"{type(t).__name__}"


def check_tensor(name: str, t, rank: int | None = None, optional: bool = False):
    if t is None:
        if optional:
            return None
        raise TypeError(f"{name}: expected a tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {describe(t)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating tensor (float16, bfloat16, float32 or float64), got {describe(t)}"
        )
    if rank is not None and t.dim() != rank:
        raise ValueError(f"{name}: expected a {rank}-D tensor, got {describe(t)}")
    return t


def check_shape(name: str, t: torch.Tensor, expected: tuple, what: str):
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)} ({what}), got {describe(t)}")


def check_same_device(**tensors):
    devs = {k: v.device for k, v in tensors.items() if v is not None}
    first = next(iter(devs.values()), None)
    if any(d != first for d in devs.values()):
        listing = ", ".join(f"{k} on {d}" for k, d in devs.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def check_finite(name: str, t: torch.Tensor):
    """Values must be finite. Checked on CPU always; on an accelerator only with
    ``VSCAN_CHECK_FINITE=1``, since the check reads a flag back to the host (a device sync in
    every scan call, i.e. every layer of every step)."""
    if t.device.type == "meta":
        return
    if t.device.type != "cpu" and os.environ.get("VSCAN_CHECK_FINITE", "0") != "1":
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: must be finite, got non-finite values in {describe(t)}")
