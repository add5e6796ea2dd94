"""tools/mem_profile.py: the live-storage tracker against hand-computed byte counts."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mem_profile", ROOT / "tools" / "mem_profile.py")
mp = importlib.util.module_from_spec(_spec)
sys.modules["mem_profile"] = mp           # dataclasses look their module up
_spec.loader.exec_module(mp)


def _fn(x):
    a = x * 2                      # 4 KiB (1024 float32)
    b = a[::2]                     # a view: no new storage
    c = torch.empty(2048, device=x.device)   # 8 KiB
    del a, b                       # a's storage freed here
    d = c + 1                      # 8 KiB: peak = x + c + d = 4 + 8 + 8 KiB
    del c
    return d.sum()


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_peak_of_known_pattern(device):
    x = torch.ones(1024, device=device)
    t = mp.MemTracker(round_to=1)
    t.track(x, "input")
    t.start()
    with t:
        _fn(x)
    assert t.report.start == 4096
    assert t.report.peak == 4096 + 8192 + 8192
    sizes = sorted(n for n, _ in t.report.at_peak)
    assert sizes == [4096, 8192, 8192]


def test_storage_counted_once_and_rounding():
    x = torch.ones(10, device="meta")
    t = mp.MemTracker(round_to=512)
    with t:
        y = x + 1                  # 40 bytes -> 512
        views = [y[1:], y.view(2, 5), y.t() if y.dim() == 2 else y.unsqueeze(0)]
    assert t.report.peak == 512
    assert len(t.live) == 1
    del y, views
    assert t.current == 0


def test_autocast_emulation_casts_and_caches_weights():
    lin = nn.Linear(64, 32).to("meta")
    x = torch.randn(8, 64, device="meta")
    t = mp.MemTracker(round_to=1)
    real = torch.is_autocast_enabled
    with t, mp.AutocastEmulation():
        assert torch.is_autocast_enabled("meta")
        y = lin(x)
        y2 = lin(x)
        assert y.dtype == torch.bfloat16
        assert torch.nn.functional.layer_norm(y, (32,)).dtype == torch.float32
        cached = [n for n, lab in ((v.nbytes, v.label) for v in t.live.values()) if "(32, 64) bfloat16" in lab]
        assert cached == [32 * 64 * 2]             # one cached bf16 weight copy, reused by the 2nd call
    assert torch.is_autocast_enabled is real
    del y, y2


def test_fused_multi_scan_standin_allocations():
    b, L, K, d, N = 2, 100, 2, 8, 4
    u = torch.randn(b, L, K, d, device="meta", dtype=torch.bfloat16)
    delta = torch.randn(b, L, K, d, device="meta", dtype=torch.bfloat16)
    B = torch.randn(b, L, K, N, device="meta", dtype=torch.bfloat16)
    A = torch.randn(K, d, N, device="meta")
    index = torch.zeros(K, L, dtype=torch.long, device="meta")
    t = mp.MemTracker(round_to=1)
    with t, torch.no_grad():
        y = mp.fused_multi_scan_standin(u, delta, A, B, B, None, None, True, index, "mean")
    assert y.shape == (b, L, d) and y.dtype == torch.bfloat16
    # contiguous inputs are not copied; the kernel's int32 index and chunk states are freed when
    # it returns, then the float32 accumulator is cast (both alive): the peak is acc + cast
    acc, out, idx, states = b * L * d * 4, b * L * d * 2, K * L * 4, b * K * 2 * d * N * 4
    assert acc + out > acc + idx + states
    assert t.report.peak == acc + out
    strided = delta.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    t2 = mp.MemTracker(round_to=1)
    with t2, torch.no_grad():     # a non-contiguous delta is copied by the kernel
        mp.fused_multi_scan_standin(u, strided, A, B, B, None, None, True, index, "sum")
    assert t2.report.peak == max(acc + out, b * L * K * d * 2 + idx + states + acc)


def test_fused_multi_scan_standin_lowrank_keeps_lean_chunk_states():
    """With dt_weight (MultiDirMamba's default fuse_dt_proj) the stand-in takes the low-rank dt and
    saves chunk states at the lean build's interval (SEQ_TILE_LEAN), as the kernels do."""
    from vscan.kernels.selective_scan import SEQ_TILE, SEQ_TILE_LEAN
    b, L, K, d, N, R = 2, 600, 2, 8, 4, 3
    u = torch.randn(b, L, d, device="meta", dtype=torch.bfloat16)
    dt = torch.randn(b, L, K, R, device="meta", dtype=torch.bfloat16)
    B = torch.randn(b, L, K, N, device="meta", dtype=torch.bfloat16)
    A = torch.randn(K, d, N, device="meta", requires_grad=True)
    W = torch.randn(K, d, R, device="meta")
    index = torch.zeros(K, L, dtype=torch.long, device="meta")
    sizes = {}
    for name, w in (("lean", W), ("plain", None)):
        t = mp.MemTracker(round_to=1)
        with t:
            y = mp.fused_multi_scan_standin(u, dt if w is not None else dt.new_empty(b, L, K, d), A, B, B,
                                            None, None, True, index, "sum", dt_weight=w)
            sizes[name] = y._mem_profile_saved.shape[1]
    assert sizes == {"lean": -(-L // SEQ_TILE_LEAN[0]) + 1, "plain": -(-L // SEQ_TILE[0]) + 1}
    assert sizes["lean"] < sizes["plain"]


def test_vim_tiny_predicts_and_deit_runs():
    pytest.importorskip("timm")
    r = mp.predict("vscan_vim_tiny_patch16_224", 64, 2)
    params = sum(p.numel() for p in mp.build_model("vscan_vim_tiny_patch16_224", 64).parameters()) * 4
    assert r.start >= params + 2 * 3 * 64 * 64 * 4
    assert r.peak > r.start
    d = mp.predict("deit_tiny_patch16_224", 64, 2)
    assert d.peak > d.start


@pytest.mark.parametrize("chunk", [None, 65])
def test_bimamba_inference_working_set(chunk):
    """Under no_grad, with the fused multi_scan's allocations, BidirectionalMamba's peak stays
    within 8 (b, L, d_inner) float32 tensors: the scan's set is 6 (u and delta, K=2 each, the
    float32 output and its cast), the conv's 7 (u, x, the padded input for the reversed order,
    the conv op's padded copy, conv output, silu; the pads add a few tokens). The code before
    held in_proj's (b, L, 2*d_inner) product and a permuted and a contiguous delta next to the
    scan: 10. With batch passes of one sample (chunk = L tokens) the bound is per sample, plus
    the output buffer."""
    from vscan.layers.bimamba import BidirectionalMamba
    from vscan.scans import with_cls_token
    b, grid, dm = 4, (8, 8), 32
    L, d, K = 65, 64, 2
    m = BidirectionalMamba(dm, d_state=4, orders=with_cls_token("bidirectional"), infer_chunk_tokens=chunk)
    m = m.to("meta")
    x = torch.randn(b, L, dm, device="meta")
    t = mp.MemTracker(round_to=1)
    t.track(x, "x")
    for n_, p in m.named_parameters():
        t.track(p, n_)
    t.start()
    with mp.patched_multi_scan(), torch.no_grad(), t:
        y = m(x, grid)
    assert y.shape == (b, L, dm)
    n = 1 if chunk else b
    unit = n * L * d * 4                                   # one (n, L, d_inner) float32 tensor
    out_buf = b * L * dm * 4 if chunk else 0
    used = t.report.peak - t.report.start - out_buf
    assert 6 * unit <= used <= 8 * unit, t.report.summary()
