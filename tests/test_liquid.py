"""Liquid layers: LTC against a fine ODE integration, CfC against its closed form, the liquid
scan against its step-by-step recurrence (and the ODE it solves), wirings, API and errors."""

import pytest
import torch

from vscan.data.timeseries import EXTRAP, INTERP, spiral_series, spiral_solution
from vscan.layers.liquid import (NCP, CfC, CfCCell, AutoNCP, FullyConnected, LiquidScan, LTC, LTCCell,
                                 check_timespans, liquid_scan)
from vscan.layers.registry import build_mixer, list_mixers

f64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one intra-op thread for this module


# ----------------------------------------------------------------------------- LTC vs the ODE

def _ltc_rhs(cell, x_mapped, v):
    """dv/dt of the LTC ODE, written from the equation (not from the solver)."""
    p = cell.effective_params()
    sa = p["sensory_w"] * torch.sigmoid(p["sensory_sigma"] * (x_mapped[..., None] - p["sensory_mu"]))
    wa = p["w"] * torch.sigmoid(p["sigma"] * (v[..., None] - p["mu"]))
    current = (p["gleak"] * (p["vleak"] - v)
               + (wa * (p["erev"] - v[:, None, :])).sum(1)
               + (sa * (p["sensory_erev"] - v[:, None, :])).sum(1))
    return current / p["cm"]


def _rk4(fn, v, T, steps):
    h = T / steps
    for _ in range(steps):
        k1 = fn(v)
        k2 = fn(v + 0.5 * h * k1)
        k3 = fn(v + 0.5 * h * k2)
        k4 = fn(v + h * k3)
        v = v + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return v


@torch.no_grad()
def test_ltc_step_matches_fine_rk4_and_is_first_order():
    """The fused semi-implicit scheme is first order: its error after one input step of length T
    is O(T / ode_unfolds). Here (stiffness ~10/time unit, T = 0.5) the default 6 unfolds stay
    within 0.15 of RK4 with 500 steps, and 4x the unfolds cut the error ~4x."""
    torch.manual_seed(0)
    cell = LTCCell(6, 3).double()
    x = cell.map_inputs(torch.randn(4, 3, dtype=f64))
    v0 = 0.5 * torch.randn(4, 6, dtype=f64)
    T = 0.5
    ref = _rk4(lambda v: _ltc_rhs(cell, x, v), v0, T, 500)
    errs = {}
    for unfolds in (6, 48, 192):
        cell.ode_unfolds = unfolds
        errs[unfolds] = (cell.solve(x, v0, torch.full((4,), T, dtype=f64)) - ref).abs().max().item()
    assert errs[6] < 0.15
    assert errs[192] < 5e-3
    assert 3.3 < errs[48] / errs[192] < 4.7          # first order: error ~ 1/unfolds


@torch.no_grad()
def test_ltc_state_is_bounded_and_zero_gap_keeps_state():
    torch.manual_seed(1)
    ltc = LTC(3, 8)
    x = 20 * torch.randn(2, 50, 3)
    ts = 5 * torch.rand(2, 50)
    _, h = ltc(x, timespans=ts)
    p = ltc.cell.effective_params()
    lo = min(p["vleak"].min(), p["erev"].min(), p["sensory_erev"].min(), 0.0)
    hi = max(p["vleak"].max(), p["erev"].max(), p["sensory_erev"].max(), 0.0)
    assert h.min() >= lo - 1e-5 and h.max() <= hi + 1e-5
    h0 = torch.randn(2, 8)
    _, h1 = ltc(x[:, :4], hx=h0, timespans=torch.zeros(2, 4))
    torch.testing.assert_close(h1, h0)


