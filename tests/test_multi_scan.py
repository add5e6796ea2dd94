"""multi_scan reference path: equals independent per-direction scans on explicitly permuted copies."""
import sys
import types

import pytest
import torch

import importlib
ms = importlib.import_module("vscan.ops.multi_scan")  # the module; vscan.ops.multi_scan is the function
from vscan.ops.multi_scan import multi_scan
from vscan.ops.reference import selective_scan_ref
from vscan.scans import get_order

F64 = torch.float64


def make_inputs(b, L, K, d, N, shared=True, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)           # noqa: E731
    u = r(b, L, d) if shared else r(b, L, K, d)
    return dict(u=u, delta=r(b, L, K, d) * 0.5, A=-torch.rand(K, d, N, generator=g, dtype=dtype) - 0.2,
                B=r(b, L, K, N), C=r(b, L, K, N), D=r(K, d), delta_bias=r(K, d) * 0.1)


def explicit(a, forward, backward, merge, softplus=True):
    """Per direction k: permute a copy with forward[k] (torch flips/transposes), scan it with
    the float64 reference, undo with backward[k], merge."""
    K = a["A"].shape[0]
    ys = []
    for k in range(K):
        u = a["u"] if a["u"].dim() == 3 else a["u"][:, :, k]
        y, _ = selective_scan_ref(forward[k](u), forward[k](a["delta"][:, :, k]), a["A"][k],
                                  forward[k](a["B"][:, :, k]).unsqueeze(2), forward[k](a["C"][:, :, k]).unsqueeze(2),
                                  D=a["D"][k], delta_bias=a["delta_bias"][k], delta_softplus=softplus)
        ys.append(backward[k](y))
    y = torch.stack(ys, 2)
    return {"sum": y.sum(2), "mean": y.mean(2), "concat": y}[merge]


def cross_maps(H, W):
    """VMamba CrossScan on token-major (b, H*W, c): row, col (transpose), both reversed."""
    row = lambda x: x                                                         # noqa: E731
    col = lambda x: x.unflatten(1, (H, W)).transpose(1, 2).flatten(1, 2)       # noqa: E731
    col_back = lambda x: x.unflatten(1, (W, H)).transpose(1, 2).flatten(1, 2)  # noqa: E731
    flip = lambda f: (lambda x: f(x).flip(1))                                  # noqa: E731
    forward = [row, col, flip(row), flip(col)]
    backward = [row, col_back, lambda x: x.flip(1), lambda x: col_back(x.flip(1))]
    return forward, backward


def tri_maps(D, H, W):
    """SegMamba: forward, reverse, slice-wise (for each (h, w), all depth slices)."""
    slc = lambda x: x.unflatten(1, (D, H * W)).transpose(1, 2).flatten(1, 2)       # noqa: E731
    slc_back = lambda x: x.unflatten(1, (H * W, D)).transpose(1, 2).flatten(1, 2)  # noqa: E731
    return [lambda x: x, lambda x: x.flip(1), slc], [lambda x: x, lambda x: x.flip(1), slc_back]


@pytest.mark.parametrize("merge", ["sum", "mean", "concat"])
@pytest.mark.parametrize("shared", [True, False])
def test_cross_equals_explicit(merge, shared):
    H, W = 3, 5
    a = make_inputs(2, H * W, 4, 3, 2, shared=shared)
    out = multi_scan(**a, index=get_order("cross").index((H, W)), merge=merge)
    ref = explicit(a, *cross_maps(H, W), merge)
    assert out.dtype == F64 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_tri_orientation_equals_explicit(merge):
    D, H, W = 2, 3, 2
    a = make_inputs(1, D * H * W, 3, 2, 3)
    out = multi_scan(**a, index=get_order("tri_orientation").index((D, H, W)), merge=merge)
    torch.testing.assert_close(out, explicit(a, *tri_maps(D, H, W), merge), rtol=1e-12, atol=1e-12)


def test_video_temporal_first_equals_explicit():
    T, H, W = 3, 2, 2
    a = make_inputs(1, T * H * W, 2, 2, 2, shared=False)
    fwd, bwd = tri_maps(T, H, W)
    out = multi_scan(**a, index=get_order("video").index((T, H, W)), merge="mean")
    torch.testing.assert_close(out, explicit(a, [fwd[0], fwd[2]], [bwd[0], bwd[2]], "mean"), rtol=1e-12, atol=1e-12)


