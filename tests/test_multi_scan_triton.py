"""The fused multi-direction Triton scan under TRITON_INTERPRET=1 equals the reference path.

The reference (`multi_scan_ref`: gather, scan, scatter, merge) is the definition; the kernel
reads tokens through the index map and merges in grid order. Checked forward and every
gradient for 2-D cross, 3-D tri-orientation and a video order, with shared and per-direction
u, every merge, and the segment-parallel path. float32 kernel vs float64 reference within 1e-4
(norm-wise); bf16 kernel error at most about twice that of the reference run from the same
bf16 inputs.
"""
import importlib

import pytest
import torch

from vscan.scans import get_order

ms = importlib.import_module("vscan.ops.multi_scan")
pytestmark = pytest.mark.interpret
NAMES = ["u", "delta", "A", "B", "C", "D", "delta_bias"]


def make(b, L, K, d, N, shared, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = dict(u=r(b, L, d) if shared else r(b, L, K, d), delta=r(b, L, K, d) * 0.5 - 0.5,
             A=-torch.exp(r(K, d, N) * 0.5), B=r(b, L, K, N), C=r(b, L, K, N), D=r(K, d), delta_bias=r(K, d) * 0.1)
    return {k: v.to(dtype) if k in ("u", "delta", "B", "C") else v for k, v in x.items()}


def run(x, backend, index, merge, gy):
    leaves = {k: (v.detach().double() if backend == "f64" else v.detach()).clone().requires_grad_(True)
              for k, v in x.items()}
    be = "reference" if backend == "f64" else backend
    y = ms.multi_scan(*[leaves[k] for k in NAMES], delta_softplus=True, index=index, merge=merge, backend=be)
    grads = torch.autograd.grad((y.double() * gy).sum(), list(leaves.values()))
    return y.double(), dict(zip(leaves, [g.double() for g in grads]))


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


# Grids just large enough for several chunks of 8 steps (the interpreter runs every program in
# Python, so each extra step costs seconds over the whole file); two cases keep batch 2.
CASES = [  # (order, grid, b, d, N, shared u, merge, segments)
    ("cross", (3, 5), 2, 8, 4, True, "sum", False),
    ("cross", (3, 7), 1, 8, 3, False, "mean", True),        # per-direction u, N not a power of 2, segments
    ("tri_orientation", (3, 2, 3), 1, 8, 4, True, "concat", False),
    ("tri_orientation", (2, 3, 3), 1, 6, 2, False, "sum", True),   # d = 6: a block straddles the end
    ("video", (3, 2, 3), 2, 8, 4, True, "mean", False),
    ("bidirectional", (23,), 1, 8, 1, True, "mean", True),
]
IDS = [f"{c[0]}{'x'.join(map(str, c[1]))}-{'shared' if c[5] else 'perdir'}-{c[6]}{'-seg' if c[7] else ''}"
       for c in CASES]


@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_equals_reference(case, dtype_name, monkeypatch):
    order, grid, b, d, N, shared, merge, seg = case
    monkeypatch.setenv("VSCAN_SCAN_SEQ", "8,1,4,1,4")       # several chunks and channel blocks
    if seg:
        monkeypatch.setenv("VSCAN_SCAN_TARGET_PROGRAMS", "64,24")   # forward and backward split differently
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    index = get_order(order).index(grid)
    K, L = index.shape
    x = make(b, L, K, d, N, shared, dtype, seed=L + d)
    gy = torch.randn((b, L, K, d) if merge == "concat" else (b, L, d), generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64)
    y64, g64 = run(x, "f64", index, merge, gy)
    yk, gk = run(x, "triton", index, merge, gy)
    assert yk.shape == y64.shape
    if dtype == torch.float32:
        assert rel(yk, y64) < 1e-4
        for k in g64:
            assert rel(gk[k], g64[k]) < 1e-4, k
    else:
        yr, gr = run(x, "reference", index, merge, gy)
        assert rel(yk, y64) <= 2 * rel(yr, y64) + 2e-3
        for k in g64:
            assert rel(gk[k], g64[k]) <= 2 * rel(gr[k], g64[k]) + 2e-3, k


def test_single_order_equals_scan_of_permuted_copy():
    """K = 1 (one Hilbert order): the fused scan equals selective_scan on the explicitly permuted
    sequence, scattered back to grid order."""
    from vscan.ops import selective_scan
    index = get_order("hilbert").index((5, 6))[None]          # one order: (1, L)
    x = make(2, 30, 1, 8, 4, False, torch.float32, 7)
    y = ms.multi_scan(*[x[k] for k in NAMES], index=index, merge="sum", backend="triton")
    idx = index[0]
    ref = selective_scan(x["u"][:, idx, 0].double(), x["delta"][:, idx, 0].double(), x["A"][0].double(),
                         x["B"][:, idx].double(), x["C"][:, idx].double(), x["D"][0].double(),
                         delta_bias=x["delta_bias"][0].double(), delta_softplus=True, backend="reference")
    back = torch.empty_like(ref)
    back[:, idx] = ref
    assert rel(y.double(), back) < 1e-5


def test_fused_path_is_taken(monkeypatch):
    """On the triton back end multi_scan runs the fused kernel, never the gather/scan/scatter path."""
    calls = []
    monkeypatch.setattr(ms, "multi_scan_ref", lambda *a, **k: calls.append(1))
    index = get_order("cross").index((3, 4))
    x = make(1, 12, 4, 4, 2, True, torch.float32, 0)
    y = ms.multi_scan(*[x[k] for k in NAMES], index=index, backend="triton")
    assert not calls and y.shape == (1, 12, 4) and torch.isfinite(y).all()


def test_large_state_falls_back_to_reference(monkeypatch):
    """N > 32 has no fused kernel: multi_scan takes the reference path with the same result."""
    from vscan.kernels.multi_scan import fused_supported
    assert fused_supported(16) and not fused_supported(33)
    calls = []
    ref = ms.multi_scan_ref
    monkeypatch.setattr(ms, "multi_scan_ref", lambda *a, **k: calls.append(1) or ref(*a, **k))
    index = get_order("bidirectional").index((5,))
    x = make(1, 5, 2, 4, 33, True, torch.float32, 0)
    ms.multi_scan(*[x[k] for k in NAMES], index=index, backend="triton")
    assert calls == [1]


LOWRANK_CASES = [("cross", (3, 5), 2, 8, 4, 3, True, "sum", False, ""),            # dt_rank 3 (not 2^k)
                 ("tri_orientation", (2, 3, 3), 1, 6, 2, 4, False, "mean", True, ""),   # per-direction u, segments
                 ("bidirectional", (19,), 2, 8, 1, 2, True, "concat", True, ""),
                 # the backward's N states split over 2 programs: shared du, ddt and dW in parts
                 ("cross", (3, 4), 1, 8, 4, 3, True, "sum", False, "8,1,4,1,4,2"),
                 # channel blocks of 16, the last one partial
                 ("cross", (3, 5), 1, 18, 2, 3, True, "sum", True, "8,1,4,1,16"),
                 # the lean build's own tile (no VSCAN_SCAN_SEQ): one chunk of 64, 3 sub-chunks of 16
                 ("cross", (5, 7), 1, 8, 4, 3, True, "sum", False, "lean")]


@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
@pytest.mark.parametrize("case", LOWRANK_CASES, ids=[f"{c[0]}-R{c[5]}-{c[7]}" + ("-nsplit" if c[9].endswith(",2") else "")
                                                     + ("-bd16" if c[9].endswith(",16") else "")
                                                     + ("-lean" if c[9] == "lean" else "") for c in LOWRANK_CASES])
def test_fused_lowrank_dt_equals_reference(case, dtype_name, monkeypatch):
    """dt_proj applied inside the kernels (delta = low-rank dt (b, L, K, R) with dt_weight (K, d, R))
    equals the reference on the expanded delta: output and every gradient, dt_weight's too."""
    order, grid, b, d, N, R, shared, merge, seg, tile = case
    if tile == "lean":
        monkeypatch.delenv("VSCAN_SCAN_SEQ", raising=False)
    else:
        monkeypatch.setenv("VSCAN_SCAN_SEQ", tile or "8,1,4,1,4")
    if seg:
        monkeypatch.setenv("VSCAN_SCAN_TARGET_PROGRAMS", "64,24")   # forward and backward split differently
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    index = get_order(order).index(grid)
    K, L = index.shape
    g = torch.Generator().manual_seed(L + R)
    x = make(b, L, K, d, N, shared, dtype, seed=L + d)
    x["delta"] = (torch.randn(b, L, K, R, generator=g) * 0.5).to(dtype)        # low-rank dt
    x["dt_weight"] = torch.randn(K, d, R, generator=g) * 0.5
    gy = torch.randn((b, L, K, d) if merge == "concat" else (b, L, d), generator=g, dtype=torch.float64)

    def go(backend):
        leaves = {k: (v.detach().double() if backend == "f64" else v.detach()).clone().requires_grad_(True)
                  for k, v in x.items()}
        be = "reference" if backend == "f64" else backend
        y = ms.multi_scan(*[leaves[k] for k in NAMES], delta_softplus=True, index=index, merge=merge, backend=be,
                          dt_weight=leaves["dt_weight"])
        grads = torch.autograd.grad((y.double() * gy).sum(), list(leaves.values()))
        return y.double(), dict(zip(leaves, [gr.double() for gr in grads]))
    y64, g64 = go("f64")
    yk, gk = go("triton")
    if dtype == torch.float32:
        assert rel(yk, y64) < 1e-4
        for k in g64:
            assert rel(gk[k], g64[k]) < 1e-4, k
    else:
        yr, gr = go("reference")
        assert rel(yk, y64) <= 2 * rel(yr, y64) + 2e-3
        for k in g64:
            assert rel(gk[k], g64[k]) <= 2 * rel(gr[k], g64[k]) + 2e-3, k


def test_lowrank_dt_bad_shapes():
    index = get_order("cross").index((2, 3))
    x = make(1, 6, 4, 4, 2, True, torch.float32, 0)
    args = [x[k] for k in NAMES]
    args[1] = torch.randn(1, 6, 4, 3)
    with pytest.raises(ValueError, match=r"dt_weight: expected \(K, d, dt_rank\)"):
        ms.multi_scan(*args, index=index, dt_weight=torch.randn(4, 5, 3))
    with pytest.raises(ValueError, match=r"delta: expected shape \(1, 6, 4, 2\).*low-rank"):
        ms.multi_scan(*args, index=index, dt_weight=torch.randn(4, 4, 2))


def test_lean_tile_for_lowrank_dt(monkeypatch):
    """The build with dt_proj inside the kernels keeps chunk states every 256 steps (SUB 16);
    the plain build keeps its 64; VSCAN_SCAN_SEQ overrides both."""
    from vscan.kernels.selective_scan import SEQ_TILE, SEQ_TILE_LEAN, _plan
    monkeypatch.delenv("VSCAN_SCAN_SEQ", raising=False)
    lean = _plan(3136, 192, 512, 16, 192, torch.device("cpu"), lean=True)
    plain = _plan(3136, 192, 512, 16, 192, torch.device("cpu"))
    assert (lean["bt"], lean["sub"]) == (SEQ_TILE_LEAN[0], SEQ_TILE_LEAN[2]) == (256, 16)
    assert (plain["bt"], plain["sub"]) == (SEQ_TILE[0], SEQ_TILE[2])
    assert lean["n_chunks"] == 13
    monkeypatch.setenv("VSCAN_SCAN_SEQ", "32,1,4,1")
    assert _plan(3136, 192, 512, 16, 192, torch.device("cpu"), lean=True)["bt"] == 32


def test_lean_register_cap(monkeypatch):
    """The lean build's backward runs under a 128-register cap unless VSCAN_SCAN_BWD says otherwise."""
    from vscan.kernels.selective_scan import SEQ_BWD, SEQ_BWD_LEAN, _seq_bwd
    monkeypatch.delenv("VSCAN_SCAN_BWD", raising=False)
    from vscan.kernels.selective_scan import _plan
    assert _seq_bwd(lean=True) == (bool(SEQ_BWD_LEAN[0]), 128)
    assert _seq_bwd() == (bool(SEQ_BWD[0]), SEQ_BWD[1])
    lean = _plan(3136, 192, 512, 16, 192, torch.device("cpu"), lean=True)
    assert (lean["prefetch"], lean["maxnreg"]) == (bool(SEQ_BWD_LEAN[0]), 128)
    assert _plan(3136, 192, 512, 16, 192, torch.device("cpu"))["maxnreg"] == SEQ_BWD[1]
    monkeypatch.setenv("VSCAN_SCAN_BWD", "0,96")
    assert _seq_bwd(lean=True) == (False, 96)


def test_uninitialised_buffers_are_never_read_multi(monkeypatch, poisoned_buffers):
    """As test_selective_scan_triton's poisoned-buffer test, on the multi-direction path, whose
    backward gets no last-state gradient (dlast None: the host zeroes the carry's end slot):
    NaN-filled state, summary and carry buffers leave forward and gradients equal to float64."""
    poisoned = poisoned_buffers
    monkeypatch.setenv("VSCAN_SCAN_SEQ", "8,1,8,1,4")
    monkeypatch.setenv("VSCAN_SCAN_TARGET_PROGRAMS", "64,24")
    index = get_order("cross").index((3, 7))
    K, L = index.shape
    x = make(1, L, K, 8, 3, False, torch.float32, seed=7)
    gy = torch.randn(1, L, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y64, g64 = run(x, "f64", index, "sum", gy)
    yk, gk = run(x, "triton", index, "sum", gy)
    assert len(poisoned) >= 4
    assert rel(yk, y64) < 1e-4
    for k in g64:
        assert torch.isfinite(gk[k]).all() and rel(gk[k], g64[k]) < 1e-4, k