@torch.no_grad()
def test_ltc_sequence_api():
    torch.manual_seed(2)
    ltc = LTC(3, 8, return_sequences=True)
    x, ts = torch.randn(2, 7, 3), torch.rand(2, 7)
    y, h = ltc(x, timespans=ts)
    assert y.shape == (2, 7, 8) and h.shape == (2, 8)
    # cell loop == sequence layer
    hh, outs = torch.zeros(2, 8), []
    for t in range(7):
        o, hh = ltc.cell(x[:, t], hh, ts[:, t])
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1), y)
    torch.testing.assert_close(hh, h)
    # final state in -> continues the sequence
    y1, h1 = ltc(x[:, :3], timespans=ts[:, :3])
    y2, h2 = ltc(x[:, 3:], hx=h1, timespans=ts[:, 3:])
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(h2, h)
    # time-major and unbatched
    tm = LTC(3, 8, batch_first=False)
    tm.load_state_dict(ltc.state_dict())
    ytm, htm = tm(x.transpose(0, 1), timespans=ts.t())
    torch.testing.assert_close(ytm.transpose(0, 1), y)
    yu, hu = ltc(x[0], timespans=ts[0])
    torch.testing.assert_close(yu, y[0])
    assert hu.shape == (8,)
    last = LTC(3, 8, return_sequences=False)
    last.load_state_dict(ltc.state_dict())
    torch.testing.assert_close(last(x, timespans=ts)[0], y[:, -1])


def test_ltc_wired_ncp_masks_and_outputs():
    torch.manual_seed(3)
    wiring = AutoNCP(16, 3, sparsity_level=0.5, seed=5)
    ltc = LTC(4, wiring)
    y, h = ltc(torch.randn(2, 5, 4))
    assert y.shape == (2, 5, 3) and h.shape == (2, 16)
    y.pow(2).sum().backward()
    g = ltc.cell.w.grad
    assert g[ltc.cell.mask == 0].abs().max() == 0          # absent synapses get no gradient
    assert g[ltc.cell.mask == 1].abs().max() > 0
    adj = wiring.adjacency != 0
    motor, command, inter = wiring.motor, wiring.command, wiring.inter
    assert not adj[inter][:, motor].any()                 # inter never drives motor directly
    assert not (wiring.sensory_adjacency[:, motor + command] != 0).any()   # inputs reach inter only
    assert (adj.sum(0)[command + motor] > 0).all()        # every command / motor neuron has an input
    assert wiring.synapse_count() < 16 * 16
    fc = FullyConnected(5, self_connections=False)
    assert fc.synapse_count() == 20
    with pytest.raises(ValueError, match="output_size"):
        AutoNCP(5, 3)
    with pytest.raises(ValueError, match="sensory_fanout"):
        NCP(2, 3, 1, sensory_fanout=3, inter_fanout=1, recurrent_command_synapses=1, motor_fanin=1)
    with pytest.raises(ValueError, match="input_dim"):
        LTC(5, wiring)                                    # built for 4 inputs already


# ----------------------------------------------------------------------------- CfC

@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
@torch.no_grad()
def test_cfc_matches_closed_form(mode):
    torch.manual_seed(4)
    cell = CfCCell(3, 5, mode=mode, backbone_units=7, backbone_layers=1).double()
    x, h = torch.randn(4, 3, dtype=f64), torch.randn(4, 5, dtype=f64)
    ts = torch.tensor([0.0, 0.3, 1.0, 2.5], dtype=f64)
    out, h_new = cell(x, h, ts)
    lin, act = cell.backbone[0], cell.backbone[1]
    bb = 1.7159 * torch.tanh(0.666 * (torch.cat([x, h], 1) @ lin.weight.t() + lin.bias))
    assert isinstance(act, torch.nn.Module)
    ff1 = torch.tanh(bb @ cell.ff1.weight.t() + cell.ff1.bias)
    t = ts[:, None]
    if mode == "pure":
        expect = -cell.A * torch.exp(-t * (cell.w_tau.abs() + ff1.abs())) * ff1 + cell.A
    else:
        ff2 = torch.tanh(bb @ cell.ff2.weight.t() + cell.ff2.bias)
        gate = torch.sigmoid((bb @ cell.time_a.weight.t() + cell.time_a.bias) * t
                             + bb @ cell.time_b.weight.t() + cell.time_b.bias)
        expect = ff1 + gate * ff2 if mode == "no_gate" else ff1 * (1 - gate) + gate * ff2
    torch.testing.assert_close(h_new, expect)
    torch.testing.assert_close(out, expect)
    if mode == "pure":  # the direct solution relaxes to A as the gap grows
        cell.w_tau.fill_(1.0)
        torch.testing.assert_close(cell(x, h, 1e3)[1], cell.A.expand(4, 5), atol=1e-9, rtol=0)


