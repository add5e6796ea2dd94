"""Probability-field scan: both moments against step recurrences and a Monte-Carlo simulation
of the same linear-Gaussian system; head, loss, calibration helper, 2-D net, data, errors."""
import math

import pytest
import torch

from vscan.data.timeseries import heteroscedastic_fields
from vscan.layers.prob import (GaussianHead, GaussianNLLLoss, ProbFieldNet2d, ProbScan, coverage,
                               gaussian_nll, prob_scan)
from vscan.ops import selective_scan

f64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one intra-op thread for this module


def _system(b=1, L=10, d=2, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64)  # noqa: E731
    return dict(u=r(b, L, d), delta=0.2 + torch.rand(b, L, d, generator=g, dtype=f64),
                A=-(0.3 + torch.rand(d, N, generator=g, dtype=f64)), B=r(b, L, N), C=r(b, L, N),
                D=r(d), noise=0.5 * torch.rand(b, L, d, generator=g, dtype=f64),
                h0=r(b, d, N), P0=0.3 * torch.rand(b, d, N, generator=g, dtype=f64))


def _moment_steps(s):
    """Plain loop over the mean and variance recurrences."""
    m, P = s["h0"].clone(), s["P0"].clone()
    means, vars_ = [], []
    for t in range(s["u"].shape[1]):
        dt = s["delta"][:, t, :, None]                       # (b, d, 1)
        B, C = s["B"][:, t, None, :], s["C"][:, t, None, :]  # (b, 1, N)
        m = torch.exp(dt * s["A"]) * m + dt * B * s["u"][:, t, :, None]
        P = torch.exp(2 * dt * s["A"]) * P + dt * B * B * s["noise"][:, t, :, None]
        means.append((C * m).sum(-1) + s["D"] * s["u"][:, t])
        vars_.append((C * C * P).sum(-1))
    return torch.stack(means, 1), torch.stack(vars_, 1), m, P


def test_moments_equal_step_recurrences_and_mean_is_selective_scan():
    s = _system(b=2)
    (mean, var), (lm, lv) = prob_scan(s["u"], s["delta"], s["A"], s["B"], s["C"], D=s["D"], noise=s["noise"],
                                      initial_state=s["h0"], initial_var=s["P0"], return_last_state=True)
    rm, rv, rlm, rlv = _moment_steps(s)
    for a, b in ((mean, rm), (var, rv), (lm, rlm), (lv, rlv)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mean, selective_scan(s["u"], s["delta"], s["A"], s["B"], s["C"], D=s["D"],
                                                    initial_state=s["h0"]))
    assert (var >= 0).all()


def test_variance_matches_monte_carlo():
    """Simulate h[t] = exp(dt A) h + dt B u + w, w ~ N(0, dt B^2 q) (independent per state), from
    h[-1] ~ N(h0, P0); the empirical mean and variance of y must agree with the scans to within
    5 Monte-Carlo standard errors (SE(mean) = sqrt(var/M), SE(var) ~ var sqrt(2/(M-1)))."""
    s = _system(b=1, L=10, d=2, N=3, seed=1)
    mean, var = prob_scan(s["u"], s["delta"], s["A"], s["B"], s["C"], D=s["D"], noise=s["noise"],
                          initial_state=s["h0"], initial_var=s["P0"])
    M = 40000
    g = torch.Generator().manual_seed(123)
    h = s["h0"] + s["P0"].sqrt() * torch.randn(M, 2, 3, generator=g, dtype=f64)
    ys = []
    for t in range(10):
        dt = s["delta"][:, t, :, None]
        B, C = s["B"][:, t, None, :], s["C"][:, t, None, :]
        std_w = (dt * B * B * s["noise"][:, t, :, None]).sqrt()
        h = torch.exp(dt * s["A"]) * h + dt * B * s["u"][:, t, :, None] + std_w * torch.randn(
            M, 2, 3, generator=g, dtype=f64)
        ys.append((C * h).sum(-1) + s["D"] * s["u"][:, t])
    y = torch.stack(ys, 1)                                  # (M, L, d)
    emp_mean, emp_var = y.mean(0), y.var(0)
    se_mean = (var[0] / M).sqrt()
    se_var = var[0] * math.sqrt(2 / (M - 1))
    assert ((emp_mean - mean[0]).abs() <= 5 * se_mean + 1e-12).all()
    assert ((emp_var - var[0]).abs() <= 5 * se_var + 1e-12).all()


def test_input_variance_is_exact_for_one_state_and_gate_scales_variance():
    s = _system(b=1, L=8, d=2, N=1, seed=2)
    u_var = 0.4 * torch.rand(1, 8, 2, dtype=f64)
    mean, var = prob_scan(s["u"], s["delta"], s["A"], s["B"], s["C"], u_var=u_var)
    M = 40000
    g = torch.Generator().manual_seed(7)
    h = torch.zeros(M, 2, 1, dtype=f64)
    ys = []
    for t in range(8):
        dt = s["delta"][:, t, :, None]
        ut = s["u"][:, t] + u_var[:, t].sqrt() * torch.randn(M, 2, generator=g, dtype=f64)
        h = torch.exp(dt * s["A"]) * h + dt * s["B"][:, t, None, :] * ut[..., None]
        ys.append((s["C"][:, t, None, :] * h).sum(-1))
    y = torch.stack(ys, 1)
    se_var = var[0] * math.sqrt(2 / (M - 1))
    assert ((y.var(0) - var[0]).abs() <= 5 * se_var + 1e-12).all()
    assert ((y.mean(0) - mean[0]).abs() <= 5 * (var[0] / M).sqrt() + 1e-12).all()
    z = torch.randn(1, 8, 2, dtype=f64)
    mz, vz = prob_scan(s["u"], s["delta"], s["A"], s["B"], s["C"], u_var=u_var, z=z)
    g = torch.nn.functional.silu(z)
    torch.testing.assert_close(mz, mean * g)
    torch.testing.assert_close(vz, var * g * g)


