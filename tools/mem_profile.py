#!/usr/bin/env python
"""Predict a model's GPU inference peak memory without a GPU: the forward runs on the ``meta``
device (shapes and dtypes only, no data) under a dispatch mode that tracks live tensor storage.

    OMP_NUM_THREADS=1 python tools/mem_profile.py --models vscan_vim_small_patch16_224 \\
        deit_small_patch16_224 --img-size 1024 --batch 8 --top 12

What it models, to match ``tools/bench_vision.py``'s infer cases (``torch.cuda.max_memory_allocated``
over an iteration, weights included, under ``torch.no_grad`` and bf16 autocast over fp32 weights):

- every storage is counted once (views share it), from the op that creates it until the last
  tensor on it dies (a weakref finalizer on the storage; storage PyObjects are preserved while
  any tensor holds them); sizes are rounded up to the CUDA caching allocator's 512 bytes;
- the parameters, buffers and the input batch are live throughout;
- bf16 autocast as on CUDA (:class:`AutocastEmulation`): the matmul/conv/SDPA family casts fp32
  inputs to bf16 and returns bf16, the fp32 family (norms, softmax, exp, pow, ...) casts bf16
  inputs to fp32; casts of leaf parameters are cached until the autocast region ends, as
  autocast's weight-cast cache is (so the bf16 weight copies add up over the forward);
- ``F.scaled_dot_product_attention`` as the flash kernel allocates it: the (B, L, H, Ev) output
  and the (B, H, L) float32 log-sum-exp, nothing quadratic;
- optionally (``fused_multi_scan=True``, the default) ``vscan.ops.multi_scan`` as the fused
  Triton kernel will allocate it: a float32 merged output accumulated in place, then the cast to
  u's dtype, plus the per-chunk state buffers when grad is enabled.

What it cannot see: memory allocated inside kernels (cuBLAS / cuDNN workspaces, which the CUDA
caching allocator also counts), allocator fragmentation, and back-end-specific copies (e.g. a
cuDNN layout conversion). So compare two models in the same run, as the issue's bar does; the
absolute figure is a lower bound.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 2 ** 20
_THIS = os.path.abspath(__file__)


def _round(nbytes: int, to: int) -> int:
    return (nbytes + to - 1) // to * to if to > 1 else nbytes


def _caller() -> str:
    """The first stack frame outside torch and this file (where the allocation was asked for)."""
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if fn != _THIS and f"{os.sep}torch{os.sep}" not in fn and "<" not in fn:
            parts = Path(fn).parts
            short = "/".join(parts[-2:])
            return f"{short}:{f.f_lineno} {f.f_code.co_name}"
        f = f.f_back
    return "?"


@dataclass
class Live:
    nbytes: int
    label: str


@dataclass
class MemReport:
    peak: int = 0
    start: int = 0                        # bytes live when tracking began (weights, input, ...)
    at_peak: list = field(default_factory=list)   # [(nbytes, label)] live at the peak, largest first

    def summary(self, top: int = 10) -> str:
        lines = [f"peak {self.peak / MiB:.1f} MiB (live at start: {self.start / MiB:.1f} MiB)"]
        groups: dict[str, list] = {}
        for n, lab in self.at_peak:
            g = groups.setdefault(lab, [0, 0])
            g[0] += n
            g[1] += 1
        for lab, (n, c) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"  {n / MiB:8.1f} MiB  x{c:<3d} {lab}")
        return "\n".join(lines)


class MemTracker(TorchDispatchMode):
    """Tracks the bytes of live tensor storages: each storage counted once, from creation (any op
    under the mode, or :meth:`track` for tensors made before) until it is freed."""

    def __init__(self, round_to: int = 512, stack: bool = True):
        super().__init__()
        self.round_to, self.stack = round_to, stack
        self.live: dict[int, Live] = {}
        self.current = 0
        self.report = MemReport()

    def track(self, t: torch.Tensor, label: str) -> None:
        if not isinstance(t, torch.Tensor) or t.is_sparse:
            return
        st = t.untyped_storage()
        key = st._cdata
        if key in self.live:
            return
        n = _round(st.nbytes(), self.round_to)
        self.live[key] = Live(n, label)
        weakref.finalize(st, self._free, key)
        self.current += n
        if self.current > self.report.peak:
            self.report.peak = self.current
            self.report.at_peak = sorted(((v.nbytes, v.label) for v in self.live.values()), key=lambda x: -x[0])

    def _free(self, key: int) -> None:
        v = self.live.pop(key, None)
        if v is not None:
            self.current -= v.nbytes

    def start(self) -> None:
        self.report.start = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs, _ = tree_flatten(out)
        tensors = [t for t in outs if isinstance(t, torch.Tensor)]
        if tensors:
            where = _caller() if self.stack else ""
            for t in tensors:
                self.track(t, f"{func.__name__} {tuple(t.shape)} {str(t.dtype).replace('torch.', '')} @ {where}")
        return out


def _fn_set(names, torch_ns=True, method=True, extra=()):
    s = set(extra)
    for n in names:
        if torch_ns and hasattr(torch, n):
            s.add(getattr(torch, n))
        if method and hasattr(torch.Tensor, n):
            s.add(getattr(torch.Tensor, n))
    return s


# CUDA autocast's op lists (aten/src/ATen/autocast_mode.cpp), at the torch-function level.
_LOWER = _fn_set(["matmul", "mm", "bmm", "addmm", "baddbmm", "addbmm", "addmv", "addr", "mv", "einsum",
                  "chain_matmul", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d", "prelu", "__matmul__", "__rmatmul__"],
                 extra=(F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                        F.conv_transpose3d, F.prelu, torch.linalg.multi_dot, torch.linalg.vecdot))
_FP32 = _fn_set(["acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal",
                 "rsqrt", "sinh", "tan", "pow", "softmax", "log_softmax", "cumprod", "cumsum", "dist", "pdist",
                 "cdist", "renorm", "logsumexp", "prod", "sum", "norm", "layer_norm", "group_norm"],
                extra=(F.layer_norm, F.group_norm, F.softmax, F.log_softmax, F.softplus, F.cross_entropy,
                       F.nll_loss, F.mse_loss, F.l1_loss, F.binary_cross_entropy_with_logits, F.kl_div,
                       F.cosine_similarity, F.smooth_l1_loss, F.normalize))


class AutocastEmulation(TorchFunctionMode):
    """CUDA bf16 autocast, emulated for meta / CPU tensors (meta has no autocast): casts at the
    torch-function level by CUDA's op lists; leaf parameter casts cached until exit;
    ``torch.is_autocast_enabled('meta')`` reports it (use on meta/CPU tensors only).
    ``F.scaled_dot_product_attention`` is replaced by what the flash kernel allocates."""

    def __init__(self, dtype=torch.bfloat16, enabled: bool = True, flash_sdpa: bool = True):
        super().__init__()
        self.dtype, self.enabled, self.flash_sdpa = dtype, enabled, flash_sdpa
        self.cache: dict[int, tuple] = {}

    def _cast(self, x, to, src):
        if not (isinstance(x, torch.Tensor) and x.dtype == src):
            return x
        cacheable = to == self.dtype and x.requires_grad and x.is_leaf and not x._is_view()
        if cacheable:
            hit = self.cache.get(id(x))
            if hit is not None and hit[0] is x:
                return hit[1]
        y = x.to(to)
        if cacheable:
            self.cache[id(x)] = (x, y)
        return y

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.flash_sdpa:
            if self.enabled:
                args, kwargs = tree_map(lambda t: self._cast(t, self.dtype, torch.float32), (args, kwargs))
            return _flash_sdpa(*args, **kwargs)
        if self.enabled and func in _LOWER:
            args, kwargs = tree_map(lambda t: self._cast(t, self.dtype, torch.float32), (args, kwargs))
        elif self.enabled and func in _FP32:
            args, kwargs = tree_map(lambda t: self._cast(t, torch.float32, self.dtype), (args, kwargs))
        return func(*args, **kwargs)

    def __enter__(self):
        # code that asks whether autocast is on (torch.is_autocast_enabled(device_type)) hears
        # yes for the emulated device types
        self._saved = (torch.is_autocast_enabled, torch.get_autocast_dtype)
        is_on, get_dtype = self._saved
        emulated = ("meta", "cpu")

        def is_autocast_enabled(*args):
            if args and args[0] in emulated:
                return self.enabled
            return is_on(*args)

        def get_autocast_dtype(device_type):
            return self.dtype if device_type in emulated else get_dtype(device_type)

        torch.is_autocast_enabled, torch.get_autocast_dtype = is_autocast_enabled, get_autocast_dtype
        return super().__enter__()

    def __exit__(self, *exc):
        self.cache.clear()
        torch.is_autocast_enabled, torch.get_autocast_dtype = self._saved
        return super().__exit__(*exc)


def _flash_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Flash attention's allocations: output (..., L, Ev) laid out as (B, L, H, Ev), and the
    float32 log-sum-exp (B, H, L), which the op drops when no grad is kept."""
    *lead, Lq, _ = q.shape
    Ev = v.shape[-1]
    if len(lead) == 2:
        out = torch.zeros(lead[0], Lq, lead[1], Ev, device=q.device, dtype=q.dtype).transpose(1, 2)
    else:
        out = torch.zeros(*lead, Lq, Ev, device=q.device, dtype=q.dtype)
    lse = torch.empty(*lead, Lq, device=q.device, dtype=torch.float32)
    del lse
    return out


