"""Triton kernels under TRITON_INTERPRET=1 on tiny shapes, against the PyTorch reference.

Tolerances: float32 kernel vs the float64 reference within 1e-4 relative (norm-wise); bf16
kernel error at most about twice the error of the reference run from the same bf16 inputs
(the reference computes in float32), plus 2e-3 slack for tiny norms.
"""

import pytest
import torch

from vscan.ops import selective_scan, selective_state_update

pytestmark = pytest.mark.interpret
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def make(b, L, d, N, G, vary, opts, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = dict(u=r(b, L, d), delta=r(b, L, d) * 0.5 - 0.5, A=-torch.exp(r(d, N) * 0.5),
             B=r(b, L, G, N) if vary else r(d, N), C=r(b, L, G, N) if vary else r(d, N),
             D=r(d) if "D" in opts else None, z=r(b, L, d) if "z" in opts else None,
             delta_bias=r(d) * 0.1 if "bias" in opts else None,
             initial_state=r(b, d, N) if "init" in opts else None)
    low = ("u", "delta", "z") + (("B", "C") if vary else ())
    return {k: (v.to(dtype) if (k in low and v is not None) else v) for k, v in x.items()}


def run(x, backend, gy, gl):
    leaves = {k: v.detach().clone().double().requires_grad_(True) if backend == "f64" else
              v.detach().clone().requires_grad_(True) for k, v in x.items() if v is not None}
    be = "reference" if backend == "f64" else backend
    y, h = selective_scan(**{k: leaves.get(k) for k in NAMES}, delta_softplus=True, return_last_state=True,
                          backend=be, out_dtype=torch.float32)
    grads = torch.autograd.grad((y * gy.to(y.dtype)).sum() + (h * gl.to(h.dtype)).sum(), list(leaves.values()))
    return y.double(), h.double(), dict(zip(leaves, [g.double() for g in grads]))


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


CASES = [  # (b, L, d, N, G, vary, opts, segments)
    (2, 37, 8, 4, 2, True, ("D", "z", "bias", "init"), False),
    (2, 70, 8, 4, 1, True, ("D", "z", "bias", "init"), True),     # segment-parallel path
    (1, 20, 6, 3, 3, True, ("z",), False),                         # block straddles groups: atomics; N not 2^k
    (2, 25, 8, 4, 1, False, ("D", "bias"), True),                 # constant B/C
]
# Both kernel families on tiles small enough for several chunks and channel blocks:
# chunked (T, D, warps) and sequential (T, warps, SUB, programs/SM, BLOCK_D[, NSPLIT]); the
# sequential backward also with its N states split over 2 programs, and with T == SUB.
KERNELS = {"sequential": ("sequential", "VSCAN_SCAN_SEQ", "16,1,4,1,4"),
           "sequential-nsplit2": ("sequential", "VSCAN_SCAN_SEQ", "16,1,4,1,4,2"),
           "sequential-t8sub8": ("sequential", "VSCAN_SCAN_SEQ", "8,1,8,1,4"),
           "chunked": ("chunked", "VSCAN_SCAN_TILES", "16,4,1;16,4,1")}
MATRIX = [(k, dt) for k in KERNELS for dt in ("fp32", "bf16") if (k, dt) != ("chunked", "bf16")]


def _keep(case, kernel, dtype_name):
    """The N-split backward on the cases that exercise it (a state tile past the first, N not a
    power of two, groups straddled, constant B/C, segments), fp32 and one bf16: the interpreter
    runs twice the programs, and the long segmented case alone would take a minute. The tile
    whose chunk interval equals SUB (the backward skips its first recompute) in fp32."""
    if kernel == "sequential-t8sub8":
        return dtype_name == "fp32"
    if kernel != "sequential-nsplit2":
        return True
    return case[1] != 70 and (dtype_name == "fp32" or case[3] == 3)


def _case_id(c):
    return f"b{c[0]}L{c[1]}d{c[2]}N{c[3]}G{c[4]}{'var' if c[5] else 'const'}{'-seg' if c[7] else ''}"


PARAMS = [pytest.param(c, k, dt, id=f"{k}-{dt}-{_case_id(c)}") for k, dt in MATRIX for c in CASES if _keep(c, k, dt)]


@pytest.mark.parametrize("case,kernel,dtype_name", PARAMS)
def test_triton_matches_reference(case, kernel, dtype_name, monkeypatch):
    b, L, d, N, G, vary, opts, seg = case
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    if seg:   # forward and backward split differently (the chunked backward keeps the forward's)
        monkeypatch.setenv("VSCAN_SCAN_TARGET_PROGRAMS", "64,12")
    kind, var, tile = KERNELS[kernel]
    monkeypatch.setenv("VSCAN_SCAN_KERNEL", kind)
    monkeypatch.setenv(var, tile)
    x = make(b, L, d, N, G, vary, opts, dtype, seed=L + d)
    g = torch.Generator().manual_seed(1)
    gy, gl = torch.randn(b, L, d, generator=g), torch.randn(b, d, N, generator=g)
    y64, h64, g64 = run(x, "f64", gy, gl)
    yk, hk, gk = run(x, "triton", gy, gl)
    if dtype == torch.float32:
        assert rel(yk, y64) < 1e-4 and rel(hk, h64) < 1e-4
        for k in g64:
            assert rel(gk[k], g64[k]) < 1e-4, k
    else:
        yr, hr, gr = run(x, "reference", gy, gl)
        assert rel(yk, y64) <= 2 * rel(yr, y64) + 2e-3
        assert rel(hk, h64) <= 2 * rel(hr, h64) + 2e-3
        for k in g64:
            assert rel(gk[k], g64[k]) <= 2 * rel(gr[k], g64[k]) + 2e-3, k


@pytest.mark.parametrize("tile", ["16,1,4,1,4", "8,1,8,1,4"])
@pytest.mark.parametrize("with_init", [False, True], ids=["zero-start", "init-and-dlast"])
def test_uninitialised_buffers_are_never_read(tile, with_init, monkeypatch, poisoned_buffers):
    """The sequential path allocates its chunk-state, segment-summary and carry buffers without
    a fill (kernels/selective_scan.py, _uninit). Filled with NaN instead, forward and every
    gradient still match the float64 reference: no slot is read before it is written. Without
    an initial state and without the last state (so no gradient of it) nothing at all is
    filled: the kernels start from zeros themselves (ZERO_START, ZERO_END); the test fails if
    either start reads its slot."""
    poisoned = poisoned_buffers
    monkeypatch.setenv("VSCAN_SCAN_KERNEL", "sequential")
    monkeypatch.setenv("VSCAN_SCAN_SEQ", tile)
    monkeypatch.setenv("VSCAN_SCAN_TARGET_PROGRAMS", "64,12")     # several segments both ways
    opts = ("D", "z", "bias") + (("init",) if with_init else ())
    x = make(2, 70, 8, 4, 1, True, opts, torch.float32, seed=3)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(2, 70, 8, generator=g)
    if with_init:
        gl = torch.randn(2, 8, 4, generator=g)
        y64, h64, g64 = run(x, "f64", gy, gl)
        yk, hk, gk = run(x, "triton", gy, gl)
        assert rel(hk, h64) < 1e-4
    else:
        y64, g64 = run_no_last(x, "f64", gy)
        yk, gk = run_no_last(x, "triton", gy)
    assert len(poisoned) >= 4     # states, the forward's and backward's segment buffers, the carry
    assert rel(yk.double(), y64) < 1e-4
    for k in g64:
        assert torch.isfinite(gk[k]).all() and rel(gk[k].double(), g64[k]) < 1e-4, k


def run_no_last(x, backend, gy):
    """As ``run``, without asking for the last state (the op then returns none, and its gradient
    never exists)."""
    leaves = {k: v.detach().clone().double().requires_grad_(True) if backend == "f64" else
              v.detach().clone().requires_grad_(True) for k, v in x.items() if v is not None}
    be = "reference" if backend == "f64" else backend
    y = selective_scan(**{k: leaves.get(k) for k in NAMES}, delta_softplus=True, backend=be, out_dtype=torch.float32)
    grads = torch.autograd.grad((y * gy.to(y.dtype)).sum(), list(leaves.values()))
    return y.double(), dict(zip(leaves, [g.double() for g in grads]))


def test_vector_bc_loads_need_16_bit_aligned_rows():
    """scan_seq's 16-byte B / C row loads (VEC_BC, the forward) are planned only for bf16 / fp16
    rows whose group bases are 16-byte aligned, and never off a GPU (inline PTX); the GPU suite
    checks their values."""
    from vscan.kernels.selective_scan import _plan, _Problem, _vec_bc, _vec_bc_ok, _vec_bc_tile_ok
    x = torch.zeros(2, 10, 1, 40, dtype=torch.bfloat16)
    assert _vec_bc_ok(x[..., :16], True) and _vec_bc_ok(x[..., 8:24], True)
    assert not _vec_bc_ok(x[..., 1:17], True)             # start not 16-byte aligned
    y = torch.zeros(2, 10, 1, 36, dtype=torch.bfloat16)
    assert not _vec_bc_ok(y[..., :16], True)              # row stride 36: every other row unaligned
    assert _vec_bc_ok(y[:1, :1, :, :16], True)            # ... unless there is only one row
    assert not _vec_bc_ok(x[..., :16].float(), True)      # float32 rows take the plain loads
    assert _vec_bc_ok(torch.zeros(3, 3), False)           # constant B / C: no row loads at all
    u = torch.zeros(2, 10, 32)
    assert not _vec_bc(_Problem(u, u, torch.zeros(1, 32, 16), x[..., :16], x[..., 16:32], None, None, None, True))
    # the tiles: each thread must hold all of its channel's states, 8 at a time (N = 16 in one
    # group, or 4 groups of 16 channels: 16-channel blocks, 2 lanes per channel; N = 12: masked)
    cpu = torch.device("cpu")
    assert _vec_bc_tile_ok(_plan(256, 64, 2, 16, 64, cpu), 16)
    assert not _vec_bc_tile_ok(_plan(256, 64, 2, 16, 16, cpu), 16)
    assert not _vec_bc_tile_ok(_plan(256, 64, 2, 12, 64, cpu), 12)


def test_kernel_choice():
    from vscan.kernels.selective_scan import SEQ_MAX_N, _kernel_kind
    assert _kernel_kind(16) == "sequential" and _kernel_kind(SEQ_MAX_N + 1) == "chunked"


def test_backward_splits_states_from_n32_or_n16_lean(monkeypatch):
    """The plan's default N split (the plain build from N = 32, the lean one from N = 16; both
    measured on an H200) and its overrides."""
    from vscan.kernels.selective_scan import SEQ_NSPLIT, _plan
    monkeypatch.delenv("VSCAN_SCAN_SEQ", raising=False)
    cpu = torch.device("cpu")
    assert SEQ_NSPLIT == 2
    assert _plan(256, 64, 2, 32, 64, cpu)["nsplit"] == 2 and _plan(256, 64, 2, 17, 64, cpu)["nsplit"] == 2
    assert _plan(256, 64, 2, 16, 64, cpu)["nsplit"] == 1 and _plan(256, 64, 2, 1, 64, cpu)["nsplit"] == 1
    assert _plan(256, 64, 2, 16, 64, cpu, lean=True)["nsplit"] == 2
    assert _plan(256, 64, 2, 8, 64, cpu, lean=True)["nsplit"] == 1
    monkeypatch.setenv("VSCAN_SCAN_SEQ", "64,1,8,16,32,1")     # an explicit split wins
    assert _plan(256, 64, 2, 16, 64, cpu)["nsplit"] == 1
    monkeypatch.setenv("VSCAN_SCAN_SEQ", "64,1,8,16,32,3")
    with pytest.raises(ValueError, match="NSPLIT"):
        _plan(256, 64, 2, 16, 64, cpu)


def _brute_segments(L, bt, rows, resident, mode1_cost, seg_cost=0.0):
    """Every split n = 1 .. n_chunks in the same cost model (waves x steps of the longest segment
    x (1 + mode1_cost) when split, + seg_cost per extra segment): the least cost, fewest segments
    on ties."""
    n_chunks = -(-L // bt)
    best = None
    for n in range(1, n_chunks + 1):
        cps = -(-n_chunks // n)
        n_seg = -(-n_chunks // cps)
        cost = (-(-rows * n_seg // resident) * min(cps * bt, L) * (1 + (mode1_cost if n_seg > 1 else 0))
                + seg_cost * (n_seg - 1))
        if best is None or cost < best[0] - 1e-9 or (abs(cost - best[0]) < 1e-9 and n_seg < best[1]):
            best = (cost, n_seg, cps)
    return best[1], best[2]


def test_segment_split_fits_waves():
    """The sequential forward's split (rows x segments programs, in waves of `resident`): the
    shapes of issue 2 on an H200 (132 SMs, 25 forward programs per SM at N = 16; the splits
    results/bench_scan_split_h200 recorded), and the search over distinct chunks-per-segment
    values against trying every split. The backward's rule: the most segments in at most three
    waves, the last nearly full."""
    from vscan.kernels.selective_scan import SEQ_FWD_SEG_COST, _bwd_segments, _seq_segments
    assert _seq_segments(2048, 64, 512, 3300, 0.6) == (32, 1)     # text: 5 waves of one-chunk segments
    assert _seq_segments(16384, 64, 96, 3300, 0.6) == (32, 8)     # long: one wave of 3072
    assert _seq_segments(197, 64, 1536, 3300, 0.6) == (1, 4)      # vim-s-224: 1536 programs already
    assert _seq_segments(4097, 64, 192, 3300, 0.6) == (17, 4)     # vim-s-1024
    assert _seq_segments(256, 64, 4, 3300, 0.6) == (4, 1)         # an idle GPU: a segment per chunk
    # the backward (8 programs per SM, 16-step chunks): at text 6 segments (3072 programs, 2.9
    # waves) and at long 32 (2.9 waves), each faster on an H100 than the 5 / 22 of two waves'
    # worth and than 4 / 16; vim-s-224 keeps 2; on a tiny problem (no split fills a wave) every
    # chunk gets its own segment, as before
    assert [_bwd_segments(-(-L // 16), rows, 1056)
            for L, rows in ((2048, 512), (16384, 96), (197, 1536))] == [(6, 22), (32, 32), (2, 7)]
    assert _bwd_segments(19, 6, 1056) == (19, 1)
    for n_chunks, rows, resident in ((128, 512, 1056), (257, 192, 1056), (1000, 7, 500), (3, 4000, 1000)):
        n_seg, cps = _bwd_segments(n_chunks, rows, resident)
        assert (n_seg - 1) * cps < n_chunks <= n_seg * cps
    # the cost per extra segment keeps the training forward (21 programs per SM) at 8-step chunks
    # of the long shape off 2048 one-chunk segments (measured 2.7 vs 1.2 ms on an H100)
    assert _seq_segments(16384, 8, 96, 2772, 0.6) == (2048, 1)
    assert _seq_segments(16384, 8, 96, 2772, 0.6, SEQ_FWD_SEG_COST) == (57, 36)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        L, bt, rows, resident = (int(torch.randint(1, hi, (1,), generator=g)) for hi in (9000, 80, 3000, 3000))
        cost, seg_cost = float(torch.rand(1, generator=g)), float(torch.rand(1, generator=g))
        for sc in (0.0, seg_cost):
            n_seg, cps = _seq_segments(L, bt, rows, resident, cost, sc)
            n_chunks = -(-L // bt)
            assert (n_seg - 1) * cps < n_chunks <= n_seg * cps
            assert (n_seg, cps) == _brute_segments(L, bt, rows, resident, cost, sc), (L, bt, rows, resident, cost, sc)


def test_blocks_per_sm_matches_the_occupancy_calculator():
    from vscan.kernels.selective_scan import _blocks_per_sm
    assert _blocks_per_sm(255, 0, 1) == 8        # the N = 16 backward: 8 one-warp programs per SM
    assert _blocks_per_sm(96, 0, 1) == 21        # the forward
    assert _blocks_per_sm(128, 0, 1) == 16       # the lean backward's register cap
    assert _blocks_per_sm(40, 0, 1) == 32        # capped by 32 blocks per SM
    assert _blocks_per_sm(32, 0, 8) == 8         # capped by 2048 threads
    assert _blocks_per_sm(32, 100 * 1024, 1) == 2


def test_segment_override_rejects_bad_values(monkeypatch):
    from vscan.kernels.selective_scan import _target_override
    monkeypatch.setenv("VSCAN_SCAN_TARGET_PROGRAMS", "64,12")
    assert _target_override(0) == 64 and _target_override(1) == 12
    monkeypatch.setenv("VSCAN_SCAN_TARGET_PROGRAMS", "64")
    assert _target_override(1) == 64
    for bad in ("0", "a,b", "1,2,3"):
        monkeypatch.setenv("VSCAN_SCAN_TARGET_PROGRAMS", bad)
        with pytest.raises(ValueError, match="VSCAN_SCAN_TARGET_PROGRAMS"):
            _target_override(0)


def test_kernel_choice_rejects_bad_requests(monkeypatch):
    from vscan.kernels.selective_scan import _kernel_kind
    monkeypatch.setenv("VSCAN_SCAN_KERNEL", "sequential")
    with pytest.raises(ValueError, match="N <= 32"):
        _kernel_kind(64)
    monkeypatch.setenv("VSCAN_SCAN_KERNEL", "fastest")
    with pytest.raises(ValueError, match="VSCAN_SCAN_KERNEL"):
        _kernel_kind(16)


def test_triton_output_dtype_and_layout():
    x = make(1, 9, 4, 2, 1, True, ("z",), torch.bfloat16, 0)
    y = selective_scan(**{k: x[k] for k in NAMES}, delta_softplus=True, backend="triton")
    assert y.dtype == torch.bfloat16 and y.shape == (1, 9, 4)
    yr = selective_scan(**{k: x[k] for k in NAMES}, delta_softplus=True, backend="reference")
    torch.testing.assert_close(y.float(), yr.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_state_update_steps_equal_full_scan(backend):
    """Applying selective_state_update token by token reproduces the full scan and its last state."""
    torch.manual_seed(0)
    b, L, d, N, G = 2, 7, 6, 4, 2
    x = make(b, L, d, N, G, True, ("D", "z", "bias", "init"), torch.float32, 3)
    y_full, h_full = selective_scan(**{k: x[k] for k in NAMES}, delta_softplus=True, return_last_state=True,
                                    backend="reference")
    state = x["initial_state"].clone()
    ys = [selective_state_update(state, x["u"][:, t], x["delta"][:, t], x["A"], x["B"][:, t], x["C"][:, t],
                                 x["D"], x["z"][:, t], x["delta_bias"], True, backend=backend) for t in range(L)]
    torch.testing.assert_close(torch.stack(ys, 1), y_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, h_full, rtol=1e-5, atol=1e-5)


def test_state_update_b_and_c_with_different_group_counts():
    """B per channel (groups = d) and C shared (1 group): each is read with its own group size."""
    g = torch.Generator().manual_seed(5)
    b, d, N = 2, 6, 4
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    state0 = r(b, d, N)
    args = (r(b, d), r(b, d) * 0.5, -torch.exp(r(d, N) * 0.5), r(b, d, N), r(b, 1, N))
    s_ref, s_tri = state0.clone(), state0.clone()
    y_ref = selective_state_update(s_ref, *args, dt_softplus=True, backend="reference")
    y_tri = selective_state_update(s_tri, *args, dt_softplus=True, backend="triton")
    torch.testing.assert_close(y_tri, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s_tri, s_ref, rtol=1e-5, atol=1e-5)