def test_without_D_bias_and_softplus():
    H, W = 2, 3
    a = make_inputs(1, H * W, 4, 2, 2)
    out = multi_scan(a["u"], a["delta"].abs(), a["A"], a["B"], a["C"], delta_softplus=False,
                     index=get_order("cross").index((H, W)))
    a0 = dict(a, D=torch.zeros_like(a["D"]), delta_bias=torch.zeros_like(a["delta_bias"]), delta=a["delta"].abs())
    torch.testing.assert_close(out, explicit(a0, *cross_maps(H, W), "sum", softplus=False))


def test_gradcheck():
    a = make_inputs(1, 6, 4, 2, 2, shared=True, seed=1)
    index = get_order("cross").index((2, 3))
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    args = [a[n].clone().requires_grad_() for n in names]

    def f(*xs):
        return multi_scan(*xs, delta_softplus=True, index=index, merge="sum")

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


def test_gradcheck_per_direction_u_concat():
    a = make_inputs(1, 4, 2, 2, 1, shared=False, seed=2)
    index = get_order("bidirectional").index((4,))
    args = [a[n].clone().requires_grad_() for n in ("u", "delta", "B", "C")]

    def f(u, delta, B, C):
        return multi_scan(u, delta, a["A"], B, C, a["D"], a["delta_bias"], index=index, merge="concat")

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


def test_dtype_and_meta():
    a = make_inputs(2, 6, 2, 3, 2, dtype=torch.float32)
    index = get_order("bidirectional").index((6,))
    assert multi_scan(**a, index=index).dtype == torch.float32
    a16 = dict(a, u=a["u"].bfloat16())
    assert multi_scan(**a16, index=index).dtype == torch.bfloat16
    meta = {k: v.to("meta") for k, v in a.items()}
    out = multi_scan(**meta, index=index.to("meta"), merge="concat")
    assert out.device.type == "meta" and out.shape == (2, 6, 2, 3)


def test_bad_inputs():
    a = make_inputs(1, 6, 4, 2, 2, dtype=torch.float32)
    index = get_order("cross").index((2, 3))
    with pytest.raises(ValueError, match="merge.*'sum', 'mean', 'concat'.*'max'"):
        multi_scan(**a, index=index, merge="max")
    with pytest.raises(TypeError, match="index is required"):
        multi_scan(**a)
    with pytest.raises(ValueError, match=r"index: expected shape \(K, L\) = \(4, 6\)"):
        multi_scan(**a, index=get_order("cross").index((2, 4)))
    with pytest.raises(ValueError, match="permutation"):
        multi_scan(**a, index=torch.zeros(4, 6, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        multi_scan(**a, index=index.float())
    with pytest.raises(ValueError, match=r"delta: expected shape \(1, 6, 4, 2\)"):
        multi_scan(**dict(a, delta=a["delta"][:, :, :2]), index=index)
    with pytest.raises(ValueError, match=r"u: expected"):
        multi_scan(**dict(a, u=torch.randn(1, 6, 3)), index=index)
    with pytest.raises(ValueError, match=r"D: expected shape \(4, 2\)"):
        multi_scan(**dict(a, D=torch.ones(2)), index=index)


def test_dispatch_calls_kernel_with_canonical_args(monkeypatch):
    a = make_inputs(1, 6, 4, 2, 2, dtype=torch.float32)
    index = get_order("cross").index((2, 3))
    seen = {}

    def fake_kernel(u, delta, A, B, C, D, delta_bias, delta_softplus, idx, merge, dt_weight=None):
        seen.update(u=u, idx=idx, merge=merge, softplus=delta_softplus)
        return ms.multi_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus, idx, merge).double()

    monkeypatch.setattr(ms, "choose_backend", lambda device, f64, override=None: "triton")
    monkeypatch.setitem(sys.modules, "vscan.kernels.multi_scan", types.SimpleNamespace(multi_scan_triton=fake_kernel))
    out = multi_scan(**a, index=index, merge="mean", backend="reference")
    assert seen["u"] is a["u"] and seen["idx"] is index and seen["merge"] == "mean" and seen["softplus"] is True
    assert out.dtype == torch.float32
    # kernel module missing -> ImportError -> the reference path, same result
    monkeypatch.setitem(sys.modules, "vscan.kernels.multi_scan", None)
    ref = multi_scan(**a, index=index, merge="mean", backend="reference")
    torch.testing.assert_close(out, ref)