def _states(b, K, L, d, N, device, grad, lean=False):
    """The sequential kernels' float32 chunk-state buffer: (b*K, ceil(L/T)+1, d, N) when the
    forward saves for backward, else a few slots (kernels/selective_scan.py ``_forward``); T is
    the chunk of the kernels' sequential tile (``_seq_tile``: the lean one for the build with
    dt_proj inside the kernels)."""
    from vscan.kernels.selective_scan import _seq_tile
    slots = math.ceil(L / _seq_tile(lean)[0]) + 1 if grad else 2
    return torch.zeros(b * K, slots, d, N, device=device, dtype=torch.float32)


def fused_multi_scan_standin(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, index=None,
                             merge="sum", backend=None, dt_weight=None):
    """What the fused Triton multi_scan (kernels/multi_scan.py) allocates, no compute (zeros):
    contiguous copies of u, delta, B, C where they are not contiguous, the int32 index, float32
    A/D/bias, the chunk states, and for 'sum'/'mean' a float32 (b, L, d) output accumulated with
    atomics, cast at the end to u's dtype (vscan.ops.multi_scan). With ``dt_weight`` (the layer's
    default ``fuse_dt_proj``), ``delta`` is the low-rank dt (b, L, K, R), dt_weight gets a
    float32 copy, and chunk states are kept at the lean build's interval."""
    b, L = u.shape[:2]
    K, d, N = A.shape
    grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in (u, delta, A, B, C, D, delta_bias))
    idx = index.to(torch.int32).contiguous()
    u_c, delta_c, B_c, C_c = u.contiguous(), delta.contiguous(), B.contiguous(), C.contiguous()
    A32 = A.float().contiguous()
    D32 = D.float().contiguous() if D is not None else None
    bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
    W32 = dt_weight.float().contiguous() if dt_weight is not None else None
    states = _states(b, K, L, d, N, u.device, grad, lean=dt_weight is not None)
    if merge == "concat":
        out = torch.zeros(b, L, K, d, device=u.device, dtype=u.dtype)
    else:
        acc = torch.zeros(b, L, d, device=u.device, dtype=torch.float32)
        # the kernel's host function returns here (its locals die); vscan.ops.multi_scan casts
        # while its own frame still holds u and delta
        del idx, u_c, delta_c, B_c, C_c, A32, D32, bias32, W32
        saved = states if grad else None
        del states
        out = acc.to(u.dtype)
        if grad:                   # saved for backward: alive as long as the output's graph
            out._mem_profile_saved = saved
    return out


