"""Kernel launches with less host work than ``kernel[grid](...)``.

Why: a scan forward+backward launches four to six Triton kernels with about 60 arguments
each, and ``JITFunction.run`` redoes per launch what only changes when the arguments'
specialisation does: binding every argument to a fresh dict, ``str()`` of the options for
the cache key, a check of each global the kernel reads. On an H100 host (2026-12-05,
results/bench_scan_host_h100/) the host side of one vim-s-224 forward+backward took about
1.7 ms against 1.0 ms of GPU time, so the GPU waited on Python. Its four launches through
``JITFunction.run`` took about 90 us each; with this path the call took 1077 instead of
1465 us on another H100 host (tools/profile_host.py).

``launch`` keys each call on what Triton specialises on (tensor dtypes and 16-byte
alignment, integers equal to 1 or divisible by 16 and their width, the constexprs and
compile options: a key at least as fine as Triton's own), asks Triton once per key for the
compiled kernel (``warmup``, which compiles or finds exactly what ``kernel[grid]`` would
run), and then calls that kernel's launcher directly, as ``CompiledKernel.__getitem__``
does. Anything it does not cover (the interpreter, launch hooks such as a profiler's,
keyword arguments that are not constexprs) goes through ``kernel[grid]``.
``VSCAN_FAST_LAUNCH=0`` turns it off.
"""
from __future__ import annotations

import collections
import os

import triton
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

_I32 = 2**31
# (kernel, device, options, argument specialisation) -> (compiled kernel, constexpr tail)
_CACHE: dict = {}
STATS = collections.Counter()     # launches by path ("fast", "slow"), for tests and benchmarks


def _spec(a):
    """What Triton's specialisation can read off one runtime argument (or a finer key)."""
    t = type(a)
    if t is int:
        return (a == 1, a % 16 == 0, -_I32 <= a < _I32)
    if t is float or t is bool or a is None:
        return (t, a if t is bool else None)
    if hasattr(a, "data_ptr"):
        return (a.dtype, a.data_ptr() % 16 == 0)
    return (t, a)       # anything else: its value (hashable constants)


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
    key = (id(kernel), device, tuple(sorted(kwargs.items())), tuple(map(_spec, args)))
    entry = _CACHE.get(key)
    if entry is None:
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
