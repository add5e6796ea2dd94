"""BidirectionalMamba and MultiDirMamba: shapes, gradients, equality with explicit per-direction
computations, meta device, bad inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

from vscan.layers.bimamba import BidirectionalMamba
from vscan.layers.multidir import MultiDirMamba
from vscan.layers.registry import build_mixer
from vscan.ops.reference import selective_scan_ref
from vscan.scans import AlternatingSchedule, with_cls_token

F64 = torch.float64


def _scan_branch(m_ssm, k, xc, z=None):
    """One direction of the SSM on an already permuted sequence xc (b, L, d_inner)."""
    R, N = m_ssm.dt_rank, m_ssm.d_state
    dt, B, C = (xc @ m_ssm.x_proj_weight[k].T).split([R, N, N], dim=-1)
    y, _ = selective_scan_ref(xc, dt @ m_ssm.dt_proj_weight[k].T, -torch.exp(m_ssm.A_log[k]),
                              B.unsqueeze(2), C.unsqueeze(2), D=m_ssm.D[k], z=z,
                              delta_bias=m_ssm.dt_proj_bias[k], delta_softplus=True)
    return y


def vim_bimamba_v2(m, x):
    """Vim's bimamba v2 written out: flip x and z for the backward branch, gate in each branch,
    flip back, average, out_proj."""
    xs, z = m.in_proj(x).chunk(2, dim=-1)
    d_inner, w = m.d_inner, m.d_conv
    outs = []
    for k, flip in ((0, False), (1, True)):
        xk, zk = (xs.flip(1), z.flip(1)) if flip else (xs, z)
        xc = F.conv1d(F.pad(xk.transpose(1, 2), (w - 1, 0)), m.conv_weight[k].unsqueeze(1), m.conv_bias[k],
                      groups=d_inner)
        y = _scan_branch(m.ssm, k, F.silu(xc).transpose(1, 2), z=zk)
        outs.append(y.flip(1) if flip else y)
    return m.out_proj((outs[0] + outs[1]) / 2)


def test_bimamba_equals_vim():
    torch.manual_seed(0)
    m = BidirectionalMamba(6, d_state=3, d_conv=4, expand=2, dtype=F64)
    x = torch.randn(2, 9, 6, dtype=F64)
    torch.testing.assert_close(m(x), vim_bimamba_v2(m, x), rtol=1e-10, atol=1e-10)


def test_bimamba_shapes_grads_and_registry():
    torch.manual_seed(0)
    m = build_mixer("bimamba", 8, d_state=4)
    assert isinstance(m, BidirectionalMamba)
    x = torch.randn(2, 10, 8, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing and x.grad is not None


def test_bimamba_grid_orders_and_cls_token():
    torch.manual_seed(0)
    m = BidirectionalMamba(8, d_state=2, orders="cross")
    assert m.conv_weight.shape[0] == 4 and m.ssm.A_log.shape[0] == 4
    assert m(torch.randn(1, 12, 8), grid_shape=(3, 4)).shape == (1, 12, 8)
    mc = BidirectionalMamba(8, d_state=2, orders=with_cls_token("bidirectional", "middle"))
    assert mc(torch.randn(1, 7, 8), grid_shape=(2, 3)).shape == (1, 7, 8)
    assert mc(torch.randn(1, 7, 8)).shape == (1, 7, 8)           # 1-D grid of 6 tokens + class token
    with pytest.raises(ValueError, match=r"grid \(3, 4\) with order 'cross' needs a sequence of 12 tokens"):
        m(torch.randn(1, 13, 8), grid_shape=(3, 4))


def test_bimamba_mixed_orders_equal_explicit_when_raster():
    # orders given as a list of names: same parameters, same result as the default
    torch.manual_seed(0)
    a = BidirectionalMamba(4, d_state=2, dtype=F64)
    b = BidirectionalMamba(4, d_state=2, orders=["raster", "raster_rev"], dtype=F64)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 5, 4, dtype=F64)
    torch.testing.assert_close(a(x), b(x))


def ss2d_explicit(m, x):
    """VMamba SS2D (v05_noz) written out with torch transposes and flips (cross scan)."""
    b, H, W, _ = x.shape
    xs = F.silu(m.conv(m.in_proj(x).permute(0, 3, 1, 2)))                  # (b, d, H, W)
    rows, cols = xs.flatten(2).transpose(1, 2), xs.transpose(2, 3).flatten(2).transpose(1, 2)
    seqs = [rows, cols, rows.flip(1), cols.flip(1)]
    ys = [_scan_branch(m.ssm, k, s) for k, s in enumerate(seqs)]
    d = ys[0].shape[-1]
    unc = lambda y: y.view(b, W, H, d).transpose(1, 2).reshape(b, H * W, d)   # noqa: E731
    y = ys[0] + unc(ys[1]) + ys[2].flip(1) + unc(ys[3].flip(1))
    return m.out_proj(m.out_norm(y)).view(b, H, W, -1)


def test_ss2d_equals_explicit_cross():
    torch.manual_seed(0)
    m = MultiDirMamba(6, d_state=2, dtype=F64)
    x = torch.randn(2, 3, 5, 6, dtype=F64)
    torch.testing.assert_close(m(x), ss2d_explicit(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs, shape", [
    (dict(), (2, 5, 7, 8)),
    (dict(use_z=True, d_state=4, orders="zigzag"), (1, 4, 6, 8)),
    (dict(orders=["local2", "local2_rev", "col", "col_rev"]), (1, 5, 4, 8)),
    (dict(orders="hilbert", merge="mean"), (1, 5, 3, 8)),
    (dict(spatial_dims=3), (1, 2, 3, 4, 8)),                          # tri-orientation by default
    (dict(spatial_dims=3, orders="video"), (1, 3, 2, 2, 8)),
    (dict(spatial_dims=3, orders=AlternatingSchedule(3)(3)), (1, 2, 3, 2, 8)),
    (dict(spatial_dims=4, d_conv=0), (1, 2, 2, 3, 2, 8)),
    (dict(spatial_dims=1), (2, 9, 8)),
])
def test_multidir_shapes_and_grads(kwargs, shape):
    torch.manual_seed(0)
    m = MultiDirMamba(8, **kwargs)
    x = torch.randn(*shape, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing and x.grad is not None


def test_init_like_mamba():
    m = MultiDirMamba(16, d_state=4, dt_min=1e-3, dt_max=1e-1)
    K, d, N = m.ssm.A_log.shape
    assert (K, d, N) == (4, 32, 4) and m.ssm.dt_rank == 1
    torch.testing.assert_close(m.ssm.A_log, torch.log(torch.arange(1, 5.0)).expand(K, d, N))
    assert bool((m.ssm.D == 1).all())
    dt = F.softplus(m.ssm.dt_proj_bias)
    assert bool((dt >= 1e-3 * 0.999).all() and (dt <= 1e-1 * 1.001).all())
    assert m.ssm.x_proj_weight.shape == (4, 1 + 2 * 4, 32) and MultiDirMamba(96).ssm.dt_rank == math.ceil(96 / 16)


def test_meta_device():
    m = MultiDirMamba(8, device="meta")
    assert m(torch.empty(2, 5, 7, 8, device="meta")).shape == (2, 5, 7, 8)
    m3 = MultiDirMamba(8, spatial_dims=3, use_z=True, device="meta")
    assert m3(torch.empty(1, 2, 3, 4, 8, device="meta")).device.type == "meta"
    b = BidirectionalMamba(8, device="meta")
    assert b(torch.empty(2, 6, 8, device="meta"), grid_shape=(2, 3)).shape == (2, 6, 8)
    assert all(p.device.type == "meta" for p in b.parameters())


def test_bad_configs():
    with pytest.raises(ValueError, match="d_conv=0"):
        MultiDirMamba(8, spatial_dims=4)
    with pytest.raises(ValueError, match="merge"):
        MultiDirMamba(8, merge="concat")
    with pytest.raises(ValueError, match="unknown scan order"):
        MultiDirMamba(8, orders="diagonal")
    with pytest.raises(ValueError, match="class tokens"):
        MultiDirMamba(8, orders=with_cls_token("cross"))
    with pytest.raises(ValueError, match=r"expected \(batch, \*grid, 8\) with a 2-D grid"):
        MultiDirMamba(8)(torch.randn(1, 3, 4, 5, 8))
    with pytest.raises(ValueError, match="larger than the grid"):
        MultiDirMamba(8, orders="local4")(torch.randn(1, 3, 5, 8))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fuse_dt_proj_is_the_same_layer(backend, monkeypatch):
    """MultiDirMamba's default, fuse_dt_proj=True (dt_proj applied inside multi_scan), computes
    the same function as fuse_dt_proj=False (delta materialised), output and every gradient,
    with equal weights."""
    from vscan.layers.multidir import MultiDirMamba
    monkeypatch.setenv("VSCAN_BACKEND", backend)
    dtype = torch.float64 if backend == "reference" else torch.float32
    torch.manual_seed(0)
    ref = MultiDirMamba(8, d_state=2, ssm_ratio=1.0, orders="cross", fuse_dt_proj=False, dtype=dtype)
    fused = MultiDirMamba(8, d_state=2, ssm_ratio=1.0, orders="cross", dtype=dtype)
    assert fused.ssm.fuse_dt_proj
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 5, 8, dtype=dtype)
    outs = []
    for m in (ref, fused):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        grads = torch.autograd.grad(y.square().sum(), [xi] + list(m.parameters()))
        outs.append((y.detach(), grads))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[1][0], outs[0][0], **tol)
    for g_fused, g_ref in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(g_fused, g_ref, **tol)