def triton_selective_scan_standin(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                  initial_state=None, return_last_state=False, out_dtype=None, **_):
    """What the Triton selective_scan (kernels/selective_scan.py) allocates for token-major
    (b, L, d) input with grouped B/C: contiguous u/delta/z, float32 params, the chunk states,
    the output in ``out_dtype``. For checking the tracker against a measured reference-path run."""
    b, L, d = u.shape
    N = A.shape[-1]
    grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in (u, delta, A, B, C, D, z, delta_bias))
    keep = [u.contiguous(), delta.contiguous(), z.contiguous() if z is not None else None,
            B if B.stride(-1) == 1 else B.contiguous(), C if C.stride(-1) == 1 else C.contiguous(),
            A.float().contiguous(), _states(b, 1, L, d, N, u.device, grad)]
    out = torch.zeros(b, L, d, device=u.device, dtype=out_dtype or u.dtype)
    del keep
    if return_last_state:
        return out, torch.zeros(b, d, N, device=u.device, dtype=torch.float32)
    return out


def _multi_scan_module():
    """The module vscan.ops.multi_scan (``vscan.ops.multi_scan`` the attribute is the function)."""
    import importlib
    return importlib.import_module("vscan.ops.multi_scan")


@contextlib.contextmanager
def patched_multi_scan(fn=fused_multi_scan_standin):
    """Replace ``vscan.ops.multi_scan.multi_scan`` (and the names layers imported) by ``fn``."""
    import vscan.layers.multidir as md
    import vscan.ops as ops
    ms = _multi_scan_module()
    saved = [(m, m.multi_scan) for m in (ms, md, ops) if hasattr(m, "multi_scan")]
    try:
        for m, _ in saved:
            m.multi_scan = fn
        yield
    finally:
        for m, f in saved:
            m.multi_scan = f