@torch.no_grad()
def test_cfc_sequence_wired_and_proj():
    torch.manual_seed(5)
    cfc = CfC(4, 16, proj_size=2, backbone_units=8)
    y, h = cfc(torch.randn(3, 6, 4), timespans=torch.rand(3, 6))
    assert y.shape == (3, 6, 2) and h.shape == (3, 16)
    wired = CfC(4, AutoNCP(12, 2))
    y, h = wired(torch.randn(3, 6, 4))
    assert y.shape == (3, 6, 2) and h.shape == (3, 12)
    m = wired.cell.ff1.weight_mask
    assert m.shape == (12, 4 + 12) and 0 < m.mean() < 1
    with pytest.raises(ValueError, match="backbone"):
        CfC(4, AutoNCP(12, 2), backbone_units=8)
    with pytest.raises(ValueError, match="mode"):
        CfC(4, 8, mode="fast")


# ----------------------------------------------------------------------------- liquid scan

def _liquid_steps(e, f, leak, a, B, C, ts, D=None, h=None):
    """The exact per-step solution of the frozen-input ODE, as a plain loop."""
    b, L, d = e.shape
    N = B.shape[-1]
    a = torch.ones(d, N, dtype=e.dtype) if a is None else a
    h = torch.zeros(b, d, N, dtype=e.dtype) if h is None else h
    ys = []
    for t in range(L):
        lam = leak + f[:, t]                                       # (b, d)
        decay = torch.exp(-a * (lam * ts[:, t, None])[..., None])  # (b, d, N)
        target = (f[:, t] * e[:, t] / lam)[..., None] * B[:, t, None, :]
        h = decay * h + (1 - decay) * target
        y = (h * C[:, t, None, :]).sum(-1)
        ys.append(y + (D * e[:, t] if D is not None else 0))
    return torch.stack(ys, 1), h


def _liquid_inputs(b=2, L=9, d=3, N=4, seed=6):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64)  # noqa: E731
    ts = torch.rand(b, L, generator=g, dtype=f64) * 2.0
    ts[0, min(2, L - 1)] = 0.0                               # duplicate time stamp
    ts[-1, L // 2] = 7.0                                     # long gap
    return dict(e=r(b, L, d), f=torch.nn.functional.softplus(r(b, L, d)), leak=0.1 + torch.rand(d, generator=g, dtype=f64),
                a=torch.arange(1, N + 1, dtype=f64).expand(d, N).clone(), B=r(b, L, N), C=r(b, L, N), ts=ts)


@pytest.mark.parametrize("multiscale", [False, True])
def test_liquid_scan_equals_step_recurrence_with_irregular_gaps(multiscale):
    p = _liquid_inputs()
    a = p["a"] if multiscale else None
    D = torch.randn(3, dtype=f64)
    h0 = torch.randn(2, 3, 4, dtype=f64)
    z = torch.randn(2, 9, 3, dtype=f64)
    y, last = liquid_scan(p["e"], p["f"], p["leak"], p["B"], p["C"], a=a, timespans=p["ts"], D=D, z=z,
                          initial_state=h0, return_last_state=True)
    y_ref, h_ref = _liquid_steps(p["e"], p["f"], p["leak"], a, p["B"], p["C"], p["ts"], D, h0)
    y_ref = y_ref * torch.nn.functional.silu(z)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last, h_ref, rtol=1e-10, atol=1e-12)
    # a zero gap leaves the state unchanged
    zero = torch.zeros_like(p["ts"])
    _, l0 = liquid_scan(p["e"], p["f"], p["leak"], p["B"], p["C"], a=a, timespans=zero,
                        initial_state=h0, return_last_state=True)
    torch.testing.assert_close(l0, h0)


