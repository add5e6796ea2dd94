"""Kernel launches with less host work than ``kernel[grid](...)``.

Why: a scan forward+backward launches four to six Triton kernels with about 60 arguments
each, and ``JITFunction.run`` redoes per launch what only changes when the arguments'
specialisation does: binding every argument to a fresh dict, ``str()`` of the options for
the cache key, a check of each global the kernel reads. On an H100 host (2026-12-05,
results/bench_scan_host_h100/) the host side of one vim-s-224 forward+backward took about
1.7 ms against 1.0 ms of GPU time, so the GPU waited on Python. Its four launches through
``JITFunction.run`` took about 90 us each; with this path the call took 1077 instead of
1465 us on another H100 host (tools/profile_host.py).

``launch`` keys each call on the tensors' dtypes and 16-byte alignment (what Triton
specialises a pointer on), the other runtime arguments' values (finer than Triton's classes
of integers: equal to 1, divisible by 16, 32- or 64-bit; for the backward's 24 tensors and 46
other arguments that key took 15 us on the CPU of our dev machine, this one 11), and the constexprs
and compile options, so the key is at least as fine as Triton's own. It asks Triton once
per key for the compiled kernel (``warmup``, which compiles or finds exactly what
``kernel[grid]`` would run), and then calls that kernel's launcher directly, as
``CompiledKernel.__getitem__`` does. Anything it does not cover (the interpreter, launch
hooks such as a profiler's, keyword arguments that are not constexprs) goes through
``kernel[grid]``.
``VSCAN_FAST_LAUNCH=0`` turns it off.
"""
from __future__ import annotations

import collections
import os

import triton
from torch import Tensor
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

# (kernel, device, options, argument key) -> (compiled kernel, constexpr tail); keys hold the
# integer arguments' values (shapes, strides), so a run over many shapes starts afresh now and then
_CACHE: dict = {}
_CACHE_MAX = 4096
STATS = collections.Counter()     # launches by path ("fast", "slow"), for tests and benchmarks


def _arg_key(args) -> tuple:
    """A key of the runtime arguments at least as fine as Triton's specialisation: a tensor's
    dtype and its data pointer's offset from 16-byte alignment, and any other argument itself
    (ints, floats, bools: Triton specialises on classes of these values; the value is finer),
    with every argument's type (1, 1.0 and True are equal keys on their own)."""
    return (tuple(map(type, args)),
            tuple([(a.dtype, a.data_ptr() & 15) if isinstance(a, Tensor) else a for a in args]))


def _fast_ok(kernel) -> bool:
    if os.environ.get("VSCAN_FAST_LAUNCH", "1").strip() == "0" or not isinstance(kernel, JITFunction):
        return False
    rt = triton.knobs.runtime if hasattr(triton, "knobs") else None
    return rt is not None and _idle(rt.launch_enter_hook) and _idle(rt.launch_exit_hook)


def _idle(hook) -> bool:
    """No launch hook registered (Triton 3.6 and later keep an empty HookChain there, which the
    launcher calls around every launch, and then builds launch metadata for it)."""
    return hook is None or (hasattr(hook, "calls") and not hook.calls)


def _tail(kernel, n_pos: int, kwargs: dict):
    """The parameters after the positional ones, in signature order: constexpr keyword values
    or defaults. None when a keyword names a runtime parameter (its value would vary)."""
    params = list(kernel.signature.parameters.values())
    constexpr = {p.name for p in kernel.params if p.is_constexpr}
    tail = []
    for p in params[n_pos:]:
        if p.name in kwargs:
            if p.name not in constexpr:
                return None
            tail.append(kwargs[p.name])
        elif p.default is not p.empty:
            tail.append(p.default)
        else:
            return None
    return tail


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, with runtime arguments positional and constexprs /
    compile options (num_warps, maxnreg) as keywords."""
    if not _fast_ok(kernel):
        STATS["slow"] += 1
        kernel[grid](*args, **kwargs)
        return
    device = driver.active.get_current_device()
    key = (id(kernel), device, tuple(kwargs.items()), _arg_key(args))
    entry = _CACHE.get(key)
    if entry is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        tail = _tail(kernel, len(args), kwargs)
        ck = kernel.warmup(*args, grid=grid, **kwargs) if tail is not None else None
        if ck is not None and hasattr(ck, "result"):    # an asynchronous compile
            ck = ck.result()
        if ck is None or not hasattr(ck, "packed_metadata"):
            entry = False
        else:
            ck._init_handles()
            entry = (ck, tail)
        _CACHE[key] = entry
    if entry is False:
        STATS["slow"] += 1
        kernel[grid](*args, **kwargs)
        return
    ck, tail = entry
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    ck.run(grid[0], g1, g2, driver.active.get_current_stream(device), ck.function, ck.packed_metadata, None,
           None, None, *args, *tail)
    STATS["fast"] += 1