@contextlib.contextmanager
def patched_reference_multi_scan():
    """multi_scan's reference path (gather, K scans, scatter, stack, merge) over the Triton
    selective_scan's allocations: the path the GPU runs today, to check the tracker against
    a measured peak."""
    ms = _multi_scan_module()

    def ref(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, index=None, merge="sum",
            backend=None):
        return ms.multi_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus, index, merge, backend)

    saved = ms.selective_scan
    try:
        ms.selective_scan = triton_selective_scan_standin
        with patched_multi_scan(ref):
            yield
    finally:
        ms.selective_scan = saved


SCAN_MODES = ("fused", "reference", "cpu-reference")


def build_model(name: str, img_size: int, device="meta"):
    """The model as bench_vision builds it (for ``img_size`` when its constructor takes it),
    eval mode, moved to ``device``."""
    import timm

    import vscan  # noqa: F401
    try:
        model = timm.create_model(name, img_size=img_size, num_classes=1000)
    except TypeError:
        model = timm.create_model(name, num_classes=1000)
    return model.to(device).eval()


def profile_forward(model: torch.nn.Module, x: torch.Tensor, amp: bool = True, scan: str = "fused",
                    grad: bool = False, stack: bool = True) -> MemReport:
    """Peak live storage bytes of one ``model(x)`` (weights, buffers and x counted as live).

    ``scan``: 'fused' (multi_scan as the fused Triton kernel allocates), 'reference' (multi_scan's
    reference path over the Triton selective_scan, as on a GPU today) or 'cpu-reference' (the
    code as it runs on this device, nothing patched)."""
    if scan not in SCAN_MODES:
        raise ValueError(f"scan: expected one of {SCAN_MODES}, got {scan!r}")
    tracker = MemTracker(stack=stack)
    for n, p in model.named_parameters():
        tracker.track(p, f"param {n}")
    for n, b in model.named_buffers():
        tracker.track(b, f"buffer {n}")
    tracker.track(x, f"input {tuple(x.shape)}")
    tracker.start()
    ms_ctx = {"fused": patched_multi_scan, "reference": patched_reference_multi_scan,
              "cpu-reference": contextlib.nullcontext}[scan]()
    grad_ctx = torch.enable_grad() if grad else torch.no_grad()
    with ms_ctx, grad_ctx, tracker, AutocastEmulation(enabled=amp):
        out = model(x)
        del out
    return tracker.report


def predict(name: str, img_size: int, batch: int, amp: bool = True, scan: str = "fused",
            device="meta") -> MemReport:
    """Predicted peak of bench_vision's infer case (``name`` at ``img_size``, ``batch``)."""
    model = build_model(name, img_size, device)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    return profile_forward(model, x, amp=amp, scan=scan)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vscan_vim_small_patch16_224", "deit_small_patch16_224"])
    p.add_argument("--img-size", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-amp", action="store_true", help="fp32, no autocast emulation")
    p.add_argument("--scan", choices=SCAN_MODES, default="fused",
                   help="multi_scan as the fused kernel will allocate (default), its reference path over "
                        "the Triton selective_scan (the GPU today), or unpatched")
    p.add_argument("--top", type=int, default=12, help="largest live groups at the peak to list")
    args = p.parse_args(argv)
    peaks = {}
    for name in args.models:
        r = predict(name, args.img_size, args.batch, amp=not args.no_amp, scan=args.scan)
        peaks[name] = r.peak
        print(f"== {name} @ {args.img_size}, batch {args.batch}")
        print(r.summary(args.top), flush=True)
    if len(peaks) > 1:
        print("\n" + "\n".join(f"{n:34s} {v / MiB:8.1f} MiB" for n, v in peaks.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
