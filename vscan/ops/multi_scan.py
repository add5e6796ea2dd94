"""``multi_scan``: K scan directions over one grid, per-direction parameters, merged in grid order.

Everything is token-major and in grid order (the order of the flattened grid, not of any
scan). Direction k visits the tokens in the order ``index[k]`` (a row of
``ScanOrderSet.index(shape)``), runs the selective scan with its own A, D, delta_bias and
its own per-token delta, B, C, and its outputs are put back in grid order before the K
directions are merged. Per-token inputs (delta, B, C, and u when it differs per direction)
arrive already computed in grid order: projections commute with the permutation, so a layer
computes them once, for all K directions, as one GEMM.

The reference path below gathers, scans and scatters; it is the definition. The Triton path
(``vscan.kernels.multi_scan``) reads tokens through ``index`` inside the kernel and
accumulates the merged output in grid order, so no K permuted copies are written.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_same_device, check_shape, check_tensor, describe
from .backend import choose_backend
from .reference import compute_dtype
from .selective_scan import selective_scan

MERGES = ("sum", "mean", "concat")


def _check_index(index, K, L, u):
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"index: expected a LongTensor (K, L) of visiting orders (ScanOrderSet.index(shape)), "
                        f"got {describe(index)}")
    if index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"index: expected an integer (int64) tensor, got {describe(index)}")
    if index.dim() != 2 or tuple(index.shape) != (K, L):
        raise ValueError(f"index: expected shape (K, L) = ({K}, {L}) (directions, tokens), got {describe(index)}; "
                         f"does the grid shape match the sequence length?")
    if index.device != u.device:
        raise ValueError(f"index: expected it on {u.device} (the device of u), got {describe(index)}")
    # Index maps from ScanOrder are validated when built; a raw CPU index is checked here
    # (cheap, no device sync). CUDA and meta indices are trusted.
    if index.device.type == "cpu" and L > 0:
        ok = torch.equal(index.sort(dim=1).values, torch.arange(L, dtype=index.dtype).expand(K, L))
        if not ok:
            raise ValueError(f"index: every row must be a permutation of 0..{L - 1} (a visiting order), "
                             f"got rows that are not (index of shape {tuple(index.shape)})")
    return index.long()


def check_multi_scan_args(u, delta, A, B, C, D, delta_bias, index, merge, dt_weight=None):
    """Validate the canonical arguments; returns (the index as int64, (batch, L, K, d, N))."""
    if merge not in MERGES:
        raise ValueError(f"merge: expected one of {MERGES}, got {merge!r}")
    check_tensor("u", u)
    if u.dim() not in (3, 4):
        raise ValueError(f"u: expected (batch, L, d) shared by all directions or (batch, L, K, d), got {describe(u)}")
    check_tensor("A", A, rank=3)
    K, d, N = A.shape
    b, L = u.shape[:2]
    if u.shape[-1] != d or (u.dim() == 4 and u.shape[2] != K):
        raise ValueError(f"u: expected (batch, L, {d}) or (batch, L, {K}, {d}) with (K, d) from A {tuple(A.shape)}, "
                         f"got {describe(u)}")
    check_tensor("delta", delta)
    if dt_weight is None:
        check_shape("delta", delta, (b, L, K, d), "batch, L, K, d")
    else:
        check_tensor("dt_weight", dt_weight, rank=3)
        if dt_weight.shape[:2] != (K, d):
            raise ValueError(f"dt_weight: expected (K, d, dt_rank) with (K, d) = ({K}, {d}) from A, "
                             f"got {describe(dt_weight)}")
        check_shape("delta", delta, (b, L, K, dt_weight.shape[2]), "batch, L, K, dt_rank (low-rank dt with dt_weight)")
    for name, t in (("B", B), ("C", C)):
        check_tensor(name, t)
        check_shape(name, t, (b, L, K, N), "batch, L, K, N")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        check_tensor(name, t, optional=True)
        if t is not None:
            check_shape(name, t, (K, d), "K, d")
    check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias, dt_weight=dt_weight)
    index = _check_index(index, K, L, u)
    return index, (b, L, K, d, N)


def multi_scan_ref(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, index=None,
                   merge="sum", backend=None):
    """Gather -> selective scan -> scatter back, per direction; then merge. The definition."""
    K, L = index.shape
    cdt = compute_dtype(u, delta, A)
    inverse = torch.empty_like(index)
    inverse.scatter_(1, index, torch.arange(L, device=index.device).expand(K, L))
    ys = []
    for k in range(K):
        idx = index[k]
        uk = u if u.dim() == 3 else u[:, :, k]
        yk = selective_scan(uk.index_select(1, idx), delta[:, :, k].index_select(1, idx), A[k],
                            B[:, :, k].index_select(1, idx), C[:, :, k].index_select(1, idx),
                            D=None if D is None else D[k],
                            delta_bias=None if delta_bias is None else delta_bias[k],
                            delta_softplus=delta_softplus, out_dtype=cdt, backend=backend)
        ys.append(yk.index_select(1, inverse[k]))                  # back to grid order
    y = torch.stack(ys, dim=2)                                       # (b, L, K, d)
    if merge == "sum":
        y = y.sum(2)
    elif merge == "mean":
        y = y.mean(2)
    return y.to(u.dtype)


def expand_lowrank_dt(dt: torch.Tensor, dt_weight: torch.Tensor) -> torch.Tensor:
    """The full delta (b, L, K, d) = ``einsum('blkr,kdr->blkd', dt, dt_weight)`` from a low-rank
    dt (b, L, K, R) and dt_proj weights (K, d, R), as one contiguous tensor.

    An einsum would return a permuted view of a (K, b*L, d) product, which the scan kernels then
    copy to make contiguous (two delta-sized tensors at once); here each direction's product is
    written straight into its slice of one buffer (one (b, L, d) temporary at a time)."""
    b, L, K, _ = dt.shape
    if K == 1:
        return F.linear(dt, dt_weight[0].to(dt.dtype))
    out = None
    for k in range(K):
        yk = F.linear(dt[:, :, k], dt_weight[k].to(dt.dtype))
        if out is None:
            out = yk.new_empty((b, L, K, yk.shape[-1]))   # a size tuple: MONAI's MetaTensor needs one
        out[:, :, k] = yk
        del yk
    return out


def multi_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, index=None,
               merge: str = "sum", backend: str | None = None, dt_weight=None):
    """K selective scans over one grid, each in its own token order, merged in grid order.

    Args (all token-major, in grid order; K directions, d channels, N states):
        u: (batch, L, d), shared by all directions, or (batch, L, K, d).
        delta: (batch, L, K, d) raw delta (``delta_bias`` added and softplus applied here).
        A: (K, d, N), usually ``-exp(A_log)``.
        B, C: (batch, L, K, N).
        D, delta_bias: (K, d) or None.
        index: LongTensor (K, L) on u's device; row k is direction k's visiting order
            (``ScanOrderSet.index(shape, device)``).
        merge: 'sum' | 'mean' -> (batch, L, d); 'concat' -> (batch, L, K, d).
        backend: override ``VSCAN_BACKEND`` for this call.
        dt_weight: (K, d, dt_rank) dt_proj weights, optional. Then ``delta`` is the low-rank dt
            (batch, L, K, dt_rank) and the raw delta is ``einsum('blkr,kdr->blkd', delta,
            dt_weight)`` (``expand_lowrank_dt``); the Triton path applies it per step inside the
            kernels, so no (batch, L, K, d) delta or delta gradient is ever stored.

    Returns the merged output in u's dtype (the K outputs are accumulated in float32, or
    float64 for float64 inputs). Differentiable in every floating input.
    """
    if index is None:
        raise TypeError("multi_scan: index is required: a LongTensor (K, L) of visiting orders, "
                        "e.g. vscan.scans.get_order('cross').index((H, W), device)")
    index, _ = check_multi_scan_args(u, delta, A, B, C, D, delta_bias, index, merge, dt_weight)
    f64 = compute_dtype(u, delta, A) == torch.float64
    if choose_backend(u.device, f64, backend) == "triton":
        try:
            from vscan.kernels.multi_scan import multi_scan_triton
        except ImportError:
            multi_scan_triton = None
        if multi_scan_triton is not None:
            out = multi_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus, index, merge, dt_weight)
            if out is not None:     # None: a case the fused kernels do not cover (N > 32)
                return out.to(u.dtype)
    if dt_weight is not None:
        delta = expand_lowrank_dt(delta, dt_weight)
    return multi_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus, index, merge, backend)
