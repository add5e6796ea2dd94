"""``vscan liquid``: benchmarks for the liquid and probability-field layers, on CPU-sized data.

(a) ``series``: irregularly sampled damped spirals (vscan.data.timeseries.spiral_series). Every
    model reads [observation, observed flag, time gap] per sample and predicts the clean state
    at every sample time; LTC, CfC and the liquid scan also get the gaps as their time steps.
    LTC, CfC, liquid scan, Mamba and GRU (plus ncps's CfC when ``ncps`` is importable; its LTC on request)
    train with the same budget (epochs, batch, optimiser, schedule); reported: test MSE on the
    hidden interior samples (interpolation) and on the held-out window (extrapolation), wall time.
(b) ``prob``: heteroscedastic 2-D regression (heteroscedastic_fields). The probability-field
    net (Gaussian NLL) against the same backbone trained with MSE and given one fixed variance
    (its training MSE): NLL, MSE and calibration (fraction of targets within 1 / 2 predicted sigma,
    overall and in the cleanest / noisiest third of pixels by true noise level).

Writes results.json, results.csv, liquid_series.png, prob_field.png and prob_field_example.png
into ``--out`` and prints markdown tables.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vscan.data.timeseries import EXTRAP, INTERP, heteroscedastic_fields, spiral_series
from vscan.engine.io import atomic_write_csv, atomic_write_json
from vscan.engine.plots import save_figure
from vscan.engine.plots import plot_curves
from vscan.layers.liquid import LTC, CfC, LiquidScan
from vscan.layers.mamba import MambaMixer, RMSNorm
from vscan.layers.prob import ProbFieldNet2d, coverage, gaussian_nll

SERIES_MODELS = ("ltc", "cfc", "liquid", "mamba", "gru")
NCPS_MODELS = ("ncps_cfc", "ncps_ltc")


def _ncps():
    try:
        import ncps.torch as nt  # optional peer, never required
        return nt
    except Exception:
        return None


# ------------------------------------------------------------------------------------ models

class _Stack(nn.Module):
    """Linear in -> ``layers`` pre-norm residual mixer blocks -> linear out."""

    def __init__(self, n_in, n_out, hidden, layers, make, takes_time):
        super().__init__()
        self.enc = nn.Linear(n_in, hidden)
        self.norms = nn.ModuleList(RMSNorm(hidden) for _ in range(layers))
        self.mixers = nn.ModuleList(make() for _ in range(layers))
        self.dec = nn.Linear(hidden, n_out)
        self.takes_time = takes_time

    def forward(self, x, ts):
        h = self.enc(x)
        for norm, mix in zip(self.norms, self.mixers):
            h = h + (mix(norm(h), timespans=ts) if self.takes_time else mix(norm(h)))
        return self.dec(h)


class _RNN(nn.Module):
    """A sequence layer returning (out, h) with optional ``timespans``, then a linear readout."""

    def __init__(self, rnn, n_hidden, n_out, kind):
        super().__init__()
        self.rnn, self.kind = rnn, kind
        self.dec = nn.Linear(n_hidden, n_out) if n_hidden != n_out else nn.Identity()

    def forward(self, x, ts):
        if self.kind == "gru":
            y, _ = self.rnn(x)
        elif self.kind == "ncps":
            y = self._ncps_loop(x, ts)
        else:
            y, _ = self.rnn(x, timespans=ts)
        return self.dec(y)

    def _ncps_loop(self, x, ts):
        # ncps 1.0.1 squeezes a per-sample time gap to shape (batch,), which does not broadcast
        # against (batch, units); drive its cell step by step with (batch, 1) gaps instead.
        m = self.rnn
        h = x.new_zeros(x.shape[0], m.state_size)
        outs = []
        for t in range(x.shape[1]):
            out, h = m.rnn_cell(x[:, t], h, ts[:, t, None])
            outs.append(m.fc(out) if hasattr(m, "fc") else out)
        return torch.stack(outs, 1)


def build_series_model(name: str, n_in: int, n_out: int, hidden: int, d_state: int) -> nn.Module:
    if name == "ltc":
        return _RNN(LTC(n_in, hidden), hidden, n_out, "vscan")
    if name == "cfc":
        return _RNN(CfC(n_in, hidden, backbone_units=hidden), hidden, n_out, "vscan")
    if name == "liquid":
        return _Stack(n_in, n_out, hidden, 2, lambda: LiquidScan(hidden, d_state=d_state, expand=2.0,
                                                                 rate_min=1e-2, rate_max=1.0), True)
    if name == "mamba":
        return _Stack(n_in, n_out, hidden, 2, lambda: MambaMixer(hidden, d_state=d_state, expand=2.0), False)
    if name == "gru":
        return _RNN(nn.GRU(n_in, hidden, batch_first=True), hidden, n_out, "gru")
    nt = _ncps()
    if nt is None:
        raise ValueError(f"--models: {name!r} needs the optional package ncps (pip install ncps)")
    if name == "ncps_cfc":
        return _RNN(nt.CfC(n_in, hidden, backbone_units=hidden), hidden, n_out, "ncps")
    if name == "ncps_ltc":
        return _RNN(nt.LTC(n_in, hidden), hidden, n_out, "ncps")
    raise ValueError(f"--models: unknown model {name!r}; choose from {SERIES_MODELS + NCPS_MODELS}")


# ------------------------------------------------------------------------------------ helpers

def _progress(iterable, desc, enabled, total=None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def _optim(model, lr, steps):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    return opt, sched


def _markdown(rows, cols, headers=None):
    headers = headers or cols
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------ (a) series

@torch.no_grad()
def _series_eval(model, data, batch):
    model.eval()
    preds = torch.cat([model(data.inputs()[i:i + batch], data.gaps[i:i + batch])
                       for i in range(0, len(data), batch)])
    model.train()
    err = (preds - data.values).pow(2).mean(-1)
    return {"interp_mse": float(err[data.split == INTERP].mean()),
            "extrap_mse": float(err[data.split == EXTRAP].mean()),
            "all_mse": float(err.mean())}, preds


def run_series(args, log):
    kw = dict(n_obs=args.n_obs, n_extrap=args.n_extrap, t_obs=args.t_obs, t_end=args.t_end)
    train = spiral_series(args.n_train, seed=args.seed, **kw)
    test = spiral_series(args.n_test, seed=args.seed + 1000, **kw)
    models = args.models
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    results, curves, preds = [], [], {}
    for name in models:
        torch.manual_seed(args.seed)
        model = build_series_model(name, train.n_features, 2, args.hidden, args.d_state)
        opt, sched = _optim(model, args.lr, args.epochs * steps_per_epoch)
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        bar = _progress(range(args.epochs), f"series/{name}", args.progress)
        for epoch in bar:
            perm = torch.randperm(len(train), generator=g)
            total = 0.0
            for i in range(0, len(train), args.batch_size):
                bt = train.subset(perm[i:i + args.batch_size])
                loss = F.mse_loss(model(bt.inputs(), bt.gaps), bt.values)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                total += loss.item() * len(bt)
            row = {"epoch": epoch + 1, f"{name}_train_mse": total / len(train)}
            if args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
                m, _ = _series_eval(model, test, 256)
                row.update({f"{name}_interp_mse": m["interp_mse"], f"{name}_extrap_mse": m["extrap_mse"]})
            curves.append(row)
            if args.progress:
                bar.set_postfix(loss=f"{total / len(train):.4f}")
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        metrics, pred = _series_eval(model, test, 256)
        infer_ms = 1000 * (time.perf_counter() - t1)
        preds[name] = pred
        res = {"task": "series", "model": name, "params": _n_params(model), "epochs": args.epochs,
               "train_s": round(train_s, 1), "s_per_epoch": round(train_s / max(args.epochs, 1), 2),
               "test_infer_ms": round(infer_ms, 1), **metrics}
        results.append(res)
        log(f"series/{name}: interp {metrics['interp_mse']:.4g}  extrap {metrics['extrap_mse']:.4g}  "
            f"train {train_s:.1f}s")
    # reference floors: predicting zero, and the last observation carried forward
    zero = (test.values.pow(2).mean(-1))
    results.append({"task": "series", "model": "predict zero", "params": 0,
                    "interp_mse": float(zero[test.split == INTERP].mean()),
                    "extrap_mse": float(zero[test.split == EXTRAP].mean()), "all_mse": float(zero.mean())})
    idx = torch.cummax(torch.arange(test.mask.shape[1]).expand_as(test.mask) * test.mask.long(), dim=1).values
    locf = torch.gather(test.observed, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    e = (locf - test.values).pow(2).mean(-1)
    results.append({"task": "series", "model": "last observation", "params": 0,
                    "interp_mse": float(e[test.split == INTERP].mean()),
                    "extrap_mse": float(e[test.split == EXTRAP].mean()), "all_mse": float(e.mean())})
    _plot_series(args, curves, models, test, preds)
    return results, curves


def _merge_curves(curves):
    by_epoch = {}
    for r in curves:
        by_epoch.setdefault(r["epoch"], {"epoch": r["epoch"]}).update(r)
    return [by_epoch[k] for k in sorted(by_epoch)]


def _plot_series(args, curves, models, test, preds):
    rows = _merge_curves(curves)
    plot_curves(rows, Path(args.out) / "liquid_series.png", x="epoch",
                panels=[[f"{m}_train_mse" for m in models], [f"{m}_interp_mse" for m in models],
                        [f"{m}_extrap_mse" for m in models]],
                title="irregular spirals: train MSE, test interpolation / extrapolation MSE")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    t = test.times[0]
    for k, ax in enumerate(axes):
        ax.plot(t, test.values[0, :, k], "k-", lw=1, label="truth")
        obs = test.mask[0] > 0
        ax.plot(t[obs], test.observed[0, obs, k], "k.", ms=5, label="observed")
        ax.axvspan(float(args.t_obs), float(t[-1]), color="0.9", label="extrapolation")
        for m in models:
            ax.plot(t, preds[m][0, :, k], lw=1, label=m)
        ax.set_xlabel("time")
        ax.set_ylabel(f"z[{k}]")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("test trajectory 0 (predictions at every sample time)")
    fig.tight_layout()
    save_figure(fig, Path(args.out) / "liquid_series_example.png")
    plt.close(fig)


# ------------------------------------------------------------------------------------ (b) prob

@torch.no_grad()
def _prob_eval(model, data, batch=128):
    model.eval()
    outs = [model(data["x"][i:i + batch]) for i in range(0, data["x"].shape[0], batch)]
    model.train()
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _prob_metrics(mean, var, data):
    y, sigma = data["y"], data["sigma"]
    cov = coverage(mean, var, y)
    lo, hi = torch.quantile(sigma.flatten(), torch.tensor([1 / 3, 2 / 3]))
    clean, noisy = sigma <= lo, sigma >= hi
    cov_clean = coverage(mean[clean], var[clean], y[clean])
    cov_noisy = coverage(mean[noisy], var[noisy], y[noisy])
    return {"nll": float(gaussian_nll(mean, var, y)), "mse": float(F.mse_loss(mean, y)),
            "mse_to_clean": float(F.mse_loss(mean, data["mean"])),
            "cover_1s": cov[1.0], "cover_2s": cov[2.0],
            "cover_1s_clean": cov_clean[1.0], "cover_1s_noisy": cov_noisy[1.0],
            "cover_2s_clean": cov_clean[2.0], "cover_2s_noisy": cov_noisy[2.0]}


def run_prob(args, log):
    train = heteroscedastic_fields(args.prob_train, size=args.prob_size, seed=args.seed)
    test = heteroscedastic_fields(args.prob_test, size=args.prob_size, seed=args.seed + 1000)
    n = train["x"].shape[0]
    steps_per_epoch = math.ceil(n / args.batch_size)
    results, curves, preds = [], [], {}
    for name, probabilistic in (("prob_field", True), ("fixed_variance", False)):
        torch.manual_seed(args.seed)
        model = ProbFieldNet2d(dim=args.prob_dim, depth=args.prob_depth, d_state=args.d_state,
                               probabilistic=probabilistic)
        opt, sched = _optim(model, args.prob_lr, args.prob_epochs * steps_per_epoch)
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        bar = _progress(range(args.prob_epochs), f"prob/{name}", args.progress)
        for epoch in bar:
            perm = torch.randperm(n, generator=g)
            total, sq = 0.0, 0.0
            for i in range(0, n, args.batch_size):
                idx = perm[i:i + args.batch_size]
                x, y = train["x"][idx], train["y"][idx]
                mean, var = model(x)
                mse = F.mse_loss(mean, y)
                loss = gaussian_nll(mean, var, y) if probabilistic else mse
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                sq += mse.item() * len(idx)
            if not probabilistic:  # the MLE of one shared variance is the mean squared error
                model.set_fixed_variance(sq / n)
            row = {"epoch": epoch + 1, f"{name}_train_loss": total / n}
            m, v = _prob_eval(model, test)
            row[f"{name}_test_nll"] = float(gaussian_nll(m, v, test["y"]))
            curves.append(row)
            if args.progress:
                bar.set_postfix(loss=f"{total / n:.4f}")
        train_s = time.perf_counter() - t0
        if not probabilistic:  # final fixed variance: training-set MSE of the trained model
            tm, _ = _prob_eval(model, train)
            model.set_fixed_variance(float(F.mse_loss(tm, train["y"])))
        t1 = time.perf_counter()
        mean, var = _prob_eval(model, test)
        infer_ms = 1000 * (time.perf_counter() - t1)
        preds[name] = (mean, var)
        metrics = _prob_metrics(mean, var, test)
        results.append({"task": "prob", "model": name, "params": _n_params(model), "epochs": args.prob_epochs,
                        "train_s": round(train_s, 1), "s_per_epoch": round(train_s / max(args.prob_epochs, 1), 2),
                        "test_infer_ms": round(infer_ms, 1), **metrics})
        log(f"prob/{name}: NLL {metrics['nll']:.4f}  within 1s {metrics['cover_1s']:.3f}  "
            f"2s {metrics['cover_2s']:.3f}  train {train_s:.1f}s")
    # oracle: the true mean and noise level of the generator (not reachable: the net sees x only)
    results.append({"task": "prob", "model": "oracle (true mean, true sigma)", "params": 0,
                    **_prob_metrics(test["mean"], test["sigma"] ** 2, test)})
    _plot_prob(args, curves, test, preds)
    return results, curves


def _plot_prob(args, curves, test, preds):
    rows = _merge_curves(curves)
    names = list(preds)
    plot_curves(rows, Path(args.out) / "prob_field.png", x="epoch",
                panels=[[f"{n}_train_loss" for n in names], [f"{n}_test_nll" for n in names]],
                title="heteroscedastic fields: training loss and test NLL")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pm, pv = preds["prob_field"]
    dm, _ = preds["fixed_variance"]
    panels = [("input x", test["x"][0, 0]), ("target y", test["y"][0, 0]),
              ("prob. field mean", pm[0, 0]), ("fixed-variance mean", dm[0, 0]),
              ("true sigma", test["sigma"][0, 0]), ("predicted sigma", pv[0, 0].sqrt())]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8))
    for ax, (title, img) in zip(axes, panels):
        vmax = None
        if "sigma" in title:
            vmax = float(max(test["sigma"][0, 0].max(), pv[0, 0].sqrt().max()))
        im = ax.imshow(img.numpy(), cmap="viridis", vmin=0 if vmax else None, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, Path(args.out) / "prob_field_example.png")
    plt.close(fig)


# ------------------------------------------------------------------------------------ CLI

def build_parser():
    p = argparse.ArgumentParser(prog="vscan liquid", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", choices=("series", "prob", "all"), default="all")
    p.add_argument("--out", default="runs/liquid", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these sizes)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--d-state", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    g = p.add_argument_group("series")
    g.add_argument("--models", default=None,
                   help=f"comma list from {SERIES_MODELS + NCPS_MODELS}; default: the first five, plus "
                        f"ncps_cfc when ncps is importable (ncps_ltc only on request: it is slow)")
    g.add_argument("--epochs", type=int, default=12)
    g.add_argument("--lr", type=float, default=5e-3)
    g.add_argument("--hidden", type=int, default=32)
    g.add_argument("--n-train", type=int, default=512)
    g.add_argument("--n-test", type=int, default=256)
    g.add_argument("--n-obs", type=int, default=32)
    g.add_argument("--n-extrap", type=int, default=8)
    g.add_argument("--t-obs", type=float, default=8.0)
    g.add_argument("--t-end", type=float, default=10.5)
    g.add_argument("--eval-every", type=int, default=2, help="test metrics every N epochs (0: only at the end)")
    g = p.add_argument_group("prob")
    g.add_argument("--prob-epochs", type=int, default=4)
    g.add_argument("--prob-lr", type=float, default=3e-3)
    g.add_argument("--prob-train", type=int, default=768)
    g.add_argument("--prob-test", type=int, default=256)
    g.add_argument("--prob-size", type=int, default=12)
    g.add_argument("--prob-dim", type=int, default=24)
    g.add_argument("--prob-depth", type=int, default=1)
    return p


def _resolve_models(args):
    if args.models is None:
        names = list(SERIES_MODELS) + (["ncps_cfc"] if _ncps() is not None else [])
    else:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in names if m not in SERIES_MODELS + NCPS_MODELS]
    if bad or not names:
        raise SystemExit(f"vscan liquid: --models: unknown {bad}; choose from {SERIES_MODELS + NCPS_MODELS}")
    if any(m in NCPS_MODELS for m in names) and _ncps() is None:
        raise SystemExit("vscan liquid: --models asks for ncps models but ncps is not importable")
    return names


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.epochs, args.n_train, args.n_test, args.n_obs, args.n_extrap = 1, 16, 8, 12, 4
        args.t_obs, args.t_end, args.hidden = 4.0, 5.0, 8
        args.prob_epochs, args.prob_train, args.prob_test, args.prob_size, args.prob_dim = 1, 8, 8, 6, 8
        args.batch_size = 8
    for nm in ("epochs", "prob_epochs", "batch_size", "hidden", "threads", "n_train", "n_test"):
        if getattr(args, nm) < 1:
            raise SystemExit(f"vscan liquid: --{nm.replace('_', '-')} must be >= 1, got {getattr(args, nm)}")
    args.models = _resolve_models(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    ncps = _ncps()
    meta = {"command": "vscan liquid " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "threads": args.threads, "ncps": getattr(ncps, "__name__", None) and _ncps_version(),
            "args": {k: v for k, v in vars(args).items()}}
    results, curves = [], {}
    try:
        log = print
        if args.task in ("series", "all"):
            r, c = run_series(args, log)
            results += r
            curves["series"] = _merge_curves(c)
        if args.task in ("prob", "all"):
            r, c = run_prob(args, log)
            results += r
            curves["prob"] = _merge_curves(c)
    finally:
        torch.set_num_threads(prev_threads)
    atomic_write_json(out / "results.json", {"meta": meta, "results": results, "curves": curves})
    atomic_write_csv(out / "results.csv", results)
    series = [r for r in results if r["task"] == "series"]
    prob = [r for r in results if r["task"] == "prob"]
    if series:
        print("\n### Irregularly sampled spirals (test MSE)\n")
        print(_markdown(series, ["model", "params", "interp_mse", "extrap_mse", "all_mse", "train_s", "test_infer_ms"],
                        ["model", "params", "interp. MSE", "extrap. MSE", "all MSE", "train s", "test infer ms"]))
    if prob:
        print("\n### Heteroscedastic fields (test)\n")
        print(_markdown(prob, ["model", "params", "nll", "mse", "cover_1s", "cover_2s", "cover_1s_clean",
                               "cover_1s_noisy", "train_s"],
                        ["model", "params", "NLL", "MSE", "within 1σ", "within 2σ", "1σ clean third",
                         "1σ noisy third", "train s"]))
    print(f"\nwrote {out}/results.json, results.csv and PNG plots")
    return 0


def _ncps_version():
    try:
        from importlib.metadata import version
        return version("ncps")
    except Exception:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