@pytest.mark.parametrize("multiscale", [False, True])
def test_liquid_scan_solves_its_ode_exactly(multiscale):
    """Between samples (inputs held) the scan is the exact solution of the linear ODE."""
    p = _liquid_inputs(b=1, L=4, d=2, N=3)
    ts = p["ts"]
    if not multiscale:
        p["a"] = torch.ones_like(p["a"])
    _, last = liquid_scan(p["e"], p["f"], p["leak"], p["B"], p["C"], a=p["a"] if multiscale else None,
                          timespans=ts, return_last_state=True)
    h = torch.zeros(1, 2, 3, dtype=f64)
    for t in range(4):
        lam, drive = p["leak"] + p["f"][:, t], (p["f"][:, t] * p["e"][:, t])[..., None] * p["B"][:, t, None, :]
        h = _rk4(lambda s: p["a"] * (-lam[..., None] * s + drive), h, float(ts[0, t]), 600)
    torch.testing.assert_close(last, h, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("multiscale", [False, True])
def test_liquid_mixer_matches_recurrence_and_registry(multiscale):
    torch.manual_seed(7)
    m = LiquidScan(8, d_state=4, d_conv=3, multiscale=multiscale).double()
    x = torch.randn(2, 6, 8, dtype=f64)
    ts = torch.rand(2, 6, dtype=f64)
    y = m(x, timespans=ts)
    xs, z = m.in_proj(x).chunk(2, -1)
    xs = torch.nn.functional.silu(torch.nn.functional.conv1d(
        torch.nn.functional.pad(xs.transpose(1, 2), (2, 0)), m.conv_weight.unsqueeze(1), m.conv_bias,
        groups=m.d_inner)).transpose(1, 2)
    r, B, C = m.x_proj(xs).split([m.rate_rank, 4, 4], -1)
    f = torch.nn.functional.softplus(m.rate_proj(r))
    a = m.A_log.exp() if multiscale else None
    yr, _ = _liquid_steps(xs * m.erev, f, m.leak_log.exp(), a, B, C, ts, D=m.D)
    torch.testing.assert_close(y, m.out_proj(yr * torch.nn.functional.silu(z)))
    assert {"liquid", "cfc"} <= set(list_mixers())
    for name in ("liquid", "cfc"):
        mix = build_mixer(name, 16)
        out = mix(torch.randn(2, 5, 16))
        assert out.shape == (2, 5, 16)
        out.sum().backward()
        assert all(p.grad is not None for p in mix.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- gradients

def test_gradcheck_tiny_float64():
    torch.manual_seed(8)
    cell = LTCCell(3, 2, ode_unfolds=2).double()
    x = torch.randn(2, 2, dtype=f64, requires_grad=True)
    h = torch.randn(2, 3, dtype=f64, requires_grad=True)
    ts = torch.rand(2, dtype=f64).add(0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, h, t: cell(x, h, t)[1], (x, h, ts))
    cfc = CfCCell(2, 3, backbone_units=4).double()
    assert torch.autograd.gradcheck(lambda x, h, t: cfc(x, h, t)[1], (x, h, ts))
    p = _liquid_inputs(b=1, L=4, d=2, N=2)                 # includes a zero time gap
    args = [p[k].clone().requires_grad_() for k in ("e", "f", "leak", "B", "C", "ts", "a")]
    assert torch.autograd.gradcheck(lambda *a: liquid_scan(*a[:5], timespans=a[5]), args[:6])
    assert torch.autograd.gradcheck(lambda *a: liquid_scan(*a[:5], timespans=a[5], a=a[6]), args)


# ----------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_clear_errors():
    ltc, cfc, mix = LTC(3, 4), CfC(3, 4, backbone_units=4), LiquidScan(8)
    x = torch.randn(2, 5, 3)
    for layer in (ltc, cfc):
        with pytest.raises(ValueError, match="timespans.*>= 0"):
            layer(x, timespans=-torch.ones(2, 5))
        with pytest.raises(ValueError, match=r"timespans.*\(batch, length\)=\(2, 5\)"):
            layer(x, timespans=torch.ones(2, 4))
        with pytest.raises(ValueError, match="input.*3-D"):
            layer(torch.randn(2, 5, 3, 1))
        with pytest.raises(ValueError, match="input.*3 features"):
            layer(torch.randn(2, 5, 4))
        with pytest.raises(ValueError, match="hx"):
            layer(x, hx=torch.zeros(3, 4))
        with pytest.raises(TypeError, match="input"):
            layer([[1.0, 2.0, 3.0]])
        with pytest.raises(TypeError, match="input"):
            layer(torch.ones(2, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="timespans.*finite"):
        mix(torch.randn(2, 5, 8), timespans=torch.full((2, 5), float("nan")))
    with pytest.raises(ValueError, match="timespans.*>= 0"):
        mix(torch.randn(2, 5, 8), timespans=-torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"x: expected \(batch, length, 8\)"):
        mix(torch.randn(2, 8))
    p = _liquid_inputs()
    with pytest.raises(ValueError, match="f: conductances"):
        liquid_scan(p["e"], -p["f"], p["leak"], p["B"], p["C"])
    with pytest.raises(ValueError, match="f: expected the shape of e"):
        liquid_scan(p["e"], p["f"][:, :-1], p["leak"], p["B"], p["C"])
    with pytest.raises(ValueError, match="B: expected"):
        liquid_scan(p["e"], p["f"], p["leak"], p["B"][:, :-1], p["C"])
    with pytest.raises(ValueError, match="a: expected shape"):
        liquid_scan(p["e"], p["f"], p["leak"], p["B"], p["C"], a=p["a"][:, :2])
    with pytest.raises(ValueError, match="elapsed_time"):
        LTCCell(4, 3)(torch.randn(2, 3), torch.zeros(2, 4), torch.ones(3))
    with pytest.raises(TypeError, match="units"):
        LTC(3, 4.5)
    with pytest.raises(ValueError, match="ode_unfolds"):
        LTC(3, 4, ode_unfolds=0)
    assert check_timespans(None, 2, 3).shape == (2, 3)
    assert check_timespans(0.5, 2, 3).sum() == 3.0


# ----------------------------------------------------------------------------- data + training

def test_spiral_data_follows_its_ode_and_is_seeded():
    d = spiral_series(8, seed=3)
    assert d.inputs().shape == (8, 64, 4)
    assert torch.equal(d.values, spiral_series(8, seed=3).values)
    assert (d.split[:, 48:] == EXTRAP).all() and (d.split == INTERP).any()
    assert (d.observed[d.mask == 0] == 0).all() and (d.gaps >= 0).all()
    torch.testing.assert_close(d.gaps.cumsum(1), d.times, rtol=0, atol=1e-5)
    # finite-difference check of dz/dt = M z
    z0, om, al = torch.randn(3, 2, dtype=f64), torch.rand(3, dtype=f64) + 1, torch.rand(3, dtype=f64) * 0.3
    t = torch.linspace(0, 5, 11, dtype=f64).expand(3, 11)
    eps = 1e-6
    dz = (spiral_solution(z0, om, al, t + eps) - spiral_solution(z0, om, al, t - eps)) / (2 * eps)
    z = spiral_solution(z0, om, al, t)
    rhs = torch.stack([-al[:, None] * z[..., 0] + om[:, None] * z[..., 1],
                       -om[:, None] * z[..., 0] - al[:, None] * z[..., 1]], -1)
    torch.testing.assert_close(dz, rhs, rtol=1e-6, atol=1e-7)


def test_tiny_training_lowers_loss():
    torch.manual_seed(9)
    data = spiral_series(32, n_obs=16, n_extrap=4, t_obs=5.0, t_end=6.0, seed=1)
    inp, tgt, ts = data.inputs(), data.values, data.gaps

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.mix, self.dec = torch.nn.Linear(4, 16), LiquidScan(16, d_state=4), torch.nn.Linear(16, 2)

        def forward(self, x, ts):
            return self.dec(self.mix(self.enc(x), timespans=ts))

    for net, call in ((Net(), lambda n: n(inp, ts)),
                      (CfC(4, 8, proj_size=2, backbone_units=8), lambda n: n(inp, timespans=ts)[0])):
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        losses = []
        for _ in range(25):
            loss = torch.nn.functional.mse_loss(call(net), tgt)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.7 * losses[0], losses


def test_bench_smoke(tmp_path):
    from vscan.tools.liquid_bench import main
    rc = main(["--task", "all", "--out", str(tmp_path), "--quick", "--no-progress", "--models", "liquid,cfc"])
    assert rc == 0
    for name in ("results.json", "results.csv", "liquid_series.png", "prob_field.png"):
        assert (tmp_path / name).is_file(), name