def test_prob_scan_gradcheck_and_bad_inputs():
    s = _system(b=1, L=4, d=2, N=2, seed=3)
    keys = ("u", "delta", "B", "C", "noise")
    args = [s[k].clone().requires_grad_() for k in keys]
    A = s["A"].clone().requires_grad_()

    def fn(u, delta, B, C, noise, A):
        m, v = prob_scan(u, delta, A, B, C, noise=noise)
        return m, v
    assert torch.autograd.gradcheck(fn, (*args, A))
    with pytest.raises(ValueError, match="noise.*>= 0"):
        prob_scan(s["u"], s["delta"], s["A"], s["B"], s["C"], noise=-s["noise"])
    with pytest.raises(ValueError, match="delta: expected the shape of u"):
        prob_scan(s["u"], s["delta"][:, :-1], s["A"], s["B"], s["C"])
    with pytest.raises(ValueError, match="noise: expected the shape of u"):
        prob_scan(s["u"], s["delta"], s["A"], s["B"], s["C"], noise=s["noise"][:, :-1])
    with pytest.raises(TypeError, match="u: expected a 3-D"):
        prob_scan(s["u"][0], s["delta"], s["A"], s["B"], s["C"])
    with pytest.raises(ValueError, match="B"):
        prob_scan(s["u"], s["delta"], s["A"], s["B"][:, :-1], s["C"])


def test_prob_scan_layer_and_head():
    torch.manual_seed(0)
    layer = ProbScan(8, d_state=4)
    x = torch.randn(2, 11, 8)
    mean, var = layer(x)
    assert mean.shape == var.shape == (2, 11, 8) and (var >= 0).all()
    (mean.sum() + var.sum()).backward()
    assert layer.noise_proj.bias.grad is not None and layer.A_log.grad is not None
    with pytest.raises(ValueError, match=r"x: expected \(batch, length, 8\)"):
        layer(torch.randn(2, 8))
    head = GaussianHead(8, out_chans=2, min_var=1e-3)
    with torch.no_grad():
        head.raw_var.bias.fill_(-1e4)                       # softplus floor: never <= min_var
    m, v = head(mean.detach(), var.detach())
    assert m.shape == v.shape == (2, 11, 2) and (v >= 1e-3).all()
    with pytest.raises(ValueError, match="v: expected the shape of m"):
        head(mean, var[..., :3])


def test_gaussian_nll_and_coverage():
    torch.manual_seed(1)
    mean, target = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    var = torch.rand(4, 1, 5, 5) + 0.1
    expect = 0.5 * (var.log() + (target - mean) ** 2 / var + math.log(2 * math.pi)).mean()
    torch.testing.assert_close(gaussian_nll(mean, var, target), expect)
    torch.testing.assert_close(GaussianNLLLoss()(mean, var, target), expect)
    fixed = gaussian_nll(mean, 0.5, target)
    torch.testing.assert_close(fixed, gaussian_nll(mean, torch.full_like(mean, 0.5), target))
    with pytest.raises(ValueError, match="var"):
        gaussian_nll(mean, -var, target)
    with pytest.raises(ValueError, match="mean: expected the shape of target"):
        gaussian_nll(mean[:2], var, target)
    with pytest.raises(ValueError, match="var: expected a shape broadcastable"):
        gaussian_nll(mean, var[..., :2], target)
    with pytest.raises(TypeError, match="var"):
        gaussian_nll(mean, "big", target)
    g = torch.Generator().manual_seed(2)
    sigma = 0.1 + torch.rand(200000, generator=g, dtype=f64)
    y = sigma * torch.randn(200000, generator=g, dtype=f64)
    cov = coverage(torch.zeros_like(y), sigma ** 2, y)
    assert abs(cov[1.0] - 0.6827) < 0.005 and abs(cov[2.0] - 0.9545) < 0.003


def test_prob_field_net_shapes_and_fixed_variance():
    torch.manual_seed(2)
    net = ProbFieldNet2d(dim=8, depth=1, d_state=4)
    mean, var = net(torch.randn(2, 1, 5, 6))
    assert mean.shape == var.shape == (2, 1, 5, 6) and (var > 0).all()
    det = ProbFieldNet2d(dim=8, depth=1, d_state=4, probabilistic=False)
    det.set_fixed_variance(0.25)
    m, v = det(torch.randn(2, 1, 5, 6))
    assert (v == 0.25).all() and m.shape == (2, 1, 5, 6)
    with pytest.raises(ValueError, match=r"x: expected \(batch, 1, H, W\)"):
        net(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="value"):
        det.set_fixed_variance(0.0)


def test_heteroscedastic_data_and_tiny_training_lowers_nll():
    d = heteroscedastic_fields(16, size=6, seed=0)
    assert torch.equal(d["y"], heteroscedastic_fields(16, size=6, seed=0)["y"])
    assert d["sigma"].min() >= 0.05 and d["sigma"].max() <= 0.6
    torch.manual_seed(3)
    net = ProbFieldNet2d(dim=8, depth=1, d_state=4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        mean, var = net(d["x"])
        loss = gaussian_nll(mean, var, d["y"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses
