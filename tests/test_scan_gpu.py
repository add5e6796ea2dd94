"""Compiled Triton kernels on a CUDA GPU against the float64 reference (skipped without one).

The CPU suite runs the kernels under the Triton interpreter, which has no inline PTX; the
paths that use it (the fast exp2 and the warp reduce-scatter of the backward's per-step sums,
``scan_seq._lane_sum``) only run here. Run on a GPU machine with ``TRITON_INTERPRET=0``.
"""
import importlib
import os

import pytest
import torch

from vscan.ops import selective_scan
from vscan.scans import get_order

ms = importlib.import_module("vscan.ops.multi_scan")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                                reason="compiled kernels need a CUDA GPU (and TRITON_INTERPRET=0)")
NAMES = ["u", "delta", "A", "B", "C", "D", "delta_bias"]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _multi(b, grid, d, N, R, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    index = get_order("cross").index(grid, "cuda")
    K, L = index.shape
    x = dict(u=r(b, L, d), delta=r(b, L, K, R) * 0.5, A=-torch.exp(r(K, d, N) * 0.5), B=r(b, L, K, N),
             C=r(b, L, K, N), D=r(K, d), delta_bias=r(K, d) * 0.1, dt_weight=r(K, d, R) * 0.5)
    x = {k: v.to(dtype) if k in ("u", "delta", "B", "C") else v for k, v in x.items()}
    return x, index, r(b, L, d).double()


def _multi_grads(x, index, gy, backend):
    leaves = {k: (v.detach().double() if backend == "f64" else v.detach()).clone().requires_grad_(True)
              for k, v in x.items()}
    y = ms.multi_scan(*[leaves[k] for k in NAMES], delta_softplus=True, index=index, merge="sum",
                      backend="reference" if backend == "f64" else backend, dt_weight=leaves["dt_weight"])
    gr = torch.autograd.grad((y.double() * gy).sum(), list(leaves.values()))
    return y.double(), dict(zip(leaves, gr))


# (N, dt rank, d): N = 16 and 32 split the states over two programs; rank 48 (block 64) takes
# the plain cross-lane sum; d = 40 leaves a partly masked channel block
MULTI = [(1, 1, 64), (4, 3, 64), (16, 6, 64), (16, 12, 40), (32, 6, 64), (8, 48, 64)]


@pytest.mark.parametrize("lane_sum", ["1", "0"])
@pytest.mark.parametrize("N,R,d", MULTI, ids=[f"N{n}-R{r}-d{d}" for n, r, d in MULTI])
def test_fused_lowrank_on_gpu_equals_reference(N, R, d, lane_sum, monkeypatch):
    monkeypatch.setenv("VSCAN_SCAN_LANESUM", lane_sum)
    x, index, gy = _multi(2, (9, 11), d, N, R, torch.float32, seed=N + R + d)
    y64, g64 = _multi_grads(x, index, gy, "f64")
    yk, gk = _multi_grads(x, index, gy, "triton")
    assert rel(yk, y64) < 1e-4
    for k in g64:
        assert rel(gk[k], g64[k]) < 1e-4, k


def test_fused_bf16_on_gpu_within_twice_reference_error():
    x, index, gy = _multi(4, (14, 14), 96, 16, 6, torch.bfloat16, seed=3)
    y64, g64 = _multi_grads(x, index, gy, "f64")
    yr, gr = _multi_grads(x, index, gy, "reference")
    yk, gk = _multi_grads(x, index, gy, "triton")
    assert rel(yk, y64) <= 2 * rel(yr, y64) + 2e-3
    for k in g64:
        assert rel(gk[k], g64[k]) <= 2 * rel(gr[k], g64[k]) + 2e-3, k


# (N, channels, B/C groups): 8 groups of 6 channels straddle the 32-channel blocks (per-element
# dB / dC atomics instead of the warp sum)
SCAN = [(1, 96, 1), (4, 96, 1), (16, 96, 1), (32, 96, 1), (16, 48, 8)]


def _scan_case(N, d, G, seed, dtype=torch.float32):
    """Inputs of one 1-D scan with z gating (b = 2, L = 300; u, delta, B, C, z in ``dtype``) and
    an upstream gradient."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    b, L = 2, 300
    x = dict(u=r(b, L, d), delta=r(b, L, d) * 0.5 - 1.0, A=-torch.exp(r(d, N) * 0.5), B=r(b, L, G, N),
             C=r(b, L, G, N), D=r(d), z=r(b, L, d), delta_bias=r(d) * 0.1)
    x = {k: v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v for k, v in x.items()}
    return x, r(b, L, d).double()


def _scan_grads(x, gy, backend):
    """Output and input gradients of ``selective_scan`` on ``backend`` ("f64": the reference in float64)."""
    lv = {k: (v.double() if backend == "f64" else v).clone().requires_grad_(True) for k, v in x.items()}
    y = selective_scan(lv["u"], lv["delta"], lv["A"], lv["B"], lv["C"], lv["D"], z=lv["z"],
                       delta_bias=lv["delta_bias"], delta_softplus=True,
                       backend="reference" if backend == "f64" else backend)
    gr = torch.autograd.grad((y.double() * gy).sum(), list(lv.values()))
    return y.double(), dict(zip(lv, gr))


@pytest.mark.parametrize("lane_sum", ["1", "0"])
@pytest.mark.parametrize("N,d,G", SCAN, ids=[f"N{n}-d{d}-G{g}" for n, d, g in SCAN])
def test_selective_scan_on_gpu_equals_reference(N, d, G, lane_sum, monkeypatch):
    monkeypatch.setenv("VSCAN_SCAN_LANESUM", lane_sum)
    x, gy = _scan_case(N, d, G, seed=N + G)
    y64, g64 = _scan_grads(x, gy, "f64")
    yk, gk = _scan_grads(x, gy, "triton")
    assert rel(yk, y64) < 1e-4
    for k in g64:
        assert rel(gk[k], g64[k]) < 1e-4, k


def test_lane_sum_is_planned_on_cuda(monkeypatch):
    from vscan.kernels.selective_scan import _plan
    dev = torch.device("cuda")
    monkeypatch.delenv("VSCAN_SCAN_LANESUM", raising=False)
    monkeypatch.delenv("VSCAN_SCAN_SEQ", raising=False)
    assert _plan(3136, 192, 512, 16, 192, dev, lean=True)["lane_sum"]
    monkeypatch.setenv("VSCAN_SCAN_LANESUM", "0")
    assert not _plan(3136, 192, 512, 16, 192, dev, lean=True)["lane_sum"]


def test_segment_split_follows_the_compiled_kernels(monkeypatch):
    """Forward and backward each split the sequence by the occupancy of their compiled kernel
    (registers -> programs per SM; kernels/selective_scan.py, _segments). On this small
    problem the GPU is nearly idle, so both put every chunk in its own segment, and the
    correctness tests above run the backward's own segment sums."""
    from vscan.kernels import selective_scan as ss
    monkeypatch.delenv("VSCAN_SCAN_TARGET_PROGRAMS", raising=False)
    monkeypatch.delenv("VSCAN_SCAN_SEQ", raising=False)
    r = lambda *s: torch.randn(*s, device="cuda")  # noqa: E731
    b, L, d, N = 2, 300, 96, 16
    u = r(b, L, d).requires_grad_(True)
    y = selective_scan(u, r(b, L, d) * 0.5 - 1.0, -torch.exp(r(d, N) * 0.5), r(b, L, 1, N), r(b, L, 1, N),
                       r(d), delta_softplus=True, backend="triton")
    y.sum().backward()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for which in (0, 1):
        s = ss.LAST_SPLIT[which]
        assert s["resident"] and s["resident"] % sms == 0, s
        want = (ss._seq_segments(s["L"], s["bt"], s["rows"], s["resident"], ss.SEQ_FWD_MODE1_COST,
                                 ss.SEQ_FWD_SEG_COST) if which == 0
                else ss._bwd_segments(-(-s["L"] // s["bt"]), s["rows"], s["resident"]))
        assert (s["n_seg"], s["cps"]) == want, s
        assert s["n_seg"] == -(-s["L"] // s["bt"]) > 1, s


def test_cached_launch_path_matches_tritons_own(monkeypatch):
    """kernels/launch.py calls the compiled kernels' launcher directly once it has seen a
    specialisation: the scan takes that path on a GPU, and gives what ``kernel[grid]`` gives
    (forward bit for bit; gradients up to the order of the float32 atomic adds), also when an
    unaligned B / C view changes Triton's specialisation between calls."""
    from vscan.kernels import launch as lk
    g = torch.Generator(device="cuda").manual_seed(5)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    b, L, d, N = 2, 300, 96, 16
    bc = r(b, L, 1, 2 * N + 1)
    base = dict(u=r(b, L, d), delta=r(b, L, d) * 0.5 - 1.0, A=-torch.exp(r(d, N) * 0.5), D=r(d), z=r(b, L, d),
                delta_bias=r(d) * 0.1)
    gy = r(b, L, d)

    def go(B, C):
        lv = {k: v.clone().requires_grad_(True) for k, v in dict(base, B=B, C=C).items()}
        y = selective_scan(lv["u"], lv["delta"], lv["A"], lv["B"], lv["C"], lv["D"], z=lv["z"],
                           delta_bias=lv["delta_bias"], delta_softplus=True, backend="triton")
        return y, torch.autograd.grad((y * gy).sum(), list(lv.values()))
    for B, C in ((bc[..., :N], bc[..., N:2 * N]), (bc[..., 1:N + 1], bc[..., N + 1:])):   # aligned, then not
        monkeypatch.delenv("VSCAN_FAST_LAUNCH", raising=False)
        go(B, C)
        fast = lk.STATS["fast"]
        y1, g1 = go(B, C)
        assert lk.STATS["fast"] > fast
        monkeypatch.setenv("VSCAN_FAST_LAUNCH", "0")
        y0, g0 = go(B, C)
        assert torch.equal(y1, y0)
        for a, c in zip(g1, g0):
            assert rel(a, c) < 1e-6


# (N, groups, dtype): the forward's 16-byte B / C row loads (VEC_BC) for both 16-bit types, with
# one, two and four groups of 8 states per thread. 4 groups of 16 channels make 16-channel
# blocks, whose threads hold half a channel's states each: there the host must not plan the
# vector loads (both runs take the plain ones)
VEC = [(16, 1, torch.bfloat16), (8, 2, torch.bfloat16), (32, 1, torch.bfloat16), (16, 2, torch.float16),
       (16, 4, torch.bfloat16)]


@pytest.mark.parametrize("N,G,dtype", VEC, ids=[f"N{n}-G{g}-{str(t)[6:]}" for n, g, t in VEC])
def test_vector_bc_loads_equal_the_plain_loads(N, G, dtype, monkeypatch):
    """scan_seq's VEC_BC (the forward) reads 8 bf16 / fp16 states per load and unpacks them in
    inline PTX, relying on the order in which Triton hands a thread's states to the asm: a wrong
    order or field shows up as a different output here. The values feed the same arithmetic, so the
    forward agrees with that of the 2-byte loads to float32 rounding (the same arithmetic; the
    compiler may order it differently) and gradients up to the order of the float32 atomic adds;
    both are within twice the low-precision reference's error of float64."""
    from vscan.kernels import selective_scan as ss
    x, gy = _scan_case(N, 64, G, seed=N + G, dtype=dtype)
    assert ss._vec_bc_ok(x["B"], True) and ss._vec_bc_ok(x["C"], True)
    planned, plan_vec = [], ss._vec_bc      # the forward's decision, so that the comparison is not vacuous
    monkeypatch.setattr(ss, "_vec_bc", lambda pr: planned.append(plan_vec(pr)) or planned[-1])

    def go(backend, vec="1"):
        monkeypatch.setenv("VSCAN_SCAN_VEC_BC", vec)
        return _scan_grads(x, gy, backend)
    y64, g64 = go("f64")
    yr, gr = go("reference")
    y1, g1 = go("triton", "1")
    assert planned and planned[-1] == (G < 4)      # 16-channel blocks (4 groups) take the plain loads
    y0, g0 = go("triton", "0")
    assert not planned[-1]
    assert rel(y1, y64) <= 2 * rel(yr, y64) + 1e-3
    for k in g64:
        assert rel(g1[k], g64[k]) <= 2 * rel(gr[k], g64[k]) + 2e-3, k
    assert rel(y1, y0) < 1e-3
    for k in g64:
        assert rel(g1[k], g0[k]) < 1e-5, k
